"""The two pumps of a conversation: browser -> agent (validated, flood-limited, idle-timed) and agent -> browser and
avatar (pings answered at once, silence-timed). Each runs until something ends the conversation, which it says by
raising `ConversationOver` (or an upstream error).

What a message means on the other side is `relay.conversation.translate` (pure functions); the gates they pass are
`relay.conversation.gates`. This module must never parse or build a wire format itself (`relay.protocol.browser`,
`relay.protocol.elevenlabs`), and never make a metrics or logging call per audio frame.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import NoReturn

import trio

from relay.avatars import ending as avatar_ending
from relay.config import Settings
from relay.conversation.endings import BrowserSocket, ConversationOver
from relay.conversation.gates import VAD_INTERVAL, FloodGate, Interval, McpApprovals, QueueGate
from relay.conversation.link import BrowserLink
from relay.conversation.outbox import Outbox
from relay.conversation.record import Traffic
from relay.conversation.speech import SpeechRouter
from relay.conversation.translate import (
    Acknowledge,
    InterruptSpeech,
    ReportClientMetrics,
    StaleApproval,
    ToAgent,
    browser_frame,
    client_step,
)
from relay.elevenlabs import AgentConnection
from relay.protocol import browser as bp
from relay.protocol import elevenlabs as el
from relay.protocol.audio import AudioFormat, pcm16_to_ulaw

log = logging.getLogger("relay.conversation")


def user_audio_builder(input_format: AudioFormat | None) -> Callable[[bytes], str]:
    """How one browser audio frame (PCM16 LE at the agent's input rate) becomes a `user_audio_chunk`: as is for a
    PCM agent, μ-law encoded for a `ulaw_8000` agent."""
    build = el.build_user_audio_chunk
    if input_format is None or input_format.encoding == "pcm":
        return build
    return lambda pcm: build(pcm16_to_ulaw(pcm))


def user_audio_frame_builder(input_format: AudioFormat | None) -> Callable[[bytes], bytes]:
    """`user_audio_builder` for the binary frames of the audio path: the message as its UTF-8 bytes."""
    build = el.build_user_audio_chunk_utf8
    if input_format is None or input_format.encoding == "pcm":
        return build
    return lambda pcm: build(pcm16_to_ulaw(pcm))


def timer_slack(timeout: float) -> float:
    """How late an inactivity timeout may fire, so that its deadline is moved at most once per slack instead of
    on every frame (moving a Trio deadline re-registers it: measurable at ten frames a second per conversation)."""
    return min(1.0, timeout / 8) if math.isfinite(timeout) else 0.0


def push_deadline(scope: trio.CancelScope, now: float, timeout: float, slack: float) -> None:
    """An inactivity timeout's step on activity at `now`: move `scope`'s deadline to `now + timeout + slack`, but
    only when it has come within `timeout` of now, so it moves at most once per `slack`, not per frame."""
    if scope.deadline - now < timeout:
        scope.deadline = now + timeout + slack


async def pump_browser_to_agent(browser: BrowserSocket, agent: AgentConnection, speech: SpeechRouter,
                                settings: Settings, traffic: Traffic | None = None, *,
                                on_user_text: Callable[[str], None] | None = None,
                                input_format: AudioFormat | None = None,
                                approvals: McpApprovals | None = None, queue: QueueGate | None = None,
                                on_client_metrics: Callable[[bp.ClientMetrics | bp.DroppedClientMetrics, float], None]
                                | None = None) -> None:
    """Browser frames -> agent messages, until the browser sends `stop` (ConversationOver) or goes idle for
    RELAY_IDLE_TIMEOUT. Audio (PCM16 at the agent's input rate) is forwarded without parsing, μ-law encoded first
    for a `ulaw_8000` agent (`input_format`), and counted in `traffic`; everything else is
    validated first; `on_user_text` (must not block) sees each typed user message. Cancelled by the conversation's
    end; blocks on the browser's receive and on the agent's send
    (backpressure). `mcp_approval` answers go to the agent only for calls `approvals` has awaiting approval; audio is
    not forwarded while `queue` says the agent holds the conversation in its queue. `client_metrics` reports (and
    the ones dropped as malformed or oversized) go to `on_client_metrics` with the time (must not block), never to
    the agent."""
    traffic = traffic or Traffic()
    approvals = approvals or McpApprovals()
    queue = queue or QueueGate()
    max_frame = settings.relay_max_frame_bytes
    idle = settings.relay_idle_timeout
    flood = FloodGate(settings.relay_max_frames_per_second)
    slack = timer_slack(idle)
    agent_closed = False
    while True:
        with trio.CancelScope(deadline=trio.current_time() + idle + slack) as idle_scope:
            try:
                if not agent_closed:
                    await _pump_frames(browser, agent, speech, traffic, on_user_text, max_frame, idle, flood, slack,
                                       idle_scope, user_audio_builder(input_format),
                                       user_audio_frame_builder(input_format), approvals, queue,
                                       on_client_metrics)
            except el.AgentClosed:
                agent_closed = True
            # The agent's socket is closed: the other pump reads why and ends the conversation (after the agent's
            # last words on a normal end). Meanwhile only `stop` still matters.
            while True:
                frame = await browser.receive()
                push_deadline(idle_scope, trio.current_time(), idle, slack)
                if isinstance(frame, str) and len(frame) <= max_frame:
                    with contextlib.suppress(bp.ProtocolError):
                        if isinstance(bp.parse_text_frame(frame), bp.Stop):
                            raise ConversationOver("client_stop") from None
        # Idle: a resumable browser's connection is taken as silently lost (the conversation is held), and while it
        # is held the idle time-out does not apply.
        if not (isinstance(browser, BrowserLink) and browser.lost_to_idle(idle_scope.deadline - idle - slack)):
            break
    raise ConversationOver.failed("timeout", f"no message from the browser for {idle:g} s")


async def _pump_frames(browser: BrowserSocket, agent: AgentConnection, speech: SpeechRouter, traffic: Traffic,
                       on_user_text: Callable[[str], None] | None, max_frame: int, idle: float, flood: FloodGate,
                       slack: float, idle_scope: trio.CancelScope,
                       build_audio: Callable[[bytes], str], build_frame: Callable[[bytes], bytes],
                       approvals: McpApprovals, queue: QueueGate,
                       on_client_metrics: Callable[[bp.ClientMetrics | bp.DroppedClientMetrics, float], None] | None
                       ) -> None:
    async def forward(frame: str | bytes | None) -> None:
        now = trio.current_time()
        push_deadline(idle_scope, now, idle, slack)
        if flood.over(now):
            raise ConversationOver.failed("protocol_error", f"more than {flood.per_second} frames a second; "
                                          "send audio in chunks of 20 ms or more")
        if isinstance(frame, bytes):
            if len(frame) > max_frame:
                raise ConversationOver.failed("protocol_error", f"frame larger than {max_frame} bytes")
            if len(frame) & 1:
                raise ConversationOver.failed("protocol_error", "audio frames must be PCM16: an even number "
                                              "of bytes")
            traffic.audio_in_frames += 1
            traffic.audio_in_bytes += len(frame)
            if not queue.queued:  # the agent discards what it is sent while it holds us in its queue
                await agent.send(build_frame(frame))
            return
        if frame is None:
            return  # an empty binary frame
        if len(frame) > max_frame:
            raise ConversationOver.failed("protocol_error", f"frame larger than {max_frame} bytes")
        try:
            event = bp.parse_text_frame(frame)
        except bp.ProtocolError as exc:
            raise ConversationOver.failed("protocol_error", str(exc)) from None
        await _forward_client_event(event, agent, speech, on_user_text, build_audio, approvals, on_client_metrics,
                                    acknowledge)

    acknowledge = browser.acknowledge if isinstance(browser, BrowserLink) else _nothing_numbered
    await each_frame(browser, forward)


def _nothing_numbered(seq: int) -> bool:
    """A connection that cannot be resumed numbers nothing: only `ack` 0 is not a lie."""
    return seq == 0


async def each_frame(browser: BrowserSocket, handle: Callable[[str | bytes | None], Awaitable[None]]) -> NoReturn:
    """`handle(frame)` for every frame the browser sends: `BrowserLink.each_frame` (across connections), or a loop
    of `receive` on a plain socket. Blocks on the receive and on `handle`; cancelled by the caller's scope."""
    if isinstance(browser, BrowserLink):
        await browser.each_frame(handle)
    while True:
        await handle(await browser.receive())


async def _forward_client_event(event: bp.ClientEvent, agent: AgentConnection, speech: SpeechRouter,
                                on_user_text: Callable[[str], None] | None,
                                build_audio: Callable[[bytes], str], approvals: McpApprovals,
                                on_client_metrics: Callable[[bp.ClientMetrics | bp.DroppedClientMetrics, float], None]
                                | None = None, acknowledge: Callable[[int], bool] = _nothing_numbered) -> None:
    now = trio.current_time()
    step = client_step(event, build_audio, approvals, now)
    if isinstance(step, ToAgent):
        if step.user_text is not None:
            speech.user_typed()
            if on_user_text is not None:
                on_user_text(step.user_text)
        await agent.send(step.message)
    elif isinstance(step, InterruptSpeech):
        speech.interrupt()
    elif isinstance(step, ReportClientMetrics):
        if on_client_metrics is not None:
            on_client_metrics(step.report, now)
    elif isinstance(step, Acknowledge):
        if not acknowledge(step.seq):
            raise ConversationOver.failed("protocol_error", f"'ack' of seq {step.seq}, which was never sent")
    elif isinstance(step, StaleApproval):
        log.info("dropping an MCP approval answer: tool call %.64r is not awaiting approval (answered, timed "
                 "out or unknown)", step.tool_call_id)
    elif step.reason == "client_stop":
        raise ConversationOver("client_stop")
    else:
        raise ConversationOver.failed("protocol_error", step.message)


def _forward_agent_event(event: el.ServerEvent, outbox: Outbox, speech: SpeechRouter, approvals: McpApprovals,
                         queue: QueueGate) -> None:
    """The browser's frame for `event`, and what the avatar's speech must know of it (in the order the browser sees
    them: an interruption stops the speech before the browser hears of it)."""
    if isinstance(event, el.Interruption):
        speech.interrupt(event.event_id)
    elif isinstance(event, el.QueueStatus):
        queue.note(event.status)
    frame = browser_frame(event, approvals, trio.current_time())
    if frame is not None:
        outbox.send(frame)
    if isinstance(event, el.AgentResponse):
        speech.agent_text(event.text, event.event_id)
    elif isinstance(event, el.UserTranscript):
        if event.final:
            speech.user_stopped(said=bool(event.text.strip()))
        else:
            speech.user_speaking()


async def pump_agent_to_browser(agent: AgentConnection, outbox: Outbox, speech: SpeechRouter,
                                silence_timeout: float = math.inf, *,
                                on_event: Callable[[el.ServerEvent], None] | None = None,
                                finish_timeout: float = 0.0, approvals: McpApprovals | None = None,
                                queue: QueueGate | None = None,
                                held: Iterable[el.ServerEvent] = ()) -> None:
    """Agent events -> browser messages and avatar speech, until the agent closes (AgentClosed) or sends nothing
    parseable for `silence_timeout` seconds (a stalled agent must not keep a billed avatar session open). Pings
    are answered at once; malformed frames are skipped (logged by the connection); `on_event` (must not block)
    sees every event but audio. When the agent ends the conversation normally (close 1000: end_call, max
    duration), the speech it already sent is played out first — the avatar's queued and in-flight speech and the
    browser's queued frames — for at most `finish_timeout` seconds (the rest of the conversation goes on meanwhile:
    `stop` or the browser leaving still end it at once). `held`: events read before `ready` (set-up), handled
    first. MCP calls awaiting approval are noted in `approvals`, the agent's queue (after `ready`) in `queue`;
    `vad_score` is forwarded at most every VAD_INTERVAL. Cancelled by the conversation's end; blocks on the
    agent's receive."""
    last_error: el.AgentErrorEvent | None = None
    slack = timer_slack(silence_timeout)
    approvals = approvals or McpApprovals()
    queue = queue or QueueGate()
    vad_gate = Interval(VAD_INTERVAL)
    pending = deque(held)
    try:
        with trio.CancelScope(deadline=trio.current_time() + silence_timeout + slack) as silence:
            while True:
                event = pending.popleft() if pending else await agent.receive()
                if isinstance(event, el.AgentAudio):  # the most frequent first
                    push_deadline(silence, trio.current_time(), silence_timeout, slack)
                    speech.agent_audio(event.audio, event.event_id, event.alignment)
                    continue
                if isinstance(event, el.MalformedEvent):
                    continue  # not "parseable": does not count as a sign of life
                push_deadline(silence, trio.current_time(), silence_timeout, slack)
                if on_event is not None:
                    on_event(event)
                if isinstance(event, el.Ping):
                    await agent.send(el.build_pong(event.event_id))
                elif isinstance(event, el.VadScore):
                    speech.vad_score(event.score)
                    if vad_gate.due(trio.current_time()):
                        outbox.send_lossy(bp.vad_score(event.score))
                elif isinstance(event, el.AgentErrorEvent):
                    last_error = event
                    level = logging.INFO if el.is_normal_end(event) else logging.WARNING
                    log.log(level, "agent error event code=%s type=%s message=%s", event.code, event.error_type,
                            event.message)
                else:
                    _forward_agent_event(event, outbox, speech, approvals, queue)
        raise ConversationOver.failed("agent_error", f"the agent sent nothing for {silence_timeout:g} s")
    except el.AgentClosed as closed:
        ending = el.classify_close(closed.code, closed.reason, last_error)
        close_code, close_reason = closed.code, closed.reason
    if ending.normal:
        avatar_ending.mark_agent_hung_up()
        with trio.move_on_after(finish_timeout) as finishing:
            await speech.wait_played_out()
            await outbox.wait_sent()
        if finishing.cancelled_caught:
            log.info("the agent's last words were cut after RELAY_FINISH_SPEAKING_TIMEOUT=%gs", finish_timeout)
        raise ConversationOver(ending.kind)
    raise ConversationOver.failed(ending.kind, ending.message,  # type: ignore[arg-type]
                                  agent_close_code=close_code, agent_close_reason=close_reason)
