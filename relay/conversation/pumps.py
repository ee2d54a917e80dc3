"""The two pumps of a conversation: browser -> agent (validated, flood-limited, idle-timed) and agent -> browser and
avatar (pings answered at once, silence-timed). Each runs until something ends the conversation, which it says by
raising `ConversationOver` (or an upstream error).

This module must never parse or build a wire format itself (`relay.protocol.browser`, `relay.protocol.elevenlabs`),
and never make a metrics or logging call per audio frame.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable

import trio

from relay.config import Settings
from relay.conversation.endings import BrowserSocket, ConversationOver
from relay.conversation.outbox import Outbox
from relay.conversation.record import Traffic
from relay.conversation.speech import SpeechRouter
from relay.elevenlabs import AgentConnection
from relay.protocol import browser as bp
from relay.protocol import elevenlabs as el
from relay.protocol.audio import AudioFormat, pcm16_to_ulaw

log = logging.getLogger("relay.conversation")


class FloodGate:
    """Counts a conversation's client frames in one-second windows; `over(now)` is True once a window holds more
    than `per_second` frames. A fixed window keeps the per-frame cost to one comparison and one addition (this
    runs on the audio hot path); the bound it gives, at most 2 x per_second in any second, is enough to stop a
    flood, and a well-behaved client (50 audio frames a second) is far below it."""

    __slots__ = ("_count", "_window_end", "per_second")

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._window_end = 0.0
        self._count = 0

    def over(self, now: float) -> bool:
        if now >= self._window_end:
            self._window_end = now + 1.0
            self._count = 1
            return False
        self._count += 1
        return self._count > self.per_second


class McpApprovals:
    """The agent's MCP tool calls awaiting the user's approval, shared by the two pumps: a call is noted when the
    agent says `awaiting_approval` (with its `approval_timeout_secs`) and forgotten when it succeeds, fails, is
    answered or times out. Only an answer to a call awaiting approval is sent to the agent; anything else (a late
    click, an unknown id) is dropped with a log line. Bounded: at most MAX_AWAITING at once."""

    MAX_AWAITING = 32

    def __init__(self) -> None:
        self._deadlines: dict[str, float] = {}

    def note(self, call: el.McpToolCall, now: float) -> None:
        if call.state == "awaiting_approval":
            if len(self._deadlines) >= self.MAX_AWAITING:
                del self._deadlines[next(iter(self._deadlines))]
            self._deadlines[call.tool_call_id] = now + float(call.approval_timeout_secs or 300)
        else:
            self._deadlines.pop(call.tool_call_id, None)

    def take(self, tool_call_id: str, now: float) -> bool:
        """Whether an answer for `tool_call_id` may go to the agent now (then it is no longer awaited)."""
        deadline = self._deadlines.pop(tool_call_id, None)
        return deadline is not None and now <= deadline


VAD_INTERVAL = 0.1  # seconds between two `vad_score` frames to the browser (at most ~10 a second)


class Interval:
    """`due(now)`: True at most once per `seconds` (rate-limits a frequent, replaceable frame)."""

    __slots__ = ("_next", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = -math.inf

    def due(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


def user_audio_builder(input_format: AudioFormat | None) -> Callable[[bytes], str]:
    """How one browser audio frame (PCM16 LE at the agent's input rate) becomes a `user_audio_chunk`: as is for a
    PCM agent, μ-law encoded for a `ulaw_8000` agent."""
    build = el.build_user_audio_chunk
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
                                approvals: McpApprovals | None = None) -> None:
    """Browser frames -> agent messages, until the browser sends `stop` (ConversationOver) or goes idle for
    RELAY_IDLE_TIMEOUT. Audio (PCM16 at the agent's input rate) is forwarded without parsing, μ-law encoded first
    for a `ulaw_8000` agent (`input_format`), and counted in `traffic`; everything else is
    validated first; `on_user_text` (must not block) sees each typed user message. Cancelled by the conversation's
    end; blocks on the browser's receive and on the agent's send
    (backpressure). `mcp_approval` answers go to the agent only for calls `approvals` has awaiting approval."""
    traffic = traffic or Traffic()
    approvals = approvals or McpApprovals()
    max_frame = settings.relay_max_frame_bytes
    idle = settings.relay_idle_timeout
    flood = FloodGate(settings.relay_max_frames_per_second)
    slack = timer_slack(idle)
    with trio.CancelScope(deadline=trio.current_time() + idle + slack) as idle_scope:
        try:
            await _pump_frames(browser, agent, speech, traffic, on_user_text, max_frame, idle, flood, slack,
                               idle_scope, user_audio_builder(input_format), approvals)
        except el.AgentClosed:
            # The agent's socket is closed: the other pump reads why and ends the conversation (after the agent's
            # last words on a normal end). Meanwhile only `stop` still matters.
            while True:
                frame = await browser.receive()
                push_deadline(idle_scope, trio.current_time(), idle, slack)
                if isinstance(frame, str) and len(frame) <= max_frame:
                    with contextlib.suppress(bp.ProtocolError):
                        if isinstance(bp.parse_text_frame(frame), bp.Stop):
                            raise ConversationOver("client_stop") from None
    raise ConversationOver.failed("timeout", f"no message from the browser for {idle:g} s")


async def _pump_frames(browser: BrowserSocket, agent: AgentConnection, speech: SpeechRouter, traffic: Traffic,
                       on_user_text: Callable[[str], None] | None, max_frame: int, idle: float, flood: FloodGate,
                       slack: float, idle_scope: trio.CancelScope,
                       build_audio: Callable[[bytes], str], approvals: McpApprovals) -> None:
    while True:
        frame = await browser.receive()
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
            await agent.send(build_audio(frame))
            continue
        if frame is None:
            continue  # an empty binary frame
        if len(frame) > max_frame:
            raise ConversationOver.failed("protocol_error", f"frame larger than {max_frame} bytes")
        try:
            event = bp.parse_text_frame(frame)
        except bp.ProtocolError as exc:
            raise ConversationOver.failed("protocol_error", str(exc)) from None
        await _forward_client_event(event, agent, speech, on_user_text, build_audio, approvals)


async def _forward_client_event(event: bp.ClientEvent, agent: AgentConnection, speech: SpeechRouter,
                                on_user_text: Callable[[str], None] | None,
                                build_audio: Callable[[bytes], str], approvals: McpApprovals) -> None:
    if isinstance(event, bp.Audio):
        await agent.send(build_audio(event.pcm))
    elif isinstance(event, bp.Text):
        if on_user_text is not None:
            on_user_text(event.text)
        await agent.send(el.build_user_message(event.text, event.rich_content_id))
    elif isinstance(event, bp.Multimodal):
        if on_user_text is not None:
            on_user_text(event.text)
        await agent.send(el.build_multimodal_message(event.text))
    elif isinstance(event, bp.McpApproval):
        if approvals.take(event.tool_call_id, trio.current_time()):
            await agent.send(el.build_mcp_tool_approval_result(event.tool_call_id, event.approved))
        else:
            log.info("dropping an MCP approval answer: tool call %.64r is not awaiting approval (answered, timed "
                     "out or unknown)", event.tool_call_id)
    elif isinstance(event, bp.Context):
        await agent.send(el.build_contextual_update(event.text, event.context_id))
    elif isinstance(event, bp.Activity):
        await agent.send(el.build_user_activity())
    elif isinstance(event, bp.Interrupt):
        speech.interrupt()
    elif isinstance(event, bp.ToolResult):
        await agent.send(el.build_client_tool_result(event.tool_call_id, bp.tool_result_text(event.result),
                                                     event.is_error))
    elif isinstance(event, bp.Feedback):
        await agent.send(el.build_feedback(event.score, event.event_id))
    elif isinstance(event, bp.Stop):
        raise ConversationOver("client_stop")
    elif isinstance(event, bp.Start):
        raise ConversationOver.failed("protocol_error", "'start' was already received")


def _forward_agent_event(event: el.ServerEvent, outbox: Outbox, approvals: McpApprovals) -> None:
    """The agent's events that the browser only needs to see (issue 11). Unknown types are not for the browser."""
    if isinstance(event, el.AgentChatResponsePart):
        outbox.send(bp.agent_response_part(event.part_type, event.text, event.event_id))
    elif isinstance(event, el.AgentToolRequest):
        outbox.send(bp.tool_status(event.tool_call_id, event.tool_name, event.tool_type, "running"))
    elif isinstance(event, el.AgentToolResponse):
        outbox.send(bp.tool_status(event.tool_call_id, event.tool_name, event.tool_type,
                                   "failed" if event.is_error else "done"))
    elif isinstance(event, el.McpToolCall):
        approvals.note(event, trio.current_time())
        outbox.send(bp.mcp_tool_call(
            tool_call_id=event.tool_call_id, service_id=event.service_id, tool_name=event.tool_name,
            tool_description=event.tool_description, parameters=event.parameters, state=event.state,
            approval_timeout_secs=event.approval_timeout_secs, error_message=event.error_message))
    elif isinstance(event, el.McpConnectionStatus):
        outbox.send(bp.mcp_connection_status(list(event.integrations)))
    elif isinstance(event, el.QueueStatus):
        outbox.send(bp.queue_status(event.status))
    elif isinstance(event, el.ExternalAgent):
        outbox.send(bp.human_agent(event.connected))
    elif isinstance(event, el.AgentTyping):
        outbox.send(bp.agent_typing(event.typing))
    elif isinstance(event, el.ContextUsage):
        outbox.send(bp.context_usage(event.fields))
    elif isinstance(event, el.RichContent):
        outbox.send(bp.rich_content(event.fields))


async def pump_agent_to_browser(agent: AgentConnection, outbox: Outbox, speech: SpeechRouter,
                                silence_timeout: float = math.inf, *,
                                on_event: Callable[[el.ServerEvent], None] | None = None,
                                finish_timeout: float = 0.0, approvals: McpApprovals | None = None,
                                held: Iterable[el.ServerEvent] = ()) -> None:
    """Agent events -> browser messages and avatar speech, until the agent closes (AgentClosed) or sends nothing
    parseable for `silence_timeout` seconds (a stalled agent must not keep a billed avatar session open). Pings
    are answered at once; malformed frames are skipped (logged by the connection); `on_event` (must not block)
    sees every event but audio. When the agent ends the conversation normally (close 1000: end_call, max
    duration), the speech it already sent is played out first — the avatar's queued and in-flight speech and the
    browser's queued frames — for at most `finish_timeout` seconds (the rest of the conversation goes on meanwhile:
    `stop` or the browser leaving still end it at once). `held`: events read before `ready` (set-up), handled
    first. MCP calls awaiting approval are noted in `approvals`; `vad_score` is forwarded at most every
    VAD_INTERVAL. Cancelled by the conversation's end; blocks on the agent's receive."""
    last_error: el.AgentErrorEvent | None = None
    slack = timer_slack(silence_timeout)
    approvals = approvals or McpApprovals()
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
                elif isinstance(event, el.AgentResponse):
                    outbox.send(bp.agent_response(event.text, event.event_id))
                    speech.agent_text(event.text, event.event_id)
                elif isinstance(event, el.UserTranscript):
                    outbox.send(bp.user_transcript(event.text, event.event_id, event.final))
                    if not event.final:
                        speech.user_speaking()
                elif isinstance(event, el.VadScore):
                    speech.vad_score(event.score)
                    if vad_gate.due(trio.current_time()):
                        outbox.send_lossy(bp.vad_score(event.score))
                elif isinstance(event, el.Interruption):
                    speech.interrupt(event.event_id)
                    outbox.send(bp.interruption(event.event_id))
                elif isinstance(event, el.AgentResponseCorrection):
                    outbox.send(bp.agent_response_correction(event.corrected, event.original, event.event_id))
                elif isinstance(event, el.ClientToolCall):
                    outbox.send(bp.tool_call(event.tool_call_id, event.tool_name, event.parameters))
                elif isinstance(event, el.AgentErrorEvent):
                    last_error = event
                    level = logging.INFO if el.is_normal_end(event) else logging.WARNING
                    log.log(level, "agent error event code=%s type=%s message=%s", event.code, event.error_type,
                            event.message)
                else:
                    _forward_agent_event(event, outbox, approvals)
        raise ConversationOver.failed("agent_error", f"the agent sent nothing for {silence_timeout:g} s")
    except el.AgentClosed as closed:
        ending = el.classify_close(closed.code, closed.reason, last_error)
        close_code, close_reason = closed.code, closed.reason
    if ending.normal:
        with trio.move_on_after(finish_timeout) as finishing:
            await speech.wait_played_out()
            await outbox.wait_sent()
        if finishing.cancelled_caught:
            log.info("the agent's last words were cut after RELAY_FINISH_SPEAKING_TIMEOUT=%gs", finish_timeout)
        raise ConversationOver(ending.kind)
    raise ConversationOver.failed(ending.kind, ending.message,  # type: ignore[arg-type]
                                  agent_close_code=close_code, agent_close_reason=close_reason)
