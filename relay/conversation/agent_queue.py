"""The agent's concurrency queue before `ready`, as an I/O-free state machine (docs/decisions.md "Queue and billing").

ElevenLabs may put a conversation in its queue right after the metadata (`queue_status` "waiting", then "admitted",
or "timed_out" and a close 3008). Until that is settled, the agent's first events are read by the conversation's
set-up, not by the agent pump: `AgentQueue.receive(event)` says what to do with each one — answer a ping
(`AnswerPing`), show the browser the queue's state (`ShowQueueStatus`), or nothing (the event is held for the agent
pump, or malformed). `settled` says when reading may stop. No trio, no sockets, no clock: the I/O around it is
`relay.nursery` (`_watch_queue`, `_settle_queue`).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.protocol import elevenlabs as el

MAX_HELD = 512  # events held for the agent pump while queued; an agent that talks this much while queued is not


@dataclass(frozen=True, slots=True)
class AnswerPing:
    """Answer the agent's ping now (a ping is answered even while queued)."""

    event_id: int


@dataclass(frozen=True, slots=True)
class ShowQueueStatus:
    """Send the queue's `status` to the browser (before `ready`). `change` is "waiting" on the first "waiting",
    "admitted" when admitted after waiting, else None (for a log line)."""

    status: str
    change: str | None


QueueStep = AnswerPing | ShowQueueStatus | None


class AgentQueue:
    """Where the conversation stands in the agent's queue: `queued` once it said "waiting", `settled` once there is
    nothing more to wait for (admitted, or the agent sent another event while not queued, or held MAX_HELD events),
    `held` the events the agent pump must handle first."""

    def __init__(self) -> None:
        self.held: list[el.ServerEvent] = []
        self.queued = False
        self.settled = False

    def receive(self, event: el.ServerEvent) -> QueueStep:
        """Take the agent's next event; returns what must be done with it now (None: nothing)."""
        if isinstance(event, el.MalformedEvent):
            return None
        if isinstance(event, el.Ping):
            return AnswerPing(event.event_id)
        if isinstance(event, el.QueueStatus):
            change = None
            if event.status == "waiting" and not self.queued:
                self.queued = True
                change = "waiting"
            elif event.status == "admitted":
                change = "admitted" if self.queued else None
                self.settled = True
            return ShowQueueStatus(event.status, change)  # "timed_out": the close (3008) follows
        self.held.append(event)
        if not self.queued or len(self.held) > MAX_HELD:  # an agent that talks while queued: stop holding, go on
            self.settled = True
        return None
