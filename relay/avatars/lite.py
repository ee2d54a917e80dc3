"""The LITE-mode audio socket client (`ws_url`): `open_lite_audio_stream` yields a `LiteAudioStream` that sends one
session's agent audio, used by LiveAvatar LITE sessions and HeyGen's realtime sessions.

A thin `relay.net.wsclient` layer around the sans-I/O `relay.protocol.lite` (frames, events, chunking policy).
`LiteAudioStream` is an `AudioTaker`: `take_audio` is `speak_audio`'s part without I/O (the speech router calls it
inline), `send_packets` the rest. This module must never log or put into an exception the `ws_url` (its query
string carries the session's token), never send two frames interleaved, and never send a chunk of an interrupted
turn after its `agent.interrupt`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from relay._util import single
from relay.avatars import AvatarSessionEnded, AvatarStateChanged, AvatarUnavailable, OnAvatarEvent
from relay.net.wsclient import (
    ClientWebSocket,
    WebSocketClosed,
    WebSocketConnectError,
    WebSocketRejected,
    open_websocket,
    take_lock,
)
from relay.protocol.audio import AudioFormat, StreamingResampler
from relay.protocol.lite import (
    FIRST_PACKET_SECONDS,
    LITE_SAMPLE_RATE,
    LiteEvent,
    LiteProtocolError,
    ServerError,
    ServerWarning,
    SessionStateUpdated,
    SpeakEnded,
    SpeakInterrupted,
    SpeakPacer,
    SpeakStarted,
    build_interrupt,
    build_keep_alive,
    build_speak,
    build_speak_end,
    build_start_listening,
    build_stop_listening,
    parse_server_event,
    turn_event_id,
    turn_from_event_id,
)

log = logging.getLogger("relay.lite")


_STOPPED = (SpeakEnded, SpeakInterrupted)


def avatar_event_for(event: LiteEvent, prefix: str = "turn") -> AvatarStateChanged | None:
    """The provider-neutral event the conversation cares about, if any.

    `agent.speak_interrupted` also means "stopped speaking": after an interrupt the server sends no
    `agent.speak_ended` for that utterance, and the page must not think the avatar is still talking.
    """
    if isinstance(event, SpeakStarted):
        return AvatarStateChanged(speaking=True, turn=turn_from_event_id(event.event_id, prefix))
    if isinstance(event, _STOPPED):
        return AvatarStateChanged(speaking=False, turn=turn_from_event_id(event.event_id, prefix))
    return None


class LiteAudioStream:
    """Sends one session's agent audio over an open `ws_url` socket. Made by `open_lite_audio_stream`.

    Every method may block on the socket (the upstream not reading); cancelling the calling scope cancels it.
    A socket that closes makes the methods return quietly: the reader task notices the close and raises
    `AvatarSessionEnded` out of `open_lite_audio_stream`.
    """

    def __init__(self, ws: ClientWebSocket, turn_prefix: str = "turn",
                 first_packet_seconds: float = FIRST_PACKET_SECONDS) -> None:
        self._ws = ws
        self._prefix = turn_prefix
        self._first_packet_bytes = SpeakPacer.first_bytes_for(first_packet_seconds)
        self._pacers: dict[int, SpeakPacer] = {}
        self._segments: dict[int, int] = {}  # a turn's current utterance (0, then 1, 2... after each speak_end)
        self._committed: set[int] = set()  # turns whose current utterance was ended: more audio starts the next
        # Our own lock, not only the socket's: the "interrupted?" check and the send must be one step,
        # so a chunk waiting to be sent re-checks after an `agent.interrupt` went out ahead of it.
        self._send_lock = trio.StrictFIFOLock()
        self._resamplers: dict[int, StreamingResampler] = {}
        self._spoken_turns: set[int] = set()
        self._interrupted_through = -(2**63)
        self._control_counter = 0
        self.connected = trio.Event()

    def event_id(self, turn: int) -> str:
        """The event id of turn `turn`'s current (or last) utterance."""
        return turn_event_id(turn, self._prefix, self._segments.get(turn, 0))

    def _is_interrupted(self, turn: int) -> bool:
        return turn <= self._interrupted_through

    async def wait_connected(self) -> None:
        """Return once the server announced `session.state_updated: connected` (or the socket closed: the reader
        then raises AvatarSessionEnded). Cancelled by the caller's scope."""
        await self.connected.wait()

    async def _send(self, *frames: str) -> bool:
        """Send `frames` in order, in one write. Call it holding `_send_lock`."""
        # LiveAvatar's docs say to wait for `connected` before sending any command (livekit-agents' plugin holds
        # its audio until then; the web SDK does not wait). Held here, in order: nothing said before `connected`
        # is lost, and the conversation bounds the wait (RELAY_AVATAR_CONNECT_TIMEOUT).
        if not self.connected.is_set():  # (once set, no scheduling point: the send is one)
            await self.connected.wait()
        try:
            await self._ws.send_texts(frames)
        except WebSocketClosed:
            # The reader task turns the close into AvatarSessionEnded; a caller mid-turn just stops here.
            log.debug("lite socket closed while sending")
            return False
        return True

    async def _send_locked(self, frames: list[str], turn: int | None = None) -> bool:
        """Send `frames` in one write under the send lock, taken without a task switch of its own when it is free
        (the write is one). With `turn` (audio): not once that turn is interrupted by the time the socket is this
        call's (checked under the lock: a call waiting behind a stuck write sees an `agent.interrupt` that went ahead
        of it). True when they were written."""
        await take_lock(self._send_lock)
        try:
            return (turn is None or not self._is_interrupted(turn)) and await self._send(*frames)
        finally:
            self._send_lock.release()

    def take_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> tuple[str, list[memoryview]]:
        """The part of `speak_audio` that does no I/O: resample one chunk of turn `turn` to 24 kHz and return the
        utterance's event id with the packets the cadence says are due now (often none: the pacer holds the
        chunk), to be sent in order by `send_packets`. A chunk of an interrupted turn gives no packet; audio of a
        turn whose utterance was ended starts its next utterance (a new event id)."""
        if self._is_interrupted(turn):
            return "", []
        if turn in self._committed:
            self._committed.discard(turn)
            self._segments[turn] = self._segments.get(turn, 0) + 1
        event_id = self.event_id(turn)
        pacer = self._pacers.get(turn)
        if pacer is None:
            pacer = self._pacers[turn] = SpeakPacer(self._first_packet_bytes)
        resampler = self._resamplers.get(turn)
        now = trio.current_time()
        if resampler is None or (resampler.in_format is not audio_format and resampler.in_format != audio_format):
            packets: list[memoryview] = []
            if resampler is not None:
                # A format change mid-turn: finish the old stream so its tail is not lost.
                packets = pacer.add(resampler.flush(), now)
            resampler = self._resamplers[turn] = StreamingResampler(audio_format, LITE_SAMPLE_RATE)
            return event_id, packets + pacer.add(resampler.process(audio), now)
        return event_id, pacer.add(resampler.process(audio), now)

    async def send_packets(self, turn: int, event_id: str, packets: list[memoryview]) -> None:
        """Send the packets `take_audio` returned, in order and in one write (none of them once `turn` is
        interrupted, even if it was interrupted while this waited for the socket)."""
        frames = [build_speak(event_id, packet) for packet in packets if packet]
        if frames and await self._send_locked(frames, turn):
            self._spoken_turns.add(turn)

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None:
        """Resample one chunk of turn `turn` to 24 kHz and send what the packet cadence says is due (see
        `relay.protocol.lite`): `take_audio`, then `send_packets`."""
        event_id, packets = self.take_audio(audio, audio_format, turn)
        await self.send_packets(turn, event_id, packets)

    async def end_turn(self, turn: int) -> None:
        """Send what is left of the utterance (the resampler's tail, the packet held back), then its one
        `agent.speak_end`. Nothing is sent for a turn that was interrupted or never had audio. Audio of `turn`
        taken from the moment this is called on starts the turn's next utterance (a new event id)."""
        resampler = self._resamplers.pop(turn, None)
        pacer = self._pacers.pop(turn, None)
        if self._is_interrupted(turn):
            return
        event_id = self.event_id(turn)
        packets: list[memoryview] = []
        if pacer is not None:
            if resampler is not None:
                packets += pacer.add(resampler.flush(), trio.current_time())
            packets += pacer.flush()
        frames = [build_speak(event_id, packet) for packet in packets if packet]
        if not frames and turn not in self._spoken_turns:
            return
        self._committed.add(turn)  # from now on, more audio of `turn` starts its next utterance
        frames.append(build_speak_end(event_id))
        await self._send_locked(frames, turn)  # the utterance's tail and its end: one write
        self._spoken_turns.discard(turn)

    async def interrupt(self, turn: int) -> None:
        """`agent.interrupt` for `turn`. From this call on, no chunk of `turn` or an older turn is sent, even
        one already waiting for the socket."""
        # Marked before waiting for the lock: a chunk queued behind us sees it when it gets the lock.
        self._interrupted_through = max(self._interrupted_through, turn)
        for old in [t for t in self._resamplers if t <= turn]:
            del self._resamplers[old]
        for old in [t for t in self._pacers if t <= turn]:
            del self._pacers[old]
        self._spoken_turns = {t for t in self._spoken_turns if t > turn}
        await self._send_locked([build_interrupt(self.event_id(turn))])

    def _control_id(self, kind: str) -> str:
        self._control_counter += 1
        return f"{kind}-{self._control_counter}"

    async def keep_alive(self) -> None:
        """`session.keep_alive`: reset the server's idle timer."""
        await self._send_locked([build_keep_alive(self._control_id("keep-alive"))])

    async def set_listening(self, listening: bool) -> None:
        """`agent.start_listening` (True: the avatar shows its listening pose) or `agent.stop_listening`."""
        build = build_start_listening if listening else build_stop_listening
        await self._send_locked([build(self._control_id("listen"))])

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


@asynccontextmanager
async def open_lite_audio_stream(ws_url: str, on_event: OnAvatarEvent, *, connect_timeout: float = 10.0,
                                 turn_prefix: str = "turn", first_packet_seconds: float = FIRST_PACKET_SECONDS
                                 ) -> AsyncIterator[LiteAudioStream]:
    """Open the `ws_url` socket and yield a LiteAudioStream at once, while a reader task delivers events to
    `on_event` (called inline: it must not block). The stream holds every frame until the server announces
    `session.state_updated: connected`; how long that may take is the caller's business (`wait_connected`).

    `first_packet_seconds`: the packet cadence's first packet (RELAY_LITE_FIRST_PACKET_MS; 0: send every chunk as
    it comes). Raises AvatarUnavailable ("timeout" or "upstream_error") if the socket cannot be opened within
    `connect_timeout`, and AvatarSessionEnded out of the body when the server closes the socket (the body is
    cancelled first). On exit the reader is cancelled and the socket closed (close handshake bounded by 2 s).
    Cancelling the caller cancels everything; it does not stop the avatar session itself (the provider does that).
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
        stream = LiteAudioStream(ws, turn_prefix, first_packet_seconds)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.read_events, on_event)
                try:
                    yield stream
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Strict exception groups wrap even one failure; the caller should see the failure itself.
            only = single(group)
            if only is None:
                raise
            raise only from only.__cause__
