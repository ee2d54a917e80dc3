"""The LITE-mode audio websocket (`ws_url`): LiveAvatar LITE and HeyGen v1's `realtime_endpoint` speak it.

The relay sends the agent's speech as base64 PCM16 LE mono 24 kHz in `agent.speak` frames (one `event_id`
per agent turn, `turn-7`), ends a turn with `agent.speak_end`, barges in with `agent.interrupt`, and keeps
the session alive with `session.keep_alive`. The server answers with `agent.speak_started` /
`agent.speak_ended` and a handful of bookkeeping events (reference: `liveavatar.md`, "The ws_url websocket").

The first half of this module is sans-io: frame builders, a parser that turns every server frame into a
frozen dataclass (unknown types become `None`), and the chunking policy. The second half
(`open_lite_speaker`, `LiteSpeaker`) is the thin `relay.net.wsclient` layer around it.

Chunking policy (`split_speak_audio`): the relay holds nothing back. Each chunk of agent audio is resampled
to 24 kHz and sent at once as one `agent.speak` packet, so the relay adds no buffering latency: the first
packet of a turn leaves as soon as the first agent chunk arrives. (pipecat holds 400 ms, livekit 600 ms, the
web SDK sends ~15 ms pieces, so the server takes small packets; the docs' "about 1 s per packet" is advice,
1 MB the hard limit.) A chunk longer than `MAX_SPEAK_PCM_BYTES` (1 s of audio, ~64 KB of base64) is split
into 1 s packets, so no frame comes near the 1 MB limit and an `agent.interrupt` never waits behind a huge
frame.

This module must never log or put into an exception the `ws_url` (its query string carries the session's
token), never send two frames interleaved, and never send a chunk of an interrupted turn after its
`agent.interrupt`."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import trio

from relay.avatars import AvatarSessionEnded, AvatarStateChanged, AvatarUnavailable, OnAvatarEvent
from relay.net.wsclient import (
    ClientWebSocket,
    WebSocketClosed,
    WebSocketConnectError,
    WebSocketRejected,
    open_websocket,
)
from relay.protocol.audio import AudioFormat, StreamingResampler

log = logging.getLogger("relay.lite")

LITE_SAMPLE_RATE = 24_000
LITE_BYTES_PER_SECOND = LITE_SAMPLE_RATE * 2
# The server may close the connection on a frame over 1 MB; base64 grows data by 4/3.
MAX_FRAME_BYTES = 1_000_000
MAX_SPEAK_PCM_BYTES = LITE_BYTES_PER_SECOND  # 1 s per packet at most (~64 KB of base64)


class LiteProtocolError(Exception):
    """A frame from the server that is not a JSON object with a string `type`."""


# ----------------------------------------------------------------------------------------------------
# Client -> server frames


def _frame(payload: dict[str, Any]) -> str:
    return orjson.dumps(payload).decode()


def build_speak(event_id: str, pcm24k: bytes | memoryview) -> str:
    """`agent.speak`: one packet of PCM16 LE mono 24 kHz audio for the utterance `event_id`."""
    if len(pcm24k) % 2:
        raise ValueError("PCM16 audio must have an even number of bytes")
    audio = base64.b64encode(pcm24k).decode("ascii")
    return _frame({"type": "agent.speak", "event_id": event_id, "audio": audio})


def build_speak_end(event_id: str) -> str:
    """`agent.speak_end`: the utterance `event_id` has no more audio; the server commits its buffer."""
    return _frame({"type": "agent.speak_end", "event_id": event_id})


def build_interrupt(event_id: str) -> str:
    """`agent.interrupt`: stop speaking now and clear the audio buffer."""
    return _frame({"type": "agent.interrupt", "event_id": event_id})


def build_start_listening(event_id: str) -> str:
    """`agent.start_listening`: show the listening pose."""
    return _frame({"type": "agent.start_listening", "event_id": event_id})


def build_stop_listening(event_id: str) -> str:
    """`agent.stop_listening`: leave the listening pose."""
    return _frame({"type": "agent.stop_listening", "event_id": event_id})


def build_keep_alive(event_id: str) -> str:
    """`session.keep_alive`: reset the server's idle timer (5 minutes)."""
    return _frame({"type": "session.keep_alive", "event_id": event_id})


def turn_event_id(turn: int, prefix: str = "turn") -> str:
    """The `event_id` shared by every frame of agent turn `turn`: `turn-7`."""
    return f"{prefix}-{turn}"


def turn_from_event_id(event_id: str | None, prefix: str = "turn") -> int | None:
    """Inverse of `turn_event_id`; None for an event id the relay did not make."""
    if event_id is None:
        return None
    head, sep, tail = event_id.rpartition("-")
    if not sep or head != prefix or not tail.isdigit():
        return None
    return int(tail)


# ----------------------------------------------------------------------------------------------------
# Server -> client events


@dataclass(frozen=True, slots=True)
class SessionStateUpdated:
    """`session.state_updated`: connecting | connected | closing | closed."""

    state: str


@dataclass(frozen=True, slots=True)
class SpeakStarted:
    """`agent.speak_started`: the avatar began speaking utterance `event_id`."""

    event_id: str | None
    task_id: str | None


@dataclass(frozen=True, slots=True)
class SpeakEnded:
    """`agent.speak_ended`: the avatar finished speaking utterance `event_id`."""

    event_id: str | None
    task_id: str | None


@dataclass(frozen=True, slots=True)
class SpeakInterrupted:
    """`agent.speak_interrupted`: the utterance `event_id` was cut off by `agent.interrupt`."""

    event_id: str | None
    task_id: str | None


@dataclass(frozen=True, slots=True)
class AudioBufferAppended:
    """`agent.audio_buffer_appended`: a packet was taken (about one per `agent.speak`)."""

    event_id: str | None


@dataclass(frozen=True, slots=True)
class AudioBufferCommitted:
    """`agent.audio_buffer_committed`: the server acknowledged `agent.speak_end`."""

    event_id: str | None


@dataclass(frozen=True, slots=True)
class AudioBufferCleared:
    """`agent.audio_buffer_cleared`: the server acknowledged `agent.interrupt`."""

    event_id: str | None


@dataclass(frozen=True, slots=True)
class AgentStateUpdated:
    """`agent.state_updated`: idle | listening | talking."""

    previous_state: str | None
    new_state: str | None


@dataclass(frozen=True, slots=True)
class ServerError:
    """`error`: `{"error": {"type", "message"}}`."""

    error_type: str | None
    message: str | None


@dataclass(frozen=True, slots=True)
class ServerWarning:
    """`warning`: same shape as `error` (a bare `message` is accepted too)."""

    warning_type: str | None
    message: str | None


LiteEvent = (
    SessionStateUpdated
    | SpeakStarted
    | SpeakEnded
    | SpeakInterrupted
    | AudioBufferAppended
    | AudioBufferCommitted
    | AudioBufferCleared
    | AgentStateUpdated
    | ServerError
    | ServerWarning
)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _task_id(message: dict[str, Any]) -> str | None:
    task = message.get("task")
    return _str_or_none(task.get("id")) if isinstance(task, dict) else None


def _problem(message: dict[str, Any], key: str) -> tuple[str | None, str | None]:
    # `{"error": {"type", "message"}}` per the reference; tolerate a bare string or top-level `message`.
    body = message.get(key)
    if isinstance(body, dict):
        return _str_or_none(body.get("type")), _str_or_none(body.get("message"))
    if isinstance(body, str):
        return None, body
    return None, _str_or_none(message.get("message"))


def parse_server_event(frame: str | bytes) -> LiteEvent | None:
    """One server frame -> its event; None for a type this module does not know (forward compatibility).

    Raises LiteProtocolError if the frame is not a JSON object with a string `type`.
    """
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise LiteProtocolError("frame is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise LiteProtocolError("frame is not a JSON object with a string 'type'")
    kind: str = message["type"]
    event_id = _str_or_none(message.get("event_id"))
    match kind:
        case "session.state_updated":
            return SessionStateUpdated(state=_str_or_none(message.get("state")) or "")
        case "agent.speak_started":
            return SpeakStarted(event_id, _task_id(message))
        case "agent.speak_ended":
            return SpeakEnded(event_id, _task_id(message))
        case "agent.speak_interrupted":
            return SpeakInterrupted(event_id, _task_id(message))
        case "agent.audio_buffer_appended":
            return AudioBufferAppended(event_id)
        case "agent.audio_buffer_committed":
            return AudioBufferCommitted(event_id)
        case "agent.audio_buffer_cleared":
            return AudioBufferCleared(event_id)
        case "agent.state_updated":
            return AgentStateUpdated(_str_or_none(message.get("previous_state")),
                                     _str_or_none(message.get("new_state")))
        case "error":
            return ServerError(*_problem(message, "error"))
        case "warning":
            return ServerWarning(*_problem(message, "warning"))
    return None


def avatar_event_for(event: LiteEvent, prefix: str = "turn") -> AvatarStateChanged | None:
    """The provider-neutral event the conversation cares about, if any.

    `agent.speak_interrupted` also means "stopped speaking": after an interrupt the server sends no
    `agent.speak_ended` for that utterance, and the page must not think the avatar is still talking.
    """
    if isinstance(event, SpeakStarted):
        return AvatarStateChanged(speaking=True, turn=turn_from_event_id(event.event_id, prefix))
    if isinstance(event, SpeakEnded | SpeakInterrupted):
        return AvatarStateChanged(speaking=False, turn=turn_from_event_id(event.event_id, prefix))
    return None


# ----------------------------------------------------------------------------------------------------
# Chunking policy


def split_speak_audio(pcm24k: bytes, max_bytes: int = MAX_SPEAK_PCM_BYTES) -> Iterator[memoryview]:
    """Slice resampled audio into `agent.speak` packets: the whole chunk at once if it fits in `max_bytes`,
    else `max_bytes` pieces (rounded down to whole samples). Empty input gives no packet. See the module
    docstring for why nothing is held back."""
    if max_bytes < 2:
        raise ValueError("max_bytes must hold at least one sample")
    step = max_bytes - (max_bytes % 2)
    view = memoryview(pcm24k)
    for start in range(0, len(view), step):
        yield view[start:start + step]


# ----------------------------------------------------------------------------------------------------
# I/O


class LiteSpeaker:
    """Sends one session's agent audio over an open `ws_url` socket. Made by `open_lite_speaker`.

    Every method may block on the socket (the upstream not reading); cancelling the calling scope cancels it.
    A socket that closes makes the methods return quietly: the reader task notices the close and raises
    `AvatarSessionEnded` out of `open_lite_speaker`.
    """

    def __init__(self, ws: ClientWebSocket, turn_prefix: str = "turn") -> None:
        self._ws = ws
        self._prefix = turn_prefix
        # Our own lock, not only the socket's: the "interrupted?" check and the send must be one step,
        # so a chunk waiting to be sent re-checks after an `agent.interrupt` went out ahead of it.
        self._send_lock = trio.StrictFIFOLock()
        self._resamplers: dict[int, StreamingResampler] = {}
        self._spoken_turns: set[int] = set()
        self._interrupted_through = -(2**63)
        self._control_counter = 0
        self.connected = trio.Event()

    def event_id(self, turn: int) -> str:
        return turn_event_id(turn, self._prefix)

    def _is_interrupted(self, turn: int) -> bool:
        return turn <= self._interrupted_through

    async def _send(self, frame: str) -> bool:
        try:
            await self._ws.send_text(frame)
        except WebSocketClosed:
            # The reader task turns the close into AvatarSessionEnded; a caller mid-turn just stops here.
            log.debug("lite socket closed while sending")
            return False
        return True

    async def _send_speak(self, turn: int, packet: memoryview) -> None:
        if not packet:
            return
        frame = build_speak(self.event_id(turn), packet)
        async with self._send_lock:
            if self._is_interrupted(turn):
                return
            if await self._send(frame):
                self._spoken_turns.add(turn)

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None:
        """Resample one chunk of turn `turn` to 24 kHz and send it at once (see the chunking policy).
        Chunks of a turn that was interrupted are dropped."""
        if self._is_interrupted(turn):
            return
        resampler = self._resamplers.get(turn)
        if resampler is None or resampler.in_format != audio_format:
            if resampler is not None:
                # A format change mid-turn: finish the old stream so its tail is not lost.
                for packet in split_speak_audio(resampler.flush()):
                    await self._send_speak(turn, packet)
            resampler = self._resamplers[turn] = StreamingResampler(audio_format, LITE_SAMPLE_RATE)
        for packet in split_speak_audio(resampler.process(audio)):
            await self._send_speak(turn, packet)

    async def end_turn(self, turn: int) -> None:
        """Send the resampler's tail, then `agent.speak_end`. Nothing is sent for a turn that was interrupted
        or never had audio."""
        resampler = self._resamplers.pop(turn, None)
        if self._is_interrupted(turn):
            return
        if resampler is not None:
            for packet in split_speak_audio(resampler.flush()):
                await self._send_speak(turn, packet)
        if turn not in self._spoken_turns:
            return
        frame = build_speak_end(self.event_id(turn))
        async with self._send_lock:
            if self._is_interrupted(turn):
                return
            self._spoken_turns.discard(turn)
            await self._send(frame)

    async def interrupt(self, turn: int) -> None:
        """`agent.interrupt` for `turn`. From this call on, no chunk of `turn` or an older turn is sent, even
        one already waiting for the socket."""
        # Marked before waiting for the lock: a chunk queued behind us sees it when it gets the lock.
        self._interrupted_through = max(self._interrupted_through, turn)
        for old in [t for t in self._resamplers if t <= turn]:
            del self._resamplers[old]
        self._spoken_turns = {t for t in self._spoken_turns if t > turn}
        frame = build_interrupt(self.event_id(turn))
        async with self._send_lock:
            await self._send(frame)

    def _control_id(self, kind: str) -> str:
        self._control_counter += 1
        return f"{kind}-{self._control_counter}"

    async def keep_alive(self) -> None:
        """`session.keep_alive`: reset the server's idle timer."""
        frame = build_keep_alive(self._control_id("keep-alive"))
        async with self._send_lock:
            await self._send(frame)

    async def start_listening(self) -> None:
        """`agent.start_listening`: the avatar shows its listening pose."""
        frame = build_start_listening(self._control_id("listen"))
        async with self._send_lock:
            await self._send(frame)

    async def stop_listening(self) -> None:
        """`agent.stop_listening`: the avatar leaves its listening pose."""
        frame = build_stop_listening(self._control_id("listen"))
        async with self._send_lock:
            await self._send(frame)

    async def read_events(self, on_event: OnAvatarEvent) -> None:
        """Reader task: deliver speaking/stopped events through `on_event`, log errors and warnings, and raise
        AvatarSessionEnded when the socket closes. Cancelled by its nursery."""
        while True:
            try:
                frame = await self._ws.receive()
            except WebSocketClosed as exc:
                self.connected.set()
                raise AvatarSessionEnded(
                    "session_ended", "The avatar session ended.", upstream_code=exc.code
                ) from None
            try:
                event = parse_server_event(frame)
            except LiteProtocolError as exc:
                log.warning("ignoring a malformed frame from the avatar: %s", exc)
                continue
            if event is None:
                continue
            if isinstance(event, SessionStateUpdated):
                if event.state == "connected":
                    self.connected.set()
                continue
            if isinstance(event, ServerError):
                log.warning("avatar error: %s: %s", event.error_type, event.message)
                continue
            if isinstance(event, ServerWarning):
                log.warning("avatar warning: %s: %s", event.warning_type, event.message)
                continue
            avatar_event = avatar_event_for(event, self._prefix)
            if avatar_event is not None:
                try:
                    on_event(avatar_event)
                except Exception:
                    log.exception("avatar event callback failed")


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    # Strict exception groups wrap even one failure; the caller should see the failure itself.
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    return leaves[0] if len(leaves) == 1 else None


@asynccontextmanager
async def open_lite_speaker(ws_url: str, on_event: OnAvatarEvent, *, connect_timeout: float = 10.0,
                            turn_prefix: str = "turn") -> AsyncIterator[LiteSpeaker]:
    """Open the `ws_url` socket, wait for `session.state_updated: connected` (at most `connect_timeout`; the
    event is unreliable, so on timeout log a warning and go on), and yield a LiteSpeaker while a reader task
    delivers events to `on_event` (called inline: it must not block).

    Raises AvatarUnavailable ("timeout" or "upstream_error") if the socket cannot be opened, and
    AvatarSessionEnded out of the body when the server closes the socket (the body is cancelled first). On
    exit the reader is cancelled and the socket closed (close handshake bounded by 2 s). Cancelling
    the caller cancels everything; it does not stop the avatar session itself (the provider does that).
    """
    async with AsyncExitStack() as stack:
        with trio.move_on_after(connect_timeout) as opening:  # bounds the connection and the upgrade
            try:
                ws = await stack.enter_async_context(open_websocket(ws_url, close_timeout=2.0))
            except WebSocketRejected as exc:
                raise AvatarUnavailable("upstream_error", "The avatar refused the audio socket.",
                                        upstream_code=exc.status_code) from None
            except WebSocketConnectError as exc:
                raise AvatarUnavailable("upstream_error",
                                        f"Could not open the avatar's audio socket ({exc}).") from None
        if opening.cancelled_caught:
            raise AvatarUnavailable("timeout", "The avatar's audio socket did not answer in time.")
        speaker = LiteSpeaker(ws, turn_prefix)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(speaker.read_events, on_event)
                with trio.move_on_after(connect_timeout) as waited:
                    await speaker.connected.wait()
                if waited.cancelled_caught:
                    log.warning("no 'connected' state from the avatar after %.1f s; sending anyway",
                                   connect_timeout)
                try:
                    yield speaker
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            single = _single(group)
            if single is None:
                raise
            raise single from single.__cause__
