"""The trace of one conversation (OpenTelemetry; on only when `relay.ops.tracing` configured it): the root span
`conversation`, its `admission`, the avatar's `avatar connected`, one `turn` span per turn, the `interruption`s and
the `ending`.

The conversation's spans are held here, in its `ConversationTrace` (`current_trace`, a context variable set once),
as explicit objects, not in the ambient context: the tasks that report a turn's moments (the pumps, the speech
router, the avatar's events) outlive any span they could have inherited. The ambient context carries only the
root, set once by `conversation_trace` in the task that then starts the conversation's tasks (Trio copies it into
each at its spawn), so the outgoing calls (`relay.net.spans`) record under the conversation.

A turn (`TurnTrace`) runs from the user's end of speech (the agent's final transcript) or typed message to the
avatar's own "speaking" signal, with the agent's first audio and the first audio (or text) handed to the avatar on the
way, each an event and a `*_ms` attribute (milliseconds from the turn's start); a turn the agent begins on its own
(its first message) starts at its first audio. With no avatar the turn ends at the agent's first audio.

With tracing off, `conversation_trace` yields None and nothing here is ever called: the hot path pays one attribute
read per audio chunk (`SpeechRouter.turns`). Nothing here blocks. Attributes never hold a key, a token or what the
user said.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from relay.net import spans as net_spans
from relay.protocol.client_metrics import ClientMetrics

tracer = trace.get_tracer("relay.conversation")

TURNS_KEPT = 16  # turns whose start is remembered for the page's own measures of them (`client_turn`)
CLIENT_MEASURES = 16  # at most this many measures per `client turn` span


class ConversationRecord(Protocol):
    """What the trace reads of a conversation's record (`relay.conversation.record.ConversationRecord`)."""

    @property
    def relay_id(self) -> str: ...
    @property
    def conversation_id(self) -> str | None: ...
    @property
    def avatar_provider(self) -> str | None: ...
    @property
    def avatar_session_id(self) -> str | None: ...
    @property
    def reason(self) -> str: ...
    @property
    def error(self) -> str | None: ...
    @property
    def degraded(self) -> bool: ...


class TurnTrace:
    """The `turn` and `interruption` spans of one conversation, fed by the speech router (see the module docstring).
    Every method is called inline and returns at once."""

    def __init__(self, conversation: ConversationTrace) -> None:
        self._conversation = conversation
        self._span: Span | None = None
        self._started_ns = 0
        self._event_id: int | None = None  # the agent's turn answering the open span (None: not yet)
        self._given = False
        self._after = -1  # the open user turn is answered by an agent turn above this one
        self.audio_turn: int | None = None  # the agent turn whose first audio was seen last (read per chunk)
        self._interruption: Span | None = None
        self.started: dict[int, int] = {}  # agent turn -> its turn span's start (ns), the last TURNS_KEPT turns

    def _open(self, trigger: str) -> None:
        self._close("superseded")
        self._started_ns = time.time_ns()
        self._span = self._conversation.child("turn", {"turn.trigger": trigger}, start_time=self._started_ns)
        self._event_id, self._given = None, False

    def _close(self, outcome: str) -> None:
        if self._span is not None:
            self._span.set_attribute("turn.outcome", outcome)
            self._span.end()
            self._span = None

    def _mark(self, name: str) -> None:
        assert self._span is not None
        now = time.time_ns()
        self._span.add_event(name, timestamp=now)
        self._span.set_attribute(f"turn.{name.replace('.', '_')}_ms", round((now - self._started_ns) / 1e6, 3))

    def user_ended(self, trigger: str, last_agent_turn: int) -> None:
        """The user's turn ended: `speech` (the agent's final transcript) or `text` (a typed message); the agent's
        newest turn so far is `last_agent_turn` (what comes of it, or of older ones, is not the answer)."""
        self._open(trigger)
        self._after = last_agent_turn

    def agent_audio(self, turn: int, avatar: bool) -> None:
        """The first audio of the agent's turn `turn`; `avatar`: an avatar will say it (else the turn ends here)."""
        self.audio_turn = turn
        if self._span is not None and self._event_id is None and turn <= self._after:
            return  # the rest of what the agent said before the user's turn
        if self._span is None or self._event_id is not None:
            self._open("agent")  # the agent speaks on its own (its first message)
        assert self._span is not None
        self._event_id = turn
        self.started[turn] = self._started_ns
        if len(self.started) > TURNS_KEPT:
            del self.started[min(self.started)]
        self._span.set_attribute("turn.event_id", turn)
        self._mark("agent.first_audio")
        if not avatar:
            self._close("voice")

    def avatar_given(self, turn: int) -> None:
        """The first of turn `turn`'s speech was handed to the avatar."""
        if self._span is not None and self._event_id == turn and not self._given:
            self._given = True
            self._mark("avatar.first_audio")

    def avatar_speaking(self, turn: int | None) -> None:
        """The avatar's own signal that it speaks (turn `turn`, None when it does not say): the turn is complete."""
        if self._span is not None and self._event_id is not None and turn in (None, self._event_id):
            self._mark("avatar.speaking")
            self._close("spoken")

    def interrupted(self, source: str, watermark: int) -> None:
        """The agent (`agent`) or the browser (`browser`) interrupted the agent's speech, up to turn `watermark`
        (exclusive): the open turn ends if its answer is one of those, and an `interruption` span runs until the
        avatar has been told (`interrupt_sent`). A user's turn not answered yet stays open (the agent interrupts
        what it was saying when the user speaks or types)."""
        if self._span is not None and self._event_id is not None and self._event_id < watermark:
            self._span.set_attribute("turn.interrupted", True)
            self._close("interrupted")
        if self._interruption is not None:
            self._interruption.end()
        self._interruption = self._conversation.child("interruption", {"interruption.source": source})

    def interrupt_sent(self) -> None:
        """The avatar was told to stop speaking."""
        if self._interruption is not None:
            self._interruption.add_event("avatar.interrupted")
            self._interruption.end()
            self._interruption = None

    def close(self) -> None:
        """The conversation ends: end what is open."""
        self._close("ended")
        if self._interruption is not None:
            self._interruption.end()
            self._interruption = None


class ConversationTrace:
    """One conversation's trace: the root span `conversation` and the spans the conversation holds open."""

    def __init__(self, root: Span) -> None:
        self.root = root
        self.context = trace.set_span_in_context(root)
        self.turns = TurnTrace(self)
        self.awaiting_connected: Span | None = None
        self.ending: Span | None = None
        ids = root.get_span_context()
        self.trace_id = format(ids.trace_id, "032x")
        self._root_span_id = ids.span_id

    def child(self, name: str, attributes: dict[str, AttributeValue] | None = None, *,
              start_time: int | None = None, parent: Span | None = None) -> Span:
        """A span `name` under the root (or `parent`), started now (or at `start_time`, ns); the caller ends it."""
        context = self.context if parent is None else trace.set_span_in_context(parent)
        return tracer.start_span(name, context=context, attributes=attributes, start_time=start_time)

    def log_ids(self) -> tuple[str, str]:
        """(trace_id, span_id) for a log line written now: the current span when it is one of this trace's and
        still recording, else the root."""
        current = trace.get_current_span()
        ids = current.get_span_context()
        span_id = ids.span_id if current.is_recording() and format(ids.trace_id, "032x") == self.trace_id \
            else self._root_span_id
        return self.trace_id, format(span_id, "016x")

    def begin_ending(self) -> Span:
        """The `ending` span (started once, at the first sign of the end: the avatar's stop, or the conversation's
        own end); ended by `finish`."""
        if self.ending is None:
            self.ending = self.child("ending")
        return self.ending

    def ready(self, record: ConversationRecord) -> None:
        """`ready` was sent."""
        self.root.add_event("ready")
        self._ids(record)

    def _ids(self, record: ConversationRecord) -> None:
        attributes: dict[str, AttributeValue] = {"relay.relay_id": record.relay_id}
        if record.conversation_id:
            attributes["relay.conversation_id"] = record.conversation_id
            attributes["elevenlabs.conversation_id"] = record.conversation_id
        if record.avatar_provider:
            attributes["avatar.provider"] = record.avatar_provider
        if record.avatar_session_id:
            attributes["avatar.session_id"] = record.avatar_session_id
        self.root.set_attributes(attributes)

    def finish(self, record: ConversationRecord) -> None:
        """The conversation ended (`record` says how): its ids and end on the root, what is still open ended. The
        root itself ends when `conversation_trace` exits."""
        self._ids(record)
        self.root.set_attributes({"relay.end_reason": record.reason, "relay.degraded": record.degraded})
        if record.error:
            self.root.set_status(StatusCode.ERROR, f"{record.reason}: {record.error}")
        self.turns.close()
        if self.awaiting_connected is not None:
            self.awaiting_connected.set_status(StatusCode.ERROR, "the conversation ended first")
            self.awaiting_connected.end()
            self.awaiting_connected = None
        self.begin_ending().end()

    def refused(self, code: str) -> None:
        """The conversation was refused a seat (`code`: the browser's error code)."""
        self.root.set_attribute("relay.end_reason", code)
        self.root.set_status(StatusCode.ERROR, code)


# The trace of the conversation a task works for (None: tracing off, or no conversation): set by
# `conversation_trace` in the task that runs the conversation, copied by Trio into every task it starts.
current_trace: ContextVar[ConversationTrace | None] = ContextVar("relay_conversation_trace", default=None)


@contextmanager
def conversation_trace(traceparent: str | None, subject: str | None) -> Iterator[ConversationTrace | None]:
    """The trace of the conversation run inside the block, or None when tracing is off (or the sampler drops it).
    Its root `conversation` is a child of the website's trace when the browser's `start` named one (`traceparent`,
    validated by the protocol), else a new trace, and it is the current span inside the block (for the tasks started
    in it: the caller's task must start them). `subject`: the client token's subject, when there is one. The root
    ends on exit."""
    if not net_spans.enabled():
        yield None
        return
    parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent}) if traceparent \
        else otel_context.Context()
    root = tracer.start_span("conversation", context=parent, kind=SpanKind.SERVER,
                             attributes=None if subject is None else {"relay.client.subject": subject})
    if not root.is_recording():
        root.end()
        yield None
        return
    held = ConversationTrace(root)
    token = otel_context.attach(held.context)
    mine = current_trace.set(held)
    try:
        yield held
    finally:
        current_trace.reset(mine)
        otel_context.detach(token)
        root.end()


def refused(code: str) -> None:
    """The conversation was refused a seat (`code`: the browser's error code)."""
    held = current_trace.get()
    if held is not None:
        held.refused(code)


def turns() -> TurnTrace | None:
    """The current conversation's turn spans (None: not traced), for its speech router."""
    held = current_trace.get()
    return None if held is None else held.turns


def ready(record: ConversationRecord) -> None:
    """The conversation sent `ready`."""
    held = current_trace.get()
    if held is not None:
        held.ready(record)


def finished(record: ConversationRecord) -> None:
    """The conversation ended (`ConversationTrace.finish`)."""
    held = current_trace.get()
    if held is not None:
        held.finish(record)


def client_turn(event_id: int | None, measures: Mapping[str, float]) -> None:
    """The page's own measures of the agent's turn `event_id` (issue #25 §2, `client_metrics`: arriving seconds
    after the turn's span has ended): a `client turn` span beside it, from that turn's start to now, with
    `turn.event_id` and each measure as `client.<name>` (names of `[a-z0-9_]`, at most CLIENT_MEASURES of them;
    the caller has validated the values)."""
    held = current_trace.get()
    if held is None:
        return
    attributes: dict[str, AttributeValue] = {f"client.{name}": float(value) for name, value in
                                             list(measures.items())[:CLIENT_MEASURES]
                                             if 0 < len(name) <= 64 and name.isascii()
                                             and all(c.isalnum() or c == "_" for c in name) and name == name.lower()}
    if event_id is not None:
        attributes["turn.event_id"] = event_id
    start = None if event_id is None else held.turns.started.get(event_id)
    held.child("client turn", attributes, start_time=start).end()


def client_report(report: ClientMetrics) -> None:
    """A `client_metrics` report the conversation took: each turn's measures as a `client turn` span
    (`client_turn`), each video freeze as a `client.video_freeze` event on the root (`client.freeze_ms`)."""
    held = current_trace.get()
    if held is None:
        return
    for turn in report.turns:
        client_turn(turn.event_id, {name: value for name, value in turn.model_dump(exclude={"event_id"}).items()
                                    if value is not None})
    for freeze in report.freezes_ms:
        held.root.add_event("client.video_freeze", {"client.freeze_ms": freeze})


def avatar_opened(provider: str, session_id: str) -> None:
    """An avatar session was handed over: the `avatar connected` span runs until it says `connected`."""
    held = current_trace.get()
    if held is not None:
        if held.awaiting_connected is not None:
            held.awaiting_connected.end()
        held.awaiting_connected = held.child("avatar connected", {"avatar.provider": provider,
                                                                  "avatar.session_id": session_id})


def avatar_connected() -> None:
    """The avatar said `connected`."""
    held = current_trace.get()
    if held is not None and held.awaiting_connected is not None:
        held.awaiting_connected.end()
        held.awaiting_connected = None


def avatar_failover(provider: str, reason: str) -> None:
    """A provider refused the avatar's set-up and the next one is tried: a `failover` span."""
    held = current_trace.get()
    if held is not None:
        held.child("failover", {"avatar.provider": provider, "avatar.failover_reason": reason}).end()
