"""The server side of the LITE audio websocket (LiveAvatar's `ws_url`; HeyGen's `realtime_endpoint` speaks the same
protocol), independent of the web framework and of which service serves it: `LiteSocketSimulator` drives one
connection, `LiteLedger` records what it received. Like every simulator it imports nothing from the relay.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

LITE_BYTES_PER_SECOND = 48_000  # PCM16 mono 24 kHz
MAX_FRAME_CHARS = 1_000_000



@dataclass(slots=True)
class EventRecord:
    chunks: int = 0
    audio_bytes: int = 0
    first_chunk_at: float | None = None
    ended_at: float | None = None  # when agent.speak_ended was sent

    def to_json(self) -> dict[str, Any]:
        return {"chunks": self.chunks, "audio_seconds": self.audio_bytes / LITE_BYTES_PER_SECOND,
                "first_chunk_at": self.first_chunk_at, "ended_at": self.ended_at}


@dataclass(slots=True)
class LiteLedger:
    """What one session's LITE socket(s) received: counts and totals only, plus audio if `record_audio`."""

    audio_bytes: int = 0
    chunks: int = 0
    events: dict[str, EventRecord] = field(default_factory=dict)
    interrupts: list[str] = field(default_factory=list)
    chunks_after_interrupt: int = 0
    chunks_after_commit: int = 0  # audio under an event id after its agent.speak_end (dropped unless the knob says)
    underruns: int = 0  # chunks that came after the avatar had played everything before them: a stutter
    repeated_speak_ends: int = 0  # agent.speak_end for an event id already ended
    keep_alives: int = 0
    speak_ends: int = 0
    dropped_before_connected: int = 0
    errors_sent: int = 0
    listening: list[str] = field(default_factory=list)  # "start" / "stop", in the order received
    record_audio: bool = False
    audio: dict[str, bytearray] = field(default_factory=dict)
    dropped_at: float | None = None  # when the `drop_after_audio_bytes` fault closed a socket (1011)

    def to_json(self) -> dict[str, Any]:
        return {
            "audio_seconds": self.audio_bytes / LITE_BYTES_PER_SECOND,
            "chunks": self.chunks,
            "events": {event_id: record.to_json() for event_id, record in self.events.items()},
            "interrupts": list(self.interrupts),
            "chunks_after_interrupt": self.chunks_after_interrupt,
            "chunks_after_commit": self.chunks_after_commit,
            "underruns": self.underruns,
            "repeated_speak_ends": self.repeated_speak_ends,
            "keep_alives": self.keep_alives,
            "speak_ends": self.speak_ends,
            "dropped_before_connected": self.dropped_before_connected,
            "listening": list(self.listening),
            "errors_sent": self.errors_sent,
            "dropped_at": self.dropped_at,
        }


def dumps(payload: dict[str, Any]) -> str:
    return orjson.dumps(payload).decode()


class LiteSocketSimulator:
    """The server side of one LITE websocket connection, independent of the web framework.

    `run(receive, send)` drives it: `receive()` returns the next client frame (raising or being cancelled when
    the client leaves), `send(text)` sends one frame. Speech "plays" in real time from its first chunk: a chunk
    that arrives after everything before it has played is a stutter (`underruns`); `agent.speak_ended` comes when
    the utterance's audio duration plus `render_delay` (the avatar's rendering and WebRTC delay, separate from the
    bytes) has elapsed since its `agent.speak_started` (not before its `agent.speak_end`). Audio under an event id
    after its `agent.speak_end` is dropped and counted (`after_commit` "drop"; "play": it extends the utterance).
    `agent.interrupt` clears every scheduled speaking event, not only the one it names (the docs: "clears all
    scheduled speaking events"). `close()` ends `run` from outside (session expired or stopped); `run` returns then and
    the caller closes the socket. Frames over 1 MB make `run` return `1009` (the caller closes with it). Once the
    connection has received `drop_after_audio_bytes()` bytes of audio, `run` returns `1011` (a socket that dies
    mid-reply).
    """

    def __init__(self, ledger: LiteLedger, *, on_activity: Callable[[], None] = lambda: None,
                 suppress_connected: bool = False, connected_delay: float = 0.0,
                 withhold_connected: bool = False, render_delay: float = 0.3, after_commit: str = "drop",
                 drop_after_audio_bytes: Callable[[], int | None] = lambda: None) -> None:
        self.ledger = ledger
        self._drop_after_audio_bytes = drop_after_audio_bytes  # read at each chunk: a test may change it
        self._received = 0  # audio bytes on this connection
        self._render_delay = render_delay
        self._after_commit = after_commit
        self._committed: set[str] = set()  # event ids that had their agent.speak_end
        self._on_activity = on_activity
        self._suppress_connected = suppress_connected
        self._connected_delay = connected_delay
        self._connected = False
        self._released = trio.Event()  # `release()`: a withheld `connected` may go out now
        if not withhold_connected:
            self._released.set()
        self._send: Callable[[str], Awaitable[None]] | None = None
        self._send_lock = trio.Lock()
        self._closed = trio.Event()
        self.close_code = 1000
        self._agent_state = "idle"
        self._interrupted: set[str] = set()
        self._started: dict[str, float] = {}  # event_id -> monotonic time of agent.speak_started
        self._ended_timers: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    def release(self) -> None:
        """Send the withheld `connected` now (the `withhold_connected` fault; `POST /_sim/connect`)."""
        self._released.set()

    def close(self, code: int = 1000) -> None:
        """End the connection (from outside: the session ended). Safe to call more than once."""
        self.close_code = code
        self._closed.set()

    async def run(self, receive: Callable[[], Awaitable[str | bytes]],
                  send: Callable[[str], Awaitable[None]]) -> int:
        """Serve the connection until the client leaves (returns 1000), `close()` is called (returns its code)
        or a frame is too large (returns 1009). Cancelled with the caller's scope."""
        self._send = send
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._announce)
            nursery.start_soon(self._close_when_asked, nursery.cancel_scope)
            try:
                while True:
                    frame = await receive()
                    if len(frame) > MAX_FRAME_CHARS:
                        self.close(1009)
                        break
                    await self.handle_frame(frame)
            finally:
                nursery.cancel_scope.cancel()
        return self.close_code

    async def _close_when_asked(self, scope: trio.CancelScope) -> None:
        await self._closed.wait()
        scope.cancel()

    async def _announce(self) -> None:
        await self._emit({"type": "session.state_updated", "state": "connecting"})
        if self._connected_delay:
            await trio.sleep(self._connected_delay)
        await self._released.wait()
        self._connected = True
        if not self._suppress_connected:
            await self._emit({"type": "session.state_updated", "state": "connected"})

    async def _emit(self, payload: dict[str, Any]) -> None:
        assert self._send is not None
        async with self._send_lock:
            await self._send(dumps(payload))

    async def _error(self, kind: str, message: str) -> None:
        self.ledger.errors_sent += 1
        await self._emit({"type": "error", "error": {"type": kind, "message": message}})

    async def _set_state(self, new_state: str) -> None:
        if new_state == self._agent_state:
            return
        previous, self._agent_state = self._agent_state, new_state
        await self._emit({"type": "agent.state_updated", "previous_state": previous, "new_state": new_state})

    async def handle_frame(self, frame: str | bytes) -> None:
        """Process one client frame."""
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            await self._error("invalid_message", "Frame is not valid JSON")
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self._error("invalid_message", "Frame must be a JSON object with a 'type'")
            return
        if not self._connected:
            self.ledger.dropped_before_connected += 1
            return
        self._on_activity()
        kind = message["type"]
        event_id = message.get("event_id")
        if not isinstance(event_id, str):
            event_id = ""
        if kind == "agent.speak":
            await self._speak(event_id, message.get("audio"))
        elif kind == "agent.speak_end":
            await self._speak_end(event_id)
        elif kind == "agent.interrupt":
            await self._interrupt(event_id)
        elif kind == "session.keep_alive":
            self.ledger.keep_alives += 1
        elif kind == "agent.start_listening":
            self.ledger.listening.append("start")
            if self._agent_state != "talking":
                await self._set_state("listening")
        elif kind == "agent.stop_listening":
            self.ledger.listening.append("stop")
            if self._agent_state == "listening":
                await self._set_state("idle")
        else:
            await self._error("unknown_event", f"Unknown event type {kind[:64]!r}")

    async def _speak(self, event_id: str, audio: object) -> None:
        if not isinstance(audio, str):
            await self._error("invalid_audio", "agent.speak needs base64 'audio'")
            return
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            await self._error("invalid_audio", "audio is not valid base64")
            return
        if len(pcm) % 2:
            await self._error("invalid_audio", "audio must be PCM16 (an even number of bytes)")
            return
        ledger = self.ledger
        if event_id in self._interrupted:
            # Still counted as received: the tests prove the relay never sends these.
            ledger.chunks_after_interrupt += 1
            return
        if event_id in self._committed:
            ledger.chunks_after_commit += 1
            if self._after_commit != "play":
                return
            self._committed.discard(event_id)
        started = self._started.get(event_id)
        known = ledger.events.get(event_id)
        if started is not None and known is not None and \
                time.monotonic() > started + known.audio_bytes / LITE_BYTES_PER_SECOND:
            ledger.underruns += 1
        ledger.chunks += 1
        ledger.audio_bytes += len(pcm)
        record = ledger.events.get(event_id)
        if record is None:
            record = ledger.events[event_id] = EventRecord(first_chunk_at=time.monotonic())
        record.chunks += 1
        record.audio_bytes += len(pcm)
        if ledger.record_audio:
            ledger.audio.setdefault(event_id, bytearray()).extend(pcm)
        self._received += len(pcm)
        drop = self._drop_after_audio_bytes()
        if drop is not None and self._received >= drop:
            ledger.dropped_at = time.monotonic()
            self.close(1011)  # the connection dies mid-reply; the session itself goes on, billed, until stopped
            return
        await self._emit({"type": "agent.audio_buffer_appended", "event_id": event_id})
        if event_id not in self._started:
            self._started[event_id] = time.monotonic()
            task = {"id": f"task-{uuid.uuid4().hex[:12]}"}
            await self._emit({"type": "agent.speak_started", "event_id": event_id, "task": task})
            await self._set_state("talking")

    async def _speak_end(self, event_id: str) -> None:
        self.ledger.speak_ends += 1
        if event_id in self._interrupted:
            return
        if event_id in self._committed:
            self.ledger.repeated_speak_ends += 1
        self._committed.add(event_id)
        await self._emit({"type": "agent.audio_buffer_committed", "event_id": event_id})
        started = self._started.get(event_id)
        record = self.ledger.events.get(event_id)
        if started is None or record is None:
            return
        previous = self._ended_timers.pop(event_id, None)
        if previous is not None:  # more audio after a speak_end ("play"): the utterance ends later
            previous.cancel()
        ends_at = started + record.audio_bytes / LITE_BYTES_PER_SECOND + self._render_delay
        scope = trio.CancelScope()
        self._ended_timers[event_id] = scope
        assert self._nursery is not None
        self._nursery.start_soon(self._end_speech_at, event_id, ends_at, scope)

    async def _end_speech_at(self, event_id: str, ends_at: float, scope: trio.CancelScope) -> None:
        with scope:
            # Ledger times are time.monotonic(); trio's clock has its own origin, so sleep relative.
            await trio.sleep(max(0.0, ends_at - time.monotonic()))
            self._ended_timers.pop(event_id, None)
            record = self.ledger.events.get(event_id)
            if record is not None:
                record.ended_at = time.monotonic()
            await self._emit({"type": "agent.speak_ended", "event_id": event_id, "task": {"id": event_id}})
            if not self._ended_timers:
                await self._set_state("idle")

    async def _interrupt(self, event_id: str) -> None:
        self.ledger.interrupts.append(event_id)
        # Every scheduled speaking event is cleared, the named one and any other still playing.
        playing = [e for e in self._ended_timers if e != event_id]
        for cleared in [event_id, *playing]:
            self._interrupted.add(cleared)
            timer = self._ended_timers.pop(cleared, None)
            if timer is not None:
                timer.cancel()
            if cleared in self._started:
                await self._emit({"type": "agent.speak_interrupted", "event_id": cleared,
                                  "task": {"id": cleared}})
        await self._emit({"type": "agent.audio_buffer_cleared", "event_id": event_id})
        await self._set_state("idle")
