"""A simulator of Simli's realtime API: `POST /compose/token`, the `/compose/webrtc/livekit` socket, and the two
read-only calls the doctor uses (`GET /ratelimiter/sessions`, `GET /faces`).

As hard as the public sources (docs/protocol.md, "Simli"): the token answer's 400 `{"session_token": <fail token>,
"detail": <reason>}` with py2's reasons, 422 `detail` lists, the socket's join info / `START` / `SPEAK` / `SILENT`
and termination messages, binary PCM16 16 kHz audio played back in real time, `SKIP` clearing the buffer, `DONE`
ending the session once what was sent has played, `maxIdleTime` and `maxSessionLength` ends, the room that must be
joined within 30 s. It imports nothing from the relay's code (so a protocol bug cannot hide in both sides) and must
never do heavy per-frame work or log per frame.

Undocumented upstream behaviour, chosen here (and said in docs/protocol.md): a missing or bad key answers **401**
with the 400 body shape (`INVALID_API_KEY`); an account without credits answers 400 `BILLING_ERROR` at the token;
an unknown face 400 `INVALID_FACE_ID`, an unknown emotion (`face/emotion`) 400 `INVALID_EMOTION`; a token opens one
socket, within `token_ttl_s`; the concurrency limit is enforced when the socket opens (`RATE LIMIT:
CONCURRENT_SESSIONS`, close 1008); billing runs from the socket's opening to the session's end; `START` is sent once
the room is joined (automatically unless `withhold_join`), audio sent before it is dropped (counted); a room not
joined within `join_deadline_s` ends the session (`ERROR: LIVEKIT_JOIN_TIMEOUT`); `maxIdleTime` counts time since
the last audio frame (silence included, per the Python guide); the idle and length ends send `CLOSING IDLE_TIMEOUT`
/ `CLOSING MAX_SESSION_LENGTH` and close the socket; **a socket the client closes without `DONE` leaves the session
running, and billed, until `maxIdleTime` passes** (the worst case the sources allow); all-zero audio is silence (no
`SPEAK`).

Control endpoints:
- `GET /_sim/ledger`: `{"sessions": {id: {...}}, "tokens": n, "requests": {endpoint: n}, "refusals": [...], "active":
  n, "billed_seconds": s}`. `sessions` holds the sessions that were billed (a socket opened and was admitted; a token
  alone, or a socket refused, is no session: `tokens` counts every token, `refusals` lists the refused). `active`
  counts those billed now. Per session: `stopped` (ended by the client's `DONE`, as the other simulators' ledgers say
  it: the time, else null), `face_id`,
  `max_session_length`, `max_idle_time`, `handle_silence`, `audio_input_format`, `created`, `started` (socket
  opened), `joined`, `ended`, `socket_closed` (the socket went away while the session went on, time), `end_reason`
  (DONE, IDLE_TIMEOUT, MAX_SESSION_LENGTH, JOIN_TIMEOUT, RATE_LIMITED, TERMINATED, AUDIO_CHUNK_TOO_LARGE),
  `billed_seconds`, `ws_connects`, `audio_seconds`, `frames`, `silent_frames`, `dropped_before_start`, `skips`, `dones`,
  `frames_after_done`, `segments` (audio seconds received between `SKIP`s: one more than `skips`), `speak_events`,
  `last_audio` (time), `first_audio` (the first frame that is not silence: the avatar starts speaking). Times are
  time.monotonic().
- `GET /_sim/audio/<session_id>/<segment>`: the raw PCM16 16 kHz received in that segment (`record_audio` only).
- `POST /_sim/join`: join every room that waits (`withhold_join`); answers `{"joined": n}`.
- `POST /_sim/reset`: end every session, clear ledger and faults.
- `POST /_sim/faults` (JSON, merged; `latency_ms` and `fail` merge by key; an unknown key -> 400 and the known ones):
  - `latency_ms`: `{endpoint: ms}` before answering; endpoints `token`, `ws_connect`, `sessions`, `faces`.
  - `fail`: `{endpoint: {"status", "detail", "retry_after", "times", "body"}}`: answer that instead (body
    `{"session_token": "FAIL_TOKEN", "detail"}` unless `body`); for `ws_connect` the handshake is refused.
  - `invalid_keys`: keys answered 401 (a missing key always is). `no_credits`: token 400 `BILLING_ERROR`.
  - `concurrency_limit`: int or null: a socket opened while this many sessions are billed gets `RATE …`.
  - `join_deadline_s` (30), `withhold_join` (false), `token_ttl_s` (60).
  - `max_idle_time_s`, `max_session_length_s`: null, or a cap on what the token asked (tests shorten them).
  - `terminate_after_ms`: `{"text": "ERROR: BILLING_ERROR", "after_ms": n}`: n ms after `START`, send `text` and
    close (end_reason TERMINATED).
  - `drop_ws_after_audio_bytes`: int or null: once a socket has received this much audio, close it with 1011 and
    no message, mid-reply; the session goes on, billed, until `maxIdleTime`.
  - `max_frame_bytes` (65536): a longer audio frame gets `ERROR: AUDIO_CHUNK_TOO_LARGE` and close 1009.
  - `record_audio`: keep the received audio for `/_sim/audio/...` (tests only; costs memory).
  - `livekit_url` (`wss://livekit.simulated.invalid`, a room nothing joins): the join info's room URL.
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import trio
from quart import Response, abort, request, websocket
from quart_trio import QuartTrio

from relay.sim.faults import SimLedger, json_response, simulator_app, take_forced_failure, validation_error

SIMULATED_LIVEKIT_URL = "wss://livekit.simulated.invalid"
BYTES_PER_SECOND = 32_000  # PCM16 mono 16 kHz
FAIL_TOKEN = "FAIL_TOKEN"
# Simli's preset faces (docs.simli.com "Default Faces") and Trinity emotions ("Add Emotions"), as the catalogue.
PRESET_FACES = frozenset({
    "cace3ef7-a4c4-425d-a8cf-a5358eb0c427",  # Tina
    "b9e5fba3-071a-4e35-896e-211c4d6eaa7b",  # Laila
    "d2a5c7c6-fed9-4f55-bcb3-062f7cd20103",  # Kate
    "7e74d6e7-d559-4394-bd56-4923a3ab75ad",  # Sabour
})
ACCOUNT_FACES = ("5514e24d-6086-46a3-ace4-6a7264e5cb7c",)  # the simulated account's own face (`GET /faces`)
EMOTIONS = frozenset({"b4fcff6b-3072-45ad-89db-5a859287f3b2", "92f24a0c-f046-45df-8df0-af7449c04571"})

DEFAULT_FAULTS: dict[str, Any] = {
    "latency_ms": {},
    "fail": {},
    "invalid_keys": [],
    "no_credits": False,
    "concurrency_limit": None,
    "join_deadline_s": 30.0,
    "withhold_join": False,
    "token_ttl_s": 60.0,
    "max_idle_time_s": None,
    "max_session_length_s": None,
    "terminate_after_ms": None,
    "drop_ws_after_audio_bytes": None,
    "max_frame_bytes": 65_536,
    "record_audio": False,
    "livekit_url": SIMULATED_LIVEKIT_URL,
}


def _refusal_body(status: int, detail: str) -> Response:
    return json_response({"session_token": FAIL_TOKEN, "detail": detail}, status)


def _forced_answer(fail: dict[str, Any]) -> tuple[Response, dict[str, Any]]:
    """A forced failure's answer (`fail`: status, detail, retry_after, or a whole `body`) and what the refusals
    record of it."""
    status = int(fail.get("status", 500))
    detail = str(fail.get("detail", "UNKNOWN_ERROR"))
    response = json_response(fail["body"], status) if "body" in fail else _refusal_body(status, detail)
    if fail.get("retry_after") is not None:
        response.headers["Retry-After"] = str(math.ceil(fail["retry_after"]))
    return response, {"detail": detail}


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# ----------------------------------------------------------------------------------------------------------------------
# Sessions


@dataclass(slots=True)
class SimSession:
    session_id: str
    session_token: str
    face_id: str
    max_session_length: float
    max_idle_time: float
    handle_silence: bool
    audio_input_format: str
    created: float
    created_at: datetime
    record_audio: bool = False
    started: float | None = None
    joined: float | None = None
    ended: float | None = None
    socket_closed: float | None = None
    end_reason: str | None = None
    last_audio: float | None = None
    first_audio: float | None = None
    last_data: float = 0.0
    ws_connects: int = 0
    audio_bytes: int = 0
    frames: int = 0
    silent_frames: int = 0
    dropped_before_start: int = 0
    skips: int = 0
    dones: int = 0
    frames_after_done: int = 0
    speak_events: int = 0
    segments: list[int] = field(default_factory=lambda: [0])
    audio: list[bytearray] = field(default_factory=lambda: [bytearray()])
    socket: SimliSocket | None = None
    join_released: trio.Event = field(default_factory=trio.Event)
    watchdog: trio.CancelScope | None = None

    @property
    def billed(self) -> bool:
        return self.started is not None and self.ended is None

    def billed_seconds(self, now: float) -> float:
        if self.started is None:
            return 0.0
        return max(0.0, (self.ended if self.ended is not None else now) - self.started)

    def end(self, reason: str, text: str | None = None, code: int = 1000) -> None:
        """End the session (billing stops now); the socket, if open, gets `text` and is closed with `code`."""
        if self.ended is not None:
            return
        self.ended = time.monotonic()
        self.end_reason = reason
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.socket is not None:
            self.socket.close(code, text)

    def to_ledger(self, now: float) -> dict[str, Any]:
        return {
            "stopped": self.ended if self.end_reason == "DONE" else None, "face_id": self.face_id,
            "max_session_length": self.max_session_length,
            "max_idle_time": self.max_idle_time, "handle_silence": self.handle_silence,
            "audio_input_format": self.audio_input_format, "created": self.created, "started": self.started,
            "joined": self.joined, "ended": self.ended, "socket_closed": self.socket_closed,
            "end_reason": self.end_reason, "billed_seconds": self.billed_seconds(now),
            "ws_connects": self.ws_connects, "audio_seconds": self.audio_bytes / BYTES_PER_SECOND,
            "frames": self.frames, "silent_frames": self.silent_frames,
            "dropped_before_start": self.dropped_before_start, "skips": self.skips, "dones": self.dones,
            "frames_after_done": self.frames_after_done,
            "segments": [size / BYTES_PER_SECOND for size in self.segments], "speak_events": self.speak_events,
            "last_audio": self.last_audio, "first_audio": self.first_audio, "open_socket": self.socket is not None,
        }


class SimliSocket:
    """The server side of one `/compose/webrtc/livekit` connection, independent of the web framework.

    `run(receive, send)` drives it until the client leaves (returns 1000), `close()` is called from outside (the
    session ended: its text is sent, then `run` returns its code) or a frame breaks a rule. Audio "plays" in real
    time: `SPEAK` when non-silent audio starts, `SILENT` when the buffer runs dry or is cleared."""

    def __init__(self, session: SimSession, faults: dict[str, Any]) -> None:
        # Faults are read live (a test may change them mid-session); an unset numeric one has its default.
        self.session = session
        self._faults = faults
        self._send: Callable[[str], Awaitable[None]] | None = None
        self._send_lock = trio.Lock()
        self._closed = trio.Event()
        self._close_text: str | None = None
        self.close_code = 1000
        self._started = False
        self._done = False
        self._speaking = False
        self._queued_until = 0.0  # monotonic time the buffered audio finishes playing
        self._audio_changed = trio.Event()
        self._received = 0  # audio bytes on this socket (drop_ws_after_audio_bytes)
        self._nursery: trio.Nursery | None = None

    def close(self, code: int = 1000, text: str | None = None) -> None:
        """End the connection from outside; `text` is sent first. Safe to call more than once (the first wins)."""
        if self._closed.is_set():
            return
        self.close_code = code
        self._close_text = text
        self._closed.set()

    async def run(self, receive: Callable[[], Awaitable[str | bytes]],
                  send: Callable[[str], Awaitable[None]]) -> int:
        """Serve the connection; returns the close code. Cancelled with the caller's scope."""
        self._send = send
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._close_when_asked, nursery.cancel_scope)
            nursery.start_soon(self._announce)
            nursery.start_soon(self._play)
            try:
                while True:
                    await self._handle(await receive())
            finally:
                nursery.cancel_scope.cancel()
        return self.close_code

    async def _close_when_asked(self, scope: trio.CancelScope) -> None:
        await self._closed.wait()
        if self._close_text is not None:
            with trio.move_on_after(1.0):
                await self._emit(self._close_text)
        scope.cancel()

    async def _emit(self, text: str) -> None:
        assert self._send is not None
        async with self._send_lock:
            await self._send(text)

    async def _announce(self) -> None:
        session = self.session
        await self._emit(orjson.dumps({"destination": "c2ltdWxhdGVk", "session_id": session.session_id}).decode())
        await self._emit('{"video_metadata": {"fps": 30, "width": 512, "height": 512}}')
        await self._emit(orjson.dumps({"livekit_url": str(self._faults["livekit_url"] or SIMULATED_LIVEKIT_URL),
                                       "livekit_token": f"sim-viewer.{secrets.token_urlsafe(16)}"}).decode())
        if not self._faults["withhold_join"]:
            session.join_released.set()
        with trio.move_on_after(float(self._faults["join_deadline_s"] or DEFAULT_FAULTS["join_deadline_s"])):
            await session.join_released.wait()
        if not session.join_released.is_set():
            session.end("JOIN_TIMEOUT", "ERROR: LIVEKIT_JOIN_TIMEOUT")
            return
        session.joined = time.monotonic()
        self._started = True
        await self._emit("START")
        terminate = self._faults["terminate_after_ms"]
        if isinstance(terminate, dict):
            await trio.sleep(float(terminate.get("after_ms", 0)) / 1000)
            session.end("TERMINATED", str(terminate.get("text", "ERROR: UNKNOWN_ERROR")))

    async def _play(self) -> None:
        """`SILENT` once the buffered audio has played (or been cleared)."""
        while True:
            await self._audio_changed.wait()
            self._audio_changed = trio.Event()
            while (remaining := self._queued_until - time.monotonic()) > 0:
                with trio.move_on_after(remaining):
                    await self._audio_changed.wait()
                    self._audio_changed = trio.Event()
            if self._speaking:
                self._speaking = False
                await self._emit("SILENT")

    async def _handle(self, message: str | bytes) -> None:
        session = self.session
        if isinstance(message, bytes):
            await self._audio(message)
            return
        word = message.strip().upper()
        if word == "SKIP":
            session.skips += 1
            session.segments.append(0)
            if session.record_audio:
                session.audio.append(bytearray())
            self._queued_until = time.monotonic()
            self._audio_changed.set()
            await self._emit("ACK")
        elif word == "DONE":
            session.dones += 1
            if not self._done:
                self._done = True
                assert self._nursery is not None
                self._nursery.start_soon(self._end_after_playback)
        elif word.startswith("PING"):
            await self._emit("pong " + message.strip()[4:].strip())
        else:
            await self._emit(f"ERROR: UNKNOWN_MESSAGE {message[:32]}")

    async def _end_after_playback(self) -> None:
        await trio.sleep(max(0.0, self._queued_until - time.monotonic()))
        self.session.end("DONE")

    async def _audio(self, frame: bytes) -> None:
        session = self.session
        if frame.startswith(b"PLAY_IMMEDIATE"):
            frame = frame[len(b"PLAY_IMMEDIATE"):]
            self._queued_until = time.monotonic()
        if len(frame) > int(self._faults["max_frame_bytes"] or DEFAULT_FAULTS["max_frame_bytes"]):
            session.end("AUDIO_CHUNK_TOO_LARGE", "ERROR: AUDIO_CHUNK_TOO_LARGE", code=1009)
            return
        if self._done:
            session.frames_after_done += 1
            return
        now = time.monotonic()
        session.last_data = now
        if not self._started:
            session.dropped_before_start += 1
            return
        session.frames += 1
        session.audio_bytes += len(frame)
        session.segments[-1] += len(frame)
        session.last_audio = now
        if session.first_audio is None and frame.count(0) != len(frame):
            session.first_audio = now  # the avatar starts speaking (keep-alive silence is not speech)
        if session.record_audio:
            session.audio[-1].extend(frame)
        self._queued_until = max(self._queued_until, now) + len(frame) / BYTES_PER_SECOND
        if frame.count(0) == len(frame):
            session.silent_frames += 1
        elif not self._speaking:
            self._speaking = True
            session.speak_events += 1
            await self._emit("SPEAK")
        self._audio_changed.set()
        self._received += len(frame)
        drop = self._faults["drop_ws_after_audio_bytes"]
        if drop is not None and self._received >= int(drop):
            self.close(1011)  # the connection dies mid-reply; the session itself goes on


class SimState(SimLedger[SimSession]):
    def __init__(self) -> None:
        super().__init__(DEFAULT_FAULTS)

    def reset(self) -> None:
        for session in self.sessions.values():
            session.end("RESET", "CLOSING RESET")
        self.clear()

    def billed_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.billed)


def create_app(*, start_faults: dict[str, Any] | None = None) -> QuartTrio:
    """The Simli simulator as an ASGI app (see the module docstring for endpoints and faults); `start_faults` are
    merged into the defaults at start (`avatar-relay sim --faults simli=JSON`; `/_sim/reset` forgets them)."""
    state = SimState()
    app = simulator_app(__name__, state, start_faults)

    def fault(name: str) -> float:
        """A numeric fault, its default when unset (null)."""
        value = state.faults.get(name)
        return float(DEFAULT_FAULTS[name] if value is None else value)

    def refuse(endpoint: str, response: Response, detail: str | None) -> Response:
        return state.refuse(endpoint, response, detail=detail)

    def api_key_problem(endpoint: str) -> Response | None:
        key = request.headers.get("x-simli-api-key")
        if not key or key in (state.faults["invalid_keys"] or ()):
            return refuse(endpoint, _refusal_body(401, "INVALID_API_KEY"), "INVALID_API_KEY")
        return None

    async def gate(endpoint: str) -> Response | None:
        """Count the request, apply injected latency and forced failures, check the API key. None: go on."""
        return await state.gate(endpoint, _forced_answer, api_key_problem)

    async def body_json() -> dict[str, Any] | None:
        raw = await request.get_data()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return None
        return body if isinstance(body, dict) else None

    async def watchdog(session: SimSession) -> None:
        """End a billed session at its maximum length, or after `maxIdleTime` without audio (socket or not)."""
        scope = trio.CancelScope()
        session.watchdog = scope
        with scope:
            assert session.started is not None
            ends_at = session.started + session.max_session_length
            while session.ended is None:
                now = time.monotonic()
                idle_at = session.last_data + session.max_idle_time
                if now >= ends_at:
                    session.end("MAX_SESSION_LENGTH", "CLOSING MAX_SESSION_LENGTH")
                elif now >= idle_at:
                    session.end("IDLE_TIMEOUT", "CLOSING IDLE_TIMEOUT")
                else:
                    await trio.sleep(min(ends_at, idle_at) - now)

    # ------------------------------------------------------------------------------------------------------------------
    # REST

    @app.post("/compose/token")
    async def compose_token() -> Response:
        refused = await gate("token")
        if refused is not None:
            return refused
        body = await body_json()
        if body is None:
            return refuse("token", validation_error([(["body"], "Input should be a valid dictionary",
                                                       "dict_type")]), "validation")
        problems: list[tuple[list[Any], str, str]] = []
        face = body.get("faceId")
        if face is None:
            problems.append((["body", "faceId"], "Field required", "missing"))
        elif not isinstance(face, str) or not face:
            problems.append((["body", "faceId"], "Input should be a valid string", "string_type"))
        for name, default in (("maxSessionLength", 3600), ("maxIdleTime", 300)):
            if not _is_positive_int(body.get(name, default)):
                problems.append((["body", name], "Input should be a valid integer", "int_type"))
        handle_silence = body.get("handleSilence", True)
        if not isinstance(handle_silence, bool):
            problems.append((["body", "handleSilence"], "Input should be a valid boolean", "bool_type"))
        audio_format = body.get("audioInputFormat", "pcm16")
        if audio_format != "pcm16":
            problems.append((["body", "audioInputFormat"], "Input should be 'pcm16'", "literal_error"))
        if problems:
            return refuse("token", validation_error(problems), "validation")
        assert isinstance(face, str)
        face_part, _, emotion = face.partition("/")
        if face_part not in PRESET_FACES and face_part not in ACCOUNT_FACES:
            return refuse("token", _refusal_body(400, "INVALID_FACE_ID"), "INVALID_FACE_ID")
        if emotion and emotion not in EMOTIONS:
            return refuse("token", _refusal_body(400, "INVALID_EMOTION"), "INVALID_EMOTION")
        if state.faults["no_credits"]:
            return refuse("token", _refusal_body(400, "BILLING_ERROR"), "BILLING_ERROR")
        length = float(body.get("maxSessionLength", 3600))
        idle = float(body.get("maxIdleTime", 300))
        if state.faults["max_session_length_s"] is not None:
            length = min(length, float(state.faults["max_session_length_s"]))
        if state.faults["max_idle_time_s"] is not None:
            idle = min(idle, float(state.faults["max_idle_time_s"]))
        session = SimSession(
            session_id=str(uuid.uuid4()), session_token=secrets.token_urlsafe(32), face_id=face,
            max_session_length=length, max_idle_time=idle, handle_silence=handle_silence,
            audio_input_format=audio_format, created=time.monotonic(), created_at=datetime.now(UTC),
            record_audio=bool(state.faults["record_audio"]),
        )
        state.sessions[session.session_id] = session
        state.by_token[session.session_token] = session.session_id
        return json_response({"session_token": session.session_token}, 200)

    @app.get("/ratelimiter/sessions")
    async def session_count() -> Response:
        refused = await gate("sessions")
        return refused if refused is not None else json_response({"currentUsage": state.billed_count()}, 200)

    @app.get("/faces")
    async def faces() -> Response:
        refused = await gate("faces")
        if refused is not None:
            return refused
        stamp = datetime(2026, 1, 1, tzinfo=UTC).isoformat()
        return json_response([{"id": face, "owner_id": "sim-owner", "simli_version": 1, "created_at": stamp,
                       "updated_at": stamp} for face in ACCOUNT_FACES], 200)

    # ------------------------------------------------------------------------------------------------------------------
    # The socket

    @app.websocket("/compose/webrtc/livekit")
    async def livekit_socket() -> None:
        state.count("ws_connect")
        latency = state.faults["latency_ms"].get("ws_connect")
        if latency:
            await trio.sleep(latency / 1000)
        fail = take_forced_failure(state.faults["fail"], "ws_connect")
        if fail is not None:
            abort(int(fail.get("status", 500)))
        await websocket.accept()
        token = websocket.args.get("session_token") or ""
        session = state.sessions.get(state.by_token.get(token, ""))
        if session is None or session.ws_connects or session.ended is not None:
            state.refusals.append({"endpoint": "ws_connect", "status": None, "detail": "INVALID_SESSION_TOKEN",
                                   "at": time.monotonic()})
            await websocket.send("ERROR: INVALID_SESSION_TOKEN")
            await websocket.close(1008)
            return
        session.ws_connects += 1
        if time.monotonic() - session.created > fault("token_ttl_s"):
            session.end("TOKEN_EXPIRED")
            state.refusals.append({"endpoint": "ws_connect", "status": None, "detail": "SESSION_TOKEN_EXPIRED",
                                   "at": time.monotonic()})
            await websocket.send("ERROR: SESSION_TOKEN_EXPIRED")
            await websocket.close(1008)
            return
        limit = state.faults["concurrency_limit"]
        if limit is not None and state.billed_count() >= int(limit):
            session.end("RATE_LIMITED")
            state.refusals.append({"endpoint": "ws_connect", "status": None, "detail": "RATE",
                                   "at": time.monotonic()})
            await websocket.send("RATE LIMIT: CONCURRENT_SESSIONS")
            await websocket.close(1008)
            return
        session.started = session.last_data = time.monotonic()
        sock = SimliSocket(session, state.faults)
        session.socket = sock
        app.nursery.start_soon(watchdog, session)
        try:
            code = await sock.run(websocket.receive, websocket.send)
            await websocket.close(code)
        finally:
            session.socket = None
            if session.ended is None:
                session.socket_closed = time.monotonic()  # no DONE: billed on until maxIdleTime

    # ------------------------------------------------------------------------------------------------------------------
    # Control

    @app.get("/_sim/ledger")
    async def ledger() -> Response:
        now = time.monotonic()
        return json_response({
            "sessions": {sid: s.to_ledger(now) for sid, s in state.sessions.items() if s.started is not None},
            "tokens": len(state.sessions),
            "requests": dict(state.requests),
            "refusals": list(state.refusals),
            "active": state.billed_count(),
            "billed_seconds": sum(s.billed_seconds(now) for s in state.sessions.values()),
        }, 200)

    @app.get("/_sim/audio/<session_id>/<int:segment>")
    async def recorded_audio(session_id: str, segment: int) -> Response:
        session = state.sessions.get(session_id)
        if session is None or not session.record_audio or not 0 <= segment < len(session.audio):
            return json_response({"error": "no recorded audio"}, 404)
        return Response(bytes(session.audio[segment]), status=200, content_type="application/octet-stream")

    @app.post("/_sim/faults")
    async def set_faults() -> Response:
        return state.faults_update(await body_json())

    @app.post("/_sim/join")
    async def join_rooms() -> Response:
        joined = 0
        for session in state.sessions.values():
            if session.socket is not None and not session.join_released.is_set():
                session.join_released.set()
                joined += 1
        return json_response({"joined": joined}, 200)

    @app.post("/_sim/reset")
    async def reset() -> Response:
        state.reset()
        return json_response({"ok": True}, 200)

    return app
