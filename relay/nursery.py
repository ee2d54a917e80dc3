"""One conversation: the Trio nursery that holds the avatar session, the two pumps and the speaker.

`run_conversation` reads top to bottom: wait for `start`; open the agent and the avatar concurrently; send `ready`;
pump browser -> agent and agent -> browser (and avatar) until something ends the conversation; tell the browser why.
Every way out — the browser leaving (the web layer cancels us), `stop`, the agent closing, the avatar failing, a
timeout, a server shutdown — leaves the nursery, and leaving it stops the avatar session: that happens in the
provider's `open_session` context, shielded and time-bounded. Nothing here is a hand-made flag: endings are
exceptions (`ConversationOver` and the upstream errors) and cancellation comes from scopes.

This module must never parse or build wire formats itself (that is `browser.py` and `elevenlabs.py`), and never know
which avatar provider it drives.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx2
import trio

from relay import elevenlabs
from relay.avatars import (
    AvatarError,
    AvatarEvent,
    AvatarProvider,
    AvatarSession,
    AvatarSpeaking,
    AvatarStateChanged,
    AvatarUnavailable,
)
from relay.config import Settings
from relay.elevenlabs import AgentConnection
from relay.ops.logs import current_conversation
from relay.protocol import browser as bp
from relay.protocol import elevenlabs as el
from relay.protocol.audio import AudioFormat, parse_format, to_pcm16
from relay.server.limits import FloodGate

log = logging.getLogger("relay.conversation")

# Seconds without agent audio after which an audio-driven avatar is told the turn's audio is complete.
TURN_AUDIO_GAP = 0.35
OUTBOX_FRAMES = 512
SPEECH_QUEUE_ITEMS = 2048


class BrowserSocket(Protocol):
    """The seam to the browser's WebSocket (quart's `websocket` in production, fakes in tests)."""

    async def receive(self) -> str | bytes | None: ...

    async def send(self, data: str | bytes) -> None: ...

    async def close(self, code: int, reason: str = "") -> None: ...


class ConversationOver(Exception):
    """Raised by any task to end the conversation. `error` is None for a normal end."""

    def __init__(self, reason: str, *, error: str | None = None, message: str = "", close_code: int = 1000,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.error = error
        self.message = message
        self.close_code = close_code
        self.extra = extra or {}

    @classmethod
    def failed(cls, code: str, message: str, **extra: Any) -> ConversationOver:
        return cls(code, error=code, message=message, close_code=bp.CLOSE_CODE_FOR_ERROR[code], extra=extra)


@dataclass(slots=True)
class Traffic:
    """Audio relayed by one conversation, counted in plain ints on the hot path (the metrics read them at
    scrape time and at the end; no metrics library call per frame)."""

    audio_in_frames: int = 0  # browser -> agent
    audio_in_bytes: int = 0
    audio_out_frames: int = 0  # agent -> relay (then browser and/or avatar)
    audio_out_bytes: int = 0


@dataclass
class ConversationRecord:
    """What happened, for logs and metrics; filled in as the conversation goes."""

    relay_id: str
    started_at: float = field(default_factory=time.monotonic)
    conversation_id: str | None = None
    avatar_provider: str | None = None
    avatar_session_id: str | None = None
    degraded: bool = False
    ready_at: float | None = None
    reason: str = "unknown"
    error: str | None = None
    message: str = ""
    traffic: Traffic = field(default_factory=Traffic)
    # Set by the transcript writer when RELAY_TRANSCRIPTS_DIR is on: the turns, in order (never audio).
    transcript: list[dict[str, Any]] | None = None


# ---------------------------------------------------------------------------------------------------------------
# Outbox: everything the relay sends to the browser goes through one bounded queue and one sender task, so a slow
# browser never blocks the agent pump (which must keep answering pings).


class Outbox:
    def __init__(self, capacity: int = OUTBOX_FRAMES) -> None:
        self._tx, self._rx = trio.open_memory_channel[str | bytes](capacity)
        self.dropped_audio = 0
        self.sending_since: float | None = None

    def send(self, frame: str) -> None:
        """Queue a control frame. A full queue means the browser stopped reading: the conversation ends."""
        try:
            self._tx.send_nowait(frame)
        except trio.WouldBlock:
            raise ConversationOver.failed("timeout", "the browser stopped reading; conversation ended") from None

    def send_audio(self, pcm: bytes) -> None:
        """Queue agent audio for the browser; dropped (and counted) when the browser is behind."""
        try:
            self._tx.send_nowait(pcm)
        except trio.WouldBlock:
            self.dropped_audio += 1

    async def run_sender(self, browser: BrowserSocket) -> None:
        """Send queued frames in order until cancelled (by the conversation's end). A send to a browser that stopped
        reading may not be cancellable (hypercorn writes inside a shielded scope): `watch_sender` ends the
        conversation around it, and the socket's TCP_USER_TIMEOUT (relay.server.limits) finally breaks the write."""
        async for frame in self._rx:
            self.sending_since = trio.current_time()
            await browser.send(frame)
            self.sending_since = None

    async def watch_sender(self, send_timeout: float) -> None:
        """End the conversation (`timeout`) when one send has been blocked for `send_timeout` seconds, so the avatar
        session is stopped promptly even though that send cannot be interrupted. Cancelled by the conversation's
        end; checks four times per `send_timeout`."""
        while True:
            await trio.sleep(send_timeout / 4)
            since = self.sending_since
            if since is not None and trio.current_time() - since >= send_timeout:
                raise ConversationOver.failed("timeout", "the browser stopped reading; conversation ended")


# ---------------------------------------------------------------------------------------------------------------
# Speaker: the single caller of the avatar session, so speech, interruptions and turn ends reach it in order.


@dataclass(frozen=True, slots=True)
class _SpeakText:
    text: str
    turn: int


@dataclass(frozen=True, slots=True)
class _SpeakAudio:
    audio: bytes
    turn: int


@dataclass(frozen=True, slots=True)
class _Interrupt:
    turn: int


_SpeechItem = _SpeakText | _SpeakAudio | _Interrupt


class Speaker:
    """Routes the agent's speech to the avatar (text or audio, as the session wants) or to the browser.

    Interruption: turns below the `watermark` are dropped wherever they are (queued here, or in flight: the current
    avatar call is cancelled through its own scope), then the avatar is told to stop.
    """

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self.agent_format = AudioFormat("pcm", 16000)  # replaced by the agent's announced format before ready
        self._tx, self._rx = trio.open_memory_channel[_SpeechItem](SPEECH_QUEUE_ITEMS)
        self.session: AvatarSession | None = None
        self.voice_to_browser = True
        self.watermark = 0
        self._last_turn = 0
        self._in_flight: tuple[int, trio.CancelScope] | None = None
        self.dropped = 0

    def attach(self, session: AvatarSession | None) -> None:
        self.session = session
        self.voice_to_browser = session is None or session.info.simulated

    def _queue(self, item: _SpeechItem) -> None:
        try:
            self._tx.send_nowait(item)
        except trio.WouldBlock:
            self.dropped += 1

    def agent_text(self, text: str, turn: int) -> None:
        self._last_turn = max(self._last_turn, turn)
        if self.session is not None and not self.session.takes_audio and turn >= self.watermark:
            self._queue(_SpeakText(text, turn))

    def agent_audio(self, audio: bytes, turn: int) -> None:
        if turn < self.watermark:
            return
        self._last_turn = max(self._last_turn, turn)
        if self.voice_to_browser:
            self._outbox.send_audio(to_pcm16(audio, self.agent_format))
        if self.session is not None and self.session.takes_audio:
            self._queue(_SpeakAudio(audio, turn))

    def interrupt(self, new_turn: int | None = None) -> None:
        """Drop every turn before `new_turn` (default: everything said so far) and stop the avatar."""
        interrupted = self._last_turn
        self.watermark = max(self.watermark, new_turn if new_turn is not None else self._last_turn + 1)
        if self._in_flight is not None and self._in_flight[0] < self.watermark:
            self._in_flight[1].cancel()
        if self.session is not None:
            self._queue(_Interrupt(interrupted))

    async def run(self, session: AvatarSession) -> None:
        """Feed `session` in order until cancelled. Blocks on the avatar's network calls; a call for a turn that
        gets interrupted is cancelled through its own scope. Ends the audio turn after TURN_AUDIO_GAP of silence."""
        open_turn: int | None = None
        while True:
            if open_turn is None:
                item = await self._rx.receive()
            else:
                item = None
                with trio.move_on_after(TURN_AUDIO_GAP):
                    item = await self._rx.receive()
                if item is None or (isinstance(item, _SpeakAudio) and item.turn != open_turn):
                    if open_turn >= self.watermark:
                        await session.end_turn(open_turn)
                    open_turn = None
                if item is None:
                    continue
            if item is None:
                continue
            if isinstance(item, _Interrupt):
                open_turn = None
                await session.interrupt(item.turn)
                continue
            if item.turn < self.watermark:
                continue
            with trio.CancelScope() as scope:
                self._in_flight = (item.turn, scope)
                try:
                    if isinstance(item, _SpeakText):
                        await session.speak_text(item.text, item.turn)
                    else:
                        await session.speak_audio(item.audio, self.agent_format, item.turn)
                        open_turn = item.turn
                finally:
                    self._in_flight = None


# ---------------------------------------------------------------------------------------------------------------
# The conversation.


@dataclass(frozen=True)
class Upstreams:
    """Everything a conversation needs from the process: settings, the shared HTTP client, the avatar provider."""

    settings: Settings
    http: httpx2.AsyncClient
    provider: AvatarProvider | None
    on_end: Callable[[ConversationRecord], None] | None = None
    open_agent: Callable[..., AbstractAsyncContextManager[AgentConnection]] = elevenlabs.open_agent
    # Called (must not block) when the conversation opens, before its first read, and when it is ready.
    on_start: Callable[[ConversationRecord], None] | None = None
    on_ready: Callable[[ConversationRecord], None] | None = None


async def run_conversation(browser: BrowserSocket, up: Upstreams,
                           shutdown_scope: trio.CancelScope | None = None, *,
                           authorize: Callable[[str | None], str | None] | None = None) -> ConversationRecord:
    """Hold one conversation from the browser's first frame to the close.

    Cancelled by the web layer when the browser disconnects; cancelling `shutdown_scope` (the registry's drain)
    ends it with `shutdown`. The avatar session is stopped in every case (shielded, bounded by RELAY_STOP_TIMEOUT)
    and, if the browser is still there, it is told why the conversation ended. Returns the record of what happened.
    `authorize`, when given, checks the `start` message's token before anything upstream is called: it returns
    None to let the conversation in, or the reason it is refused (ended as `unauthorized`).
    """
    record = ConversationRecord(relay_id="r-" + secrets.token_hex(6))
    current_conversation.set(record)  # every log line from here on (and from the tasks below) carries its ids
    log.info("conversation opened")
    if up.on_start is not None:
        up.on_start(record)
    settings = up.settings
    outcome: ConversationOver
    shutdown_scope = shutdown_scope or trio.CancelScope()
    try:
        with shutdown_scope:
            start = await _receive_start(browser, settings)
            if authorize is not None and (refusal := authorize(start.token)) is not None:
                raise ConversationOver.failed("unauthorized", refusal)
            with trio.move_on_after(settings.relay_max_duration) as duration_scope:
                await _converse(browser, up, start, record)
            if duration_scope.cancelled_caught:
                raise ConversationOver.failed("timeout", "maximum conversation duration reached")
        if shutdown_scope.cancelled_caught:
            raise ConversationOver.failed("shutdown", "the relay is shutting down")
        raise AssertionError("a conversation only ends by ConversationOver or an upstream error")
    except Exception as exc:
        outcome = _classify(exc, record)
    except BaseException as exc:
        record.reason = "client_gone"
        _finish(record, up)
        if isinstance(exc, BaseExceptionGroup):
            # The browser left (we are cancelled); what else failed meanwhile (a send that broke when the socket
            # died, ...) is a consequence, not a server error: only the cancellation goes on up.
            cancelled, others = exc.split(trio.Cancelled)
            if others is not None:
                log.debug("after the browser left: %r", others)
            if cancelled is not None:
                raise cancelled from None
        raise
    record.reason, record.error, record.message = outcome.reason, outcome.error, outcome.message
    await _tell_browser_and_close(browser, outcome)
    _finish(record, up)
    return record


def _finish(record: ConversationRecord, up: Upstreams) -> None:
    duration = time.monotonic() - record.started_at
    log.info("conversation ended reason=%s error=%s duration=%.1fs degraded=%s message=%s", record.reason,
             record.error, duration, record.degraded, record.message or "-")
    if up.on_end is not None:
        up.on_end(record)
    current_conversation.set(None)


async def _receive_start(browser: BrowserSocket, settings: Settings) -> bp.Start:
    with trio.move_on_after(settings.relay_idle_timeout) as scope:
        frame = await browser.receive()
    if scope.cancelled_caught:
        raise ConversationOver.failed("timeout", "no 'start' message received")
    if not isinstance(frame, str):
        raise ConversationOver.failed("protocol_error", "the first message must be a 'start' text frame")
    try:
        event = bp.parse_text_frame(frame)
    except bp.ProtocolError as exc:
        raise ConversationOver.failed("protocol_error", f"the first message must be 'start': {exc}") from None
    if not isinstance(event, bp.Start):
        raise ConversationOver.failed("protocol_error", "the first message must be 'start'")
    return event


async def _converse(browser: BrowserSocket, up: Upstreams, start: bp.Start, record: ConversationRecord) -> None:
    settings = up.settings
    outbox = Outbox()
    async with trio.open_nursery() as conversation:
        conversation.start_soon(outbox.run_sender, browser)
        conversation.start_soon(outbox.watch_sender, settings.relay_send_timeout)

        # Set-up: the agent and the avatar concurrently; ready when both are up.
        agent: AgentConnection | None = None
        session: AvatarSession | None = None
        speaker = Speaker(outbox)

        def on_avatar_event(event: AvatarEvent) -> None:
            if isinstance(event, AvatarSpeaking):
                outbox.send(bp.avatar_speaking(event.text, event.duration_ms))
            elif isinstance(event, AvatarStateChanged):
                outbox.send(bp.avatar_state(event.speaking))

        async def start_agent() -> None:
            nonlocal agent
            # The avatar is the slower path (two calls in a row upstream): its first request goes out first.
            await trio.lowlevel.checkpoint()
            agent = await conversation.start(_hold_agent, up, start)

        async def start_avatar() -> None:
            nonlocal session
            if up.provider is not None:
                session = await conversation.start(_hold_avatar, up, on_avatar_event, outbox, speaker, record)

        with trio.fail_after(settings.relay_setup_timeout):
            async with trio.open_nursery() as setup:
                setup.start_soon(start_avatar)
                setup.start_soon(start_agent)
        assert agent is not None
        metadata = agent.metadata
        record.conversation_id = metadata.conversation_id
        try:
            input_format = parse_format(metadata.user_input_audio_format)
            output_format = parse_format(metadata.agent_output_audio_format)
        except ValueError as exc:
            raise ConversationOver.failed("agent_error", f"the agent announced an unsupported format: {exc}") from None
        if input_format.encoding != "pcm":
            raise ConversationOver.failed(
                "agent_error", f"the agent expects {input_format.name} input; only PCM input is supported")

        speaker.agent_format = output_format
        if session is not None:
            record.avatar_provider = session.info.provider
            record.avatar_session_id = session.info.session_id
        record.ready_at = time.monotonic()
        outbox.send(bp.ready(conversation_id=metadata.conversation_id,
                             avatar=None if session is None else session.info,
                             input_sample_rate=input_format.sample_rate,
                             output_sample_rate=output_format.sample_rate))
        log.info("conversation ready setup=%.3fs avatar=%s", record.ready_at - record.started_at,
                 record.avatar_provider or "none")
        if up.on_ready is not None:
            up.on_ready(record)

        conversation.start_soon(pump_browser_to_agent, browser, agent, speaker, settings, record.traffic)
        conversation.start_soon(pump_agent_to_browser, agent, outbox, speaker, settings.relay_agent_silence_timeout)


async def _hold_agent(up: Upstreams, start: bp.Start, *,
                      task_status: trio.TaskStatus[AgentConnection] = trio.TASK_STATUS_IGNORED) -> None:
    """Open the agent connection and keep it open until the conversation's scope is cancelled (which closes it)."""
    settings = up.settings
    initiation = el.build_initiation(dynamic_variables=start.dynamic_variables or None,
                                     overrides=start.overrides or None, user_id=start.user_id)
    api_key = settings.elevenlabs_api_key.get_secret_value() if settings.elevenlabs_api_key else None
    async with up.open_agent(up.http, base_url=settings.elevenlabs_base_url,
                             agent_id=settings.elevenlabs_agent_id or "", api_key=api_key,
                             initiation=initiation, connect_timeout=settings.relay_setup_timeout) as agent:
        task_status.started(agent)
        await trio.sleep_forever()


async def _hold_avatar(up: Upstreams, on_event: Callable[[AvatarEvent], None], outbox: Outbox, speaker: Speaker,
                       record: ConversationRecord, *,
                       task_status: trio.TaskStatus[AvatarSession | None] = trio.TASK_STATUS_IGNORED) -> None:
    """Open the avatar session, feed it from the speaker and keep it alive until the conversation's scope is
    cancelled; leaving the `open_session` context stops the session. If the provider refuses a session or the
    session dies, the conversation goes on voice-only (unless RELAY_DEGRADE_TO_VOICE is off)."""
    assert up.provider is not None
    started = False
    try:
        async with up.provider.open_session(on_event) as session:
            speaker.attach(session)
            task_status.started(session)
            started = True
            async with trio.open_nursery() as avatar_tasks:
                avatar_tasks.start_soon(speaker.run, session)
                avatar_tasks.start_soon(_keep_alive, session)
    except* AvatarError as group:
        if not up.settings.relay_degrade_to_voice:
            raise
        exc = group.exceptions[0]
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        assert isinstance(exc, AvatarError)
        reason = exc.reason if isinstance(exc, AvatarUnavailable) else "session_ended"
        log.warning("avatar unavailable, continuing voice-only reason=%s message=%s", reason, exc.message)
        record.degraded = True
        speaker.attach(None)
        outbox.send(bp.avatar_unavailable(reason, exc.message))
    if not started:
        task_status.started(None)


async def _keep_alive(session: AvatarSession) -> None:
    """Reset the avatar's idle timer every `keep_alive_interval` seconds until cancelled."""
    while True:
        await trio.sleep(session.keep_alive_interval)
        await session.keep_alive()


def _timer_slack(timeout: float) -> float:
    """How late an inactivity timeout may fire, so that its deadline is moved at most once per slack instead of
    on every frame (moving a Trio deadline re-registers it: measurable at ten frames a second per conversation)."""
    return min(1.0, timeout / 8) if math.isfinite(timeout) else 0.0


async def pump_browser_to_agent(browser: BrowserSocket, agent: AgentConnection, speaker: Speaker,
                                settings: Settings, traffic: Traffic | None = None) -> None:
    """Browser frames -> agent messages, until the browser sends `stop` (ConversationOver) or goes idle for
    RELAY_IDLE_TIMEOUT. Audio is forwarded without parsing (and counted in `traffic`); everything else is
    validated first. Cancelled by the conversation's end; blocks on the browser's receive and on the agent's send
    (backpressure)."""
    traffic = traffic or Traffic()
    max_frame = settings.relay_max_frame_bytes
    idle = settings.relay_idle_timeout
    build_audio = el.build_user_audio_chunk
    flood = FloodGate(settings.relay_max_frames_per_second)
    slack = _timer_slack(idle)
    with trio.CancelScope(deadline=trio.current_time() + idle + slack) as idle_scope:
        while True:
            frame = await browser.receive()
            now = trio.current_time()
            if idle_scope.deadline - now < idle:  # moved at most once per `slack`, not per frame
                idle_scope.deadline = now + idle + slack
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
            await _forward_client_event(event, agent, speaker)
    raise ConversationOver.failed("timeout", f"no message from the browser for {idle:g} s")


async def _forward_client_event(event: bp.ClientEvent, agent: AgentConnection, speaker: Speaker) -> None:
    if isinstance(event, bp.Audio):
        await agent.send(el.build_user_audio_chunk(event.pcm))
    elif isinstance(event, bp.Text):
        await agent.send(el.build_user_message(event.text))
    elif isinstance(event, bp.Context):
        await agent.send(el.build_contextual_update(event.text))
    elif isinstance(event, bp.Activity):
        await agent.send(el.build_user_activity())
    elif isinstance(event, bp.Interrupt):
        speaker.interrupt()
    elif isinstance(event, bp.ToolResult):
        await agent.send(el.build_client_tool_result(event.tool_call_id, bp.tool_result_text(event.result),
                                                     event.is_error))
    elif isinstance(event, bp.Feedback):
        await agent.send(el.build_feedback(event.score, event.event_id))
    elif isinstance(event, bp.Stop):
        raise ConversationOver("client_stop")
    elif isinstance(event, bp.Start):
        raise ConversationOver.failed("protocol_error", "'start' was already received")


async def pump_agent_to_browser(agent: AgentConnection, outbox: Outbox, speaker: Speaker,
                                silence_timeout: float = math.inf) -> None:
    """Agent events -> browser messages and avatar speech, until the agent closes (AgentClosed) or sends nothing
    for `silence_timeout` seconds (a stalled agent must not keep a billed avatar session open). Pings are answered
    at once. Cancelled by the conversation's end; blocks on the agent's receive."""
    last_error: el.AgentErrorEvent | None = None
    slack = _timer_slack(silence_timeout)
    try:
        with trio.CancelScope(deadline=trio.current_time() + silence_timeout + slack) as silence:
            while True:
                event = await agent.receive()
                now = trio.current_time()
                if silence.deadline - now < silence_timeout:  # moved at most once per `slack`, not per event
                    silence.deadline = now + silence_timeout + slack
                if isinstance(event, el.AgentAudio):  # the most frequent first
                    speaker.agent_audio(event.audio, event.event_id)
                elif isinstance(event, el.Ping):
                    await agent.send(el.build_pong(event.event_id))
                elif isinstance(event, el.AgentResponse):
                    outbox.send(bp.agent_response(event.text, event.event_id))
                    speaker.agent_text(event.text, event.event_id)
                elif isinstance(event, el.UserTranscript):
                    outbox.send(bp.user_transcript(event.text, event.event_id, event.final))
                elif isinstance(event, el.Interruption):
                    speaker.interrupt(event.event_id)
                    outbox.send(bp.interruption(event.event_id))
                elif isinstance(event, el.AgentResponseCorrection):
                    outbox.send(bp.agent_response_correction(event.corrected, event.original, event.event_id))
                elif isinstance(event, el.ClientToolCall):
                    outbox.send(bp.tool_call(event.tool_call_id, event.tool_name, event.parameters))
                elif isinstance(event, el.AgentErrorEvent):
                    last_error = event
                    log.warning("agent error event code=%s type=%s message=%s", event.code, event.error_type,
                                event.message)
                # everything else (vad scores, unknown new types, ...) is not for the browser
        raise ConversationOver.failed("agent_error", f"the agent sent nothing for {silence_timeout:g} s")
    except el.AgentClosed as closed:
        if closed.code == 1000 and last_error is None:
            raise ConversationOver("agent_ended") from None
        message = f"the agent closed the conversation ({closed.code} {closed.reason})".strip()
        if last_error is not None:
            message += f": {last_error.message}"
        raise ConversationOver.failed("agent_error", message, agent_close_code=closed.code,
                                      agent_close_reason=closed.reason) from None


# ---------------------------------------------------------------------------------------------------------------
# Endings


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            out.extend(_leaves(inner))
        return out
    return [exc]


def _classify(exc: Exception, record: ConversationRecord) -> ConversationOver:
    """Many tasks may fail at once; pick the one outcome that explains the end best."""
    leaves = [e for e in _leaves(exc) if not isinstance(e, trio.Cancelled)]
    for leaf in leaves:
        if isinstance(leaf, ConversationOver):
            return leaf
    for leaf in leaves:
        if isinstance(leaf, el.AgentUnavailable):
            return ConversationOver.failed("upstream_unavailable", f"the voice agent is unavailable: {leaf}")
        if isinstance(leaf, el.AgentClosed):
            return ConversationOver.failed("agent_error", f"the agent closed during set-up ({leaf.code} "
                                           f"{leaf.reason})", agent_close_code=leaf.code,
                                           agent_close_reason=leaf.reason)
        if isinstance(leaf, el.AgentProtocolError):
            return ConversationOver.failed("agent_error", f"the agent broke the protocol: {leaf}")
        if isinstance(leaf, AvatarError):
            return ConversationOver.failed("upstream_unavailable", f"the avatar is unavailable: {leaf.message}",
                                           avatar_reason=leaf.reason)
        if isinstance(leaf, trio.TooSlowError):
            return ConversationOver.failed("upstream_unavailable", "the upstream services took too long to set up")
    log.error("internal error in conversation relay_id=%s", record.relay_id, exc_info=exc)
    return ConversationOver.failed("internal", "internal error")


async def _tell_browser_and_close(browser: BrowserSocket, outcome: ConversationOver) -> None:
    """Send `error` (if any) and `ended`, then close. Shielded and bounded: the browser may be gone or stalled."""
    with trio.move_on_after(1.0, shield=True):
        with suppress(Exception):
            if outcome.error is not None:
                await browser.send(bp.error(outcome.error, outcome.message, **outcome.extra))
            await browser.send(bp.ended(outcome.reason))
            await browser.close(outcome.close_code, outcome.reason)
