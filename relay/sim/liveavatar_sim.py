"""A simulator of LiveAvatar (LITE mode): the REST API and the `ws_url` audio websocket.

Faithful to `/work/shared/reference/liveavatar.md`: the `{code: 1000, data, message}` envelope, 201 on start,
422 `detail` lists, 401 `{"error": "bad api key"}`, no credits as HTTP 403 / code 4033, the LITE websocket's
events, the 5-minute idle timeout, the one-minute sandbox. It imports nothing from `relay` (so a protocol bug
cannot hide in both sides) and must never do heavy per-frame work or log per frame: benchmarks run hundreds of
sessions through it. `LiteSocketSimulator` (the websocket behaviour) and `LiteLedger` (what one socket
received) are reusable: HeyGen's simulated `realtime_endpoint` speaks the same protocol.

Undocumented upstream behaviour, chosen here: the concurrency limit answers HTTP 429 with code 4029 and
"Concurrent session limit reached"; a sandbox session with another avatar answers 400 / 4000; stopping a
session that already ended answers 200 (stop is idempotent); any UUID is accepted as an avatar id by
`sessions/token` (only `GET /v1/avatars/{id}` knows the catalogue), anything else answers 422 as the real schema
(`format: uuid`) does; a `max_session_duration` above the tier's limit answers 422 naming the limit (the real
answer is not documented).

Control endpoints:
- `GET /_sim/ledger`: `{"sessions": {id: {...}}, "requests": {endpoint: n}, "refusals": [...]}`. Per session:
  `created`, `started`, `stopped`, `expired` (time.monotonic() or null), `stop_reason`, `end_reason`,
  `is_sandbox`, `avatar_id`, `max_session_duration`, `rest_keep_alives`, `ws_connects`, `stop_calls` (stop requests
  answered for it), and `lite` (see
  `LiteLedger.to_json`: `audio_seconds`, `chunks`, per event_id `{chunks, audio_seconds, first_chunk_at}`,
  `interrupts` (event ids), `chunks_after_interrupt`, `keep_alives`, `speak_ends`, `dropped_before_connected`,
  `listening`: "start"/"stop" for each `agent.start_listening`/`agent.stop_listening`, in order).
- `GET /_sim/audio/<session_id>/<event_id>`: the raw PCM16 24 kHz received for that event id (only when the
  `record_audio` fault is on).
- `POST /_sim/connect`: send the withheld `session.state_updated: connected` on every open socket (the
  `withhold_connected` fault); answers `{"released": n}`.
- `POST /_sim/reset`: end every socket, clear ledger and faults.
- `POST /_sim/faults` (JSON, merged into the current faults; nested dicts `latency_ms` and `fail` merge by key):
  - `latency_ms`: `{endpoint: ms}` added before answering. Endpoints: `token`, `start`, `stop`, `keep_alive`,
    `list_sessions`, `avatars`, `ws_connect`. A slow stop is `{"latency_ms": {"stop": 3000}}`.
  - `fail`: `{endpoint: {"status": int, "code": int, "message": str, "retry_after": float, "times": int,
    "body": {...}}}`: answer that instead (envelope `{"code", "data": null, "message"}` unless `body` is given;
    `Retry-After` header if `retry_after`; only the next `times` requests if given). For `ws_connect` the
    handshake is refused with `status`.
  - `invalid_keys`: list of API keys answered with 401 `{"error": "bad api key"}` (a missing key always is).
  - `no_credits`: true -> `sessions/token` answers 403 `{"code": 4033, "message": "Insufficient credits"}`
    (sandbox sessions are free and still succeed).
  - `concurrency_limit`: int or null: `sessions/token` refuses when this many sessions are active.
  - `idle_timeout_s` (default 300): a started session with no activity (websocket command, REST or ws
    keep-alive) for this long expires (`end_reason` IDLE_TIMEOUT) and its socket is closed.
  - `sandbox_duration_s` (default 60): a sandbox session then ends as MAX_DURATION_REACHED.
  - `close_ws_after_ms`: close every new websocket this long after it connects (the session stays active).
  - `suppress_connected`: true -> never send `session.state_updated: connected`.
  - `connected_delay_ms`: send `connected` this late; commands before it are dropped silently (counted).
  - `withhold_connected`: true -> new sockets stay `connecting` (commands dropped and counted, as above) until
    `POST /_sim/connect`; never asking is an avatar that never connects.
  - `tier_max_session_duration_s` (default 7200): the subscription tier's longest session; `sessions/token`
    refuses a longer `max_session_duration` with 422.
  - `record_audio`: true -> keep the received audio for `/_sim/audio/...` (tests only; costs memory).
"""

from __future__ import annotations

import base64
import binascii
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

from relay.sim.faults import take_forced_failure
from relay.sim.http_keepalive import KeepAliveGuard

SANDBOX_AVATAR_ID = "dd73ea75-1218-4ef3-92ce-606d5f7fbc0a"
SIMULATED_LIVEKIT_URL = "wss://livekit.simulated.invalid"
LITE_BYTES_PER_SECOND = 48_000  # PCM16 mono 24 kHz
MAX_FRAME_CHARS = 1_000_000
STOP_REASONS = frozenset({
    "UNKNOWN", "USER_DISCONNECTED", "SERVER_ERROR", "IDLE_TIMEOUT", "NO_CREDITS", "USER_CLOSED",
    "AVATAR_DELETED", "MAX_DURATION_REACHED", "ZOMBIE_SESSION_REAP", "AGENT_HANG_UP",
})
QUALITIES = frozenset({"very_high", "high", "medium", "low"})
ENCODINGS = frozenset({"VP8", "H264"})

AVATARS: list[dict[str, Any]] = [
    {"id": SANDBOX_AVATAR_ID, "name": "Sandbox Avatar", "type": "PUBLIC", "status": "ACTIVE",
     "preview_url": "https://files.simulated.invalid/sandbox.webp",
     "default_voice": {"id": "sim-voice-1", "name": "Sim Voice"}, "is_sandbox": True},
    {"id": "6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01", "name": "Simulated Ada", "type": "PUBLIC", "status": "ACTIVE",
     "preview_url": "https://files.simulated.invalid/ada.webp",
     "default_voice": {"id": "sim-voice-2", "name": "Ada"}, "is_sandbox": False},
]

DEFAULT_FAULTS: dict[str, Any] = {
    "latency_ms": {},
    "fail": {},
    "invalid_keys": [],
    "no_credits": False,
    "concurrency_limit": None,
    "idle_timeout_s": 300.0,
    "sandbox_duration_s": 60.0,
    "close_ws_after_ms": None,
    "suppress_connected": False,
    "connected_delay_ms": 0,
    "withhold_connected": False,
    "tier_max_session_duration_s": 7200,
    "record_audio": False,
}


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _fresh_faults() -> dict[str, Any]:
    return {key: (dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value)
            for key, value in DEFAULT_FAULTS.items()}


# ----------------------------------------------------------------------------------------------------------------------
# The LITE websocket, reusable by any simulator that speaks it


@dataclass(slots=True)
class EventRecord:
    chunks: int = 0
    audio_bytes: int = 0
    first_chunk_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"chunks": self.chunks, "audio_seconds": self.audio_bytes / LITE_BYTES_PER_SECOND,
                "first_chunk_at": self.first_chunk_at}


@dataclass(slots=True)
class LiteLedger:
    """What one session's LITE socket(s) received: counts and totals only, plus audio if `record_audio`."""

    audio_bytes: int = 0
    chunks: int = 0
    events: dict[str, EventRecord] = field(default_factory=dict)
    interrupts: list[str] = field(default_factory=list)
    chunks_after_interrupt: int = 0
    keep_alives: int = 0
    speak_ends: int = 0
    dropped_before_connected: int = 0
    errors_sent: int = 0
    listening: list[str] = field(default_factory=list)  # "start" / "stop", in the order received
    record_audio: bool = False
    audio: dict[str, bytearray] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "audio_seconds": self.audio_bytes / LITE_BYTES_PER_SECOND,
            "chunks": self.chunks,
            "events": {event_id: record.to_json() for event_id, record in self.events.items()},
            "interrupts": list(self.interrupts),
            "chunks_after_interrupt": self.chunks_after_interrupt,
            "keep_alives": self.keep_alives,
            "speak_ends": self.speak_ends,
            "dropped_before_connected": self.dropped_before_connected,
            "listening": list(self.listening),
            "errors_sent": self.errors_sent,
        }


def _dumps(payload: dict[str, Any]) -> str:
    return orjson.dumps(payload).decode()


class LiteSocketSimulator:
    """The server side of one LITE websocket connection, independent of the web framework.

    `run(receive, send)` drives it: `receive()` returns the next client frame (raising or being cancelled when
    the client leaves), `send(text)` sends one frame. Speech "plays" in real time: `agent.speak_ended` comes
    when the utterance's audio duration has elapsed since its `agent.speak_started` (not before its
    `agent.speak_end`). `close()` ends `run` from outside (session expired or stopped); `run` returns then and
    the caller closes the socket. Frames over 1 MB make `run` return `1009` (the caller closes with it).
    """

    def __init__(self, ledger: LiteLedger, *, on_activity: Callable[[], None] = lambda: None,
                 suppress_connected: bool = False, connected_delay: float = 0.0,
                 withhold_connected: bool = False) -> None:
        self.ledger = ledger
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
            await self._send(_dumps(payload))

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
        ledger.chunks += 1
        ledger.audio_bytes += len(pcm)
        record = ledger.events.get(event_id)
        if record is None:
            record = ledger.events[event_id] = EventRecord(first_chunk_at=time.monotonic())
        record.chunks += 1
        record.audio_bytes += len(pcm)
        if ledger.record_audio:
            ledger.audio.setdefault(event_id, bytearray()).extend(pcm)
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
        await self._emit({"type": "agent.audio_buffer_committed", "event_id": event_id})
        started = self._started.get(event_id)
        record = self.ledger.events.get(event_id)
        if started is None or record is None or event_id in self._ended_timers:
            return
        ends_at = started + record.audio_bytes / LITE_BYTES_PER_SECOND
        scope = trio.CancelScope()
        self._ended_timers[event_id] = scope
        assert self._nursery is not None
        self._nursery.start_soon(self._end_speech_at, event_id, ends_at, scope)

    async def _end_speech_at(self, event_id: str, ends_at: float, scope: trio.CancelScope) -> None:
        with scope:
            # Ledger times are time.monotonic(); trio's clock has its own origin, so sleep relative.
            await trio.sleep(max(0.0, ends_at - time.monotonic()))
            self._ended_timers.pop(event_id, None)
            await self._emit({"type": "agent.speak_ended", "event_id": event_id, "task": {"id": event_id}})
            if not self._ended_timers:
                await self._set_state("idle")

    async def _interrupt(self, event_id: str) -> None:
        self.ledger.interrupts.append(event_id)
        self._interrupted.add(event_id)
        timer = self._ended_timers.pop(event_id, None)
        if timer is not None:
            timer.cancel()
        if event_id in self._started:
            await self._emit({"type": "agent.speak_interrupted", "event_id": event_id,
                              "task": {"id": event_id}})
        await self._emit({"type": "agent.audio_buffer_cleared", "event_id": event_id})
        await self._set_state("idle")


# ----------------------------------------------------------------------------------------------------------------------
# Sessions


@dataclass(slots=True)
class SimSession:
    session_id: str
    session_token: str
    ws_token: str
    avatar_id: str
    is_sandbox: bool
    mode: str
    max_session_duration: int
    created: float
    created_at: datetime
    started: float | None = None
    stopped: float | None = None
    expired: float | None = None
    ended_at: datetime | None = None
    stop_reason: str | None = None
    end_reason: str | None = None
    last_activity: float = 0.0
    rest_keep_alives: int = 0
    ws_connects: int = 0
    stop_calls: int = 0
    lite: LiteLedger = field(default_factory=LiteLedger)
    sockets: set[LiteSocketSimulator] = field(default_factory=set)
    watchdog: trio.CancelScope | None = None

    @property
    def active(self) -> bool:
        return self.stopped is None and self.expired is None

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def end(self, reason: str, *, expired: bool) -> None:
        now = time.monotonic()
        if expired:
            self.expired = now
        else:
            self.stopped = now
        self.end_reason = reason
        self.ended_at = datetime.now(UTC)
        if self.watchdog is not None:
            self.watchdog.cancel()
        for sock in list(self.sockets):
            sock.close(1000)

    def to_ledger(self) -> dict[str, Any]:
        return {
            "created": self.created, "started": self.started, "stopped": self.stopped, "expired": self.expired,
            "stop_reason": self.stop_reason, "end_reason": self.end_reason, "is_sandbox": self.is_sandbox,
            "avatar_id": self.avatar_id, "mode": self.mode, "max_session_duration": self.max_session_duration,
            "rest_keep_alives": self.rest_keep_alives, "ws_connects": self.ws_connects,
            "stop_calls": self.stop_calls, "open_sockets": len(self.sockets), "lite": self.lite.to_json(),
        }

    def credits_consumed(self, end: datetime) -> float:
        # One credit per started minute of a non-sandbox session (sandbox sessions are free).
        if self.is_sandbox or self.started is None:
            return 0.0
        return float(math.ceil(max(0.0, (end - self.created_at).total_seconds()) / 60))

    def to_api(self) -> dict[str, Any]:
        end = self.ended_at or datetime.now(UTC)
        item: dict[str, Any] = {
            "id": self.session_id, "created_at": self.created_at.isoformat(), "updated_at": end.isoformat(),
            "duration": int((end - self.created_at).total_seconds()), "source": "API", "mode": self.mode,
            "is_sandbox": self.is_sandbox, "credits_consumed": self.credits_consumed(end),
        }
        if not self.active:
            item["end_at"] = end.isoformat()
            item["end_reason"] = self.end_reason
        return item


class SimState:
    def __init__(self) -> None:
        self.faults = _fresh_faults()
        self.sessions: dict[str, SimSession] = {}
        self.by_token: dict[str, str] = {}
        self.requests: dict[str, int] = {}
        self.refusals: list[dict[str, Any]] = []

    def reset(self) -> None:
        for session in self.sessions.values():
            if session.active:
                session.end("UNKNOWN", expired=True)
        self.faults = _fresh_faults()
        self.sessions = {}
        self.by_token = {}
        self.requests = {}
        self.refusals = []

    def merge_faults(self, update: dict[str, Any]) -> None:
        for key, value in update.items():
            if key in ("latency_ms", "fail") and isinstance(value, dict):
                self.faults[key].update(value)
            else:
                self.faults[key] = value

    def active_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.active)


def _envelope(data: Any, status: int = 200, message: str = "Success") -> Response:
    return Response(orjson.dumps({"code": 1000, "data": data, "message": message}), status=status,
                    content_type="application/json")


def _failure(status: int, code: int, message: str, *, retry_after: float | None = None) -> Response:
    response = Response(orjson.dumps({"code": code, "data": None, "message": message}), status=status,
                        content_type="application/json")
    if retry_after is not None:
        response.headers["Retry-After"] = str(math.ceil(retry_after))
    return response


def _json(payload: Any, status: int) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type="application/json")


def _validation_error(problems: list[tuple[list[Any], str, str]]) -> Response:
    return _json({"detail": [{"loc": loc, "msg": msg, "type": kind} for loc, msg, kind in problems]}, 422)


def create_app(*, start_faults: dict[str, Any] | None = None) -> QuartTrio:
    """The LiveAvatar simulator as an ASGI app (see the module docstring for endpoints and faults); `start_faults` are
    merged into the defaults at start (`avatar-relay sim --faults liveavatar=JSON`; `/_sim/reset` forgets them)."""
    app = QuartTrio(__name__)
    app.asgi_app = KeepAliveGuard(app.asgi_app)  # type: ignore[method-assign]  # never lose a kept-alive request
    state = SimState()
    if start_faults:
        state.merge_faults(start_faults)

    async def prelude(endpoint: str) -> Response | None:
        """Count the request, apply injected latency and forced failures."""
        state.requests[endpoint] = state.requests.get(endpoint, 0) + 1
        latency = state.faults["latency_ms"].get(endpoint)
        if latency:
            await trio.sleep(latency / 1000)
        fail = take_forced_failure(state.faults["fail"], endpoint)
        if fail is None:
            return None
        status = int(fail.get("status", 500))
        state.refusals.append({"endpoint": endpoint, "status": status, "code": fail.get("code"),
                               "at": time.monotonic()})
        if "body" in fail:
            response = _json(fail["body"], status)
            if fail.get("retry_after") is not None:
                response.headers["Retry-After"] = str(math.ceil(fail["retry_after"]))
            return response
        return _failure(status, int(fail.get("code", 5000)), str(fail.get("message", "Internal error")),
                        retry_after=fail.get("retry_after"))

    def refuse(endpoint: str, response: Response, code: int | None) -> Response:
        state.refusals.append({"endpoint": endpoint, "status": response.status_code, "code": code,
                               "at": time.monotonic()})
        return response

    def api_key_problem(endpoint: str) -> Response | None:
        key = request.headers.get("X-API-KEY")
        if not key or key in state.faults["invalid_keys"]:
            return refuse(endpoint, _json({"error": "bad api key"}, 401), None)
        return None

    def bearer_session() -> SimSession | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        session_id = state.by_token.get(token.strip())
        return state.sessions.get(session_id) if session_id else None

    async def body_json() -> dict[str, Any] | None:
        raw = await request.get_data()
        if not raw:
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return body if isinstance(body, dict) else None

    def session_for_key_or_bearer(endpoint: str, body: dict[str, Any]) -> SimSession | Response:
        """Bearer session token, or X-API-KEY plus `session_id` in the body."""
        session = bearer_session()
        if session is not None:
            wanted = body.get("session_id")
            if wanted is not None and wanted != session.session_id:
                return refuse(endpoint, _failure(403, 4003, "Session token does not match session_id"), 4003)
            return session
        if request.headers.get("Authorization"):
            return refuse(endpoint, _json({"error": "invalid session token"}, 401), None)
        problem = api_key_problem(endpoint)
        if problem is not None:
            return problem
        session_id = body.get("session_id")
        if not isinstance(session_id, str):
            return _validation_error([(["body", "session_id"], "Field required", "missing")])
        found = state.sessions.get(session_id)
        if found is None:
            return refuse(endpoint, _failure(404, 4004, "Session not found"), 4004)
        return found

    async def watchdog(session: SimSession) -> None:
        """Expire a started session on idle timeout or when its duration is used up."""
        scope = trio.CancelScope()
        session.watchdog = scope
        with scope:
            assert session.started is not None
            limit = float(session.max_session_duration)
            if session.is_sandbox:
                limit = min(limit, float(state.faults["sandbox_duration_s"]))
            ends_at = session.started + limit
            while session.active:
                idle_deadline = session.last_activity + float(state.faults["idle_timeout_s"])
                now = time.monotonic()
                if now >= ends_at:
                    session.end("MAX_DURATION_REACHED", expired=True)
                    return
                if now >= idle_deadline:
                    session.end("IDLE_TIMEOUT", expired=True)
                    return
                await trio.sleep(min(ends_at, idle_deadline) - now)

    # ------------------------------------------------------------------------------------------------------------------
    # REST

    @app.post("/v1/sessions/token")
    async def create_token() -> Response:
        forced = await prelude("token")
        if forced is not None:
            return forced
        problem = api_key_problem("token")
        if problem is not None:
            return problem
        body = await body_json()
        if body is None:
            return _validation_error([(["body"], "Input should be a valid dictionary", "dict_type")])
        problems: list[tuple[list[Any], str, str]] = []
        mode = body.get("mode")
        if mode is None:
            problems.append((["body", "mode"], "Field required", "missing"))
        elif mode not in ("LITE", "FULL"):
            problems.append((["body", "mode"], "Input should be 'FULL' or 'LITE'", "enum"))
        avatar_id = body.get("avatar_id")
        if avatar_id is None:
            problems.append((["body", "avatar_id"], "Field required", "missing"))
        elif not isinstance(avatar_id, str) or not avatar_id:
            problems.append((["body", "avatar_id"], "Input should be a valid string", "string_type"))
        elif not _is_uuid(avatar_id):
            problems.append((["body", "avatar_id"], "Input should be a valid UUID", "uuid_parsing"))
        is_sandbox = body.get("is_sandbox", False)
        if not isinstance(is_sandbox, bool):
            problems.append((["body", "is_sandbox"], "Input should be a valid boolean", "bool_type"))
        video = body.get("video_settings") or {}
        if not isinstance(video, dict):
            problems.append((["body", "video_settings"], "Input should be a valid dictionary", "dict_type"))
            video = {}
        quality = video.get("quality", body.get("video_quality", "high"))
        if quality not in QUALITIES:
            problems.append((["body", "video_settings", "quality"], "Input should be 'very_high', 'high', "
                             "'medium' or 'low'", "enum"))
        if video.get("encoding", "H264") not in ENCODINGS:
            problems.append((["body", "video_settings", "encoding"], "Input should be 'VP8' or 'H264'", "enum"))
        duration = body.get("max_session_duration", 600)
        if not isinstance(duration, int) or isinstance(duration, bool) or duration <= 0:
            problems.append((["body", "max_session_duration"], "Input should be a positive integer", "int_type"))
        tier_limit = int(state.faults["tier_max_session_duration_s"])
        if not problems and duration > tier_limit:
            problems.append((["body", "max_session_duration"], f"max_session_duration {duration} exceeds the "
                             f"maximum allowed by your subscription tier ({tier_limit} s)", "less_than_equal"))
        if problems:
            return refuse("token", _validation_error(problems), 422)
        if is_sandbox and avatar_id != SANDBOX_AVATAR_ID:
            return refuse("token", _failure(400, 4000, "Sandbox mode only supports the sandbox avatar"), 4000)
        if state.faults["no_credits"] and not is_sandbox:
            return refuse("token", _failure(403, 4033, "Insufficient credits"), 4033)
        limit = state.faults["concurrency_limit"]
        if limit is not None and state.active_count() >= int(limit):
            return refuse("token", _failure(429, 4029, "Concurrent session limit reached"), 4029)
        session = SimSession(
            session_id=str(uuid.uuid4()), session_token=secrets.token_urlsafe(24),
            ws_token=secrets.token_urlsafe(24), avatar_id=str(avatar_id), is_sandbox=is_sandbox, mode=str(mode),
            max_session_duration=duration, created=time.monotonic(), created_at=datetime.now(UTC),
        )
        session.lite.record_audio = bool(state.faults["record_audio"])
        session.touch()
        state.sessions[session.session_id] = session
        state.by_token[session.session_token] = session.session_id
        return _envelope({"session_id": session.session_id, "session_token": session.session_token})

    @app.post("/v1/sessions/start")
    async def start_session() -> Response:
        forced = await prelude("start")
        if forced is not None:
            return forced
        session = bearer_session()
        if session is None:
            return refuse("start", _json({"error": "invalid session token"}, 401), None)
        if not session.active:
            return refuse("start", _failure(400, 4000, "Session start failed: session has ended"), 4000)
        if session.started is not None:
            return refuse("start", _failure(400, 4000, "Session start failed: already started"), 4000)
        session.started = time.monotonic()
        session.touch()
        app.nursery.start_soon(watchdog, session)
        host = request.headers.get("Host", "127.0.0.1")
        scheme = "wss" if request.scheme in ("https", "wss") else "ws"
        return _envelope({
            "session_id": session.session_id,
            "livekit_url": SIMULATED_LIVEKIT_URL,
            "livekit_client_token": f"sim-client.{secrets.token_urlsafe(16)}",
            "livekit_agent_token": f"sim-agent.{secrets.token_urlsafe(16)}",
            "max_session_duration": session.max_session_duration,
            "ws_url": f"{scheme}://{host}/v1/ws/{session.session_id}?token={session.ws_token}",
        }, status=201)

    @app.post("/v1/sessions/stop")
    async def stop_session() -> Response:
        forced = await prelude("stop")
        if forced is not None:
            return forced
        body = await body_json()
        if body is None:
            return _validation_error([(["body"], "Input should be a valid dictionary", "dict_type")])
        reason = body.get("reason", "UNKNOWN")
        if reason not in STOP_REASONS:
            return _validation_error([(["body", "reason"], "Input should be a valid stop reason", "enum")])
        found = session_for_key_or_bearer("stop", body)
        if isinstance(found, Response):
            return found
        found.stop_calls += 1
        if found.stop_reason is None:
            found.stop_reason = reason
        if found.active:
            found.end(reason, expired=False)
        return _envelope(None)

    @app.post("/v1/sessions/keep-alive")
    async def keep_alive() -> Response:
        forced = await prelude("keep_alive")
        if forced is not None:
            return forced
        body = await body_json()
        if body is None:
            return _validation_error([(["body"], "Input should be a valid dictionary", "dict_type")])
        found = session_for_key_or_bearer("keep_alive", body)
        if isinstance(found, Response):
            return found
        if not found.active:
            return refuse("keep_alive", _failure(400, 4000, "Session is not active"), 4000)
        found.rest_keep_alives += 1
        found.touch()
        return _envelope(None)

    @app.get("/v1/sessions")
    async def list_sessions() -> Response:
        forced = await prelude("list_sessions")
        if forced is not None:
            return forced
        problem = api_key_problem("list_sessions")
        if problem is not None:
            return problem
        kind = request.args.get("type", "active")
        if kind not in ("active", "historic"):
            return _validation_error([(["query", "type"], "Input should be 'active' or 'historic'", "enum")])
        try:
            page = max(1, int(request.args.get("page", "1")))
            page_size = min(100, max(1, int(request.args.get("page_size", "20"))))
        except ValueError:
            return _validation_error([(["query", "page"], "Input should be a valid integer", "int_parsing")])
        chosen = [s for s in state.sessions.values() if s.active == (kind == "active")]
        chosen.sort(key=lambda s: s.created, reverse=True)
        start = (page - 1) * page_size
        results = [s.to_api() for s in chosen[start:start + page_size]]
        base = f"/v1/sessions?type={kind}&page_size={page_size}&page="
        return _envelope({
            "count": len(chosen),
            "next": base + str(page + 1) if start + page_size < len(chosen) else None,
            "previous": base + str(page - 1) if page > 1 else None,
            "results": results,
        })

    def avatar_page() -> dict[str, Any]:
        return {"count": len(AVATARS), "next": None, "previous": None,
                "results": [{k: v for k, v in a.items() if k != "is_sandbox"} for a in AVATARS]}

    @app.get("/v1/avatars", endpoint="list_avatars")
    @app.get("/v1/avatars/public", endpoint="list_public_avatars")
    async def list_avatars() -> Response:
        forced = await prelude("avatars")
        if forced is not None:
            return forced
        problem = api_key_problem("avatars")
        return problem if problem is not None else _envelope(avatar_page())

    @app.get("/v1/avatars/<avatar_id>")
    async def get_avatar(avatar_id: str) -> Response:
        forced = await prelude("avatars")
        if forced is not None:
            return forced
        problem = api_key_problem("avatars")
        if problem is not None:
            return problem
        for avatar in AVATARS:
            if avatar["id"] == avatar_id:
                return _envelope({k: v for k, v in avatar.items() if k != "is_sandbox"})
        return _failure(404, 4004, "Avatar not found")

    # ------------------------------------------------------------------------------------------------------------------
    # The LITE websocket

    @app.websocket("/v1/ws/<session_id>")
    async def lite_socket(session_id: str) -> None:
        state.requests["ws_connect"] = state.requests.get("ws_connect", 0) + 1
        latency = state.faults["latency_ms"].get("ws_connect")
        if latency:
            await trio.sleep(latency / 1000)
        fail = state.faults["fail"].get("ws_connect")
        if fail and (fail.get("times") is None or fail["times"] > 0):
            if fail.get("times") is not None:
                fail["times"] -= 1
            abort(int(fail.get("status", 500)))
        session = state.sessions.get(session_id)
        token = websocket.args.get("token")
        if session is None or token is None or not secrets.compare_digest(token, session.ws_token):
            abort(401)
        if not session.active or session.started is None:
            abort(410)
        await websocket.accept()
        session.ws_connects += 1
        session.touch()
        sock = LiteSocketSimulator(
            session.lite, on_activity=session.touch,
            suppress_connected=bool(state.faults["suppress_connected"]),
            connected_delay=float(state.faults["connected_delay_ms"] or 0) / 1000,
            withhold_connected=bool(state.faults["withhold_connected"]),
        )
        session.sockets.add(sock)
        close_after = state.faults["close_ws_after_ms"]
        try:
            async with trio.open_nursery() as nursery:
                if close_after is not None:
                    nursery.start_soon(_close_later, sock, float(close_after) / 1000)
                code = await sock.run(websocket.receive, websocket.send)
                nursery.cancel_scope.cancel()
            if not session.active:
                for closing in ("closing", "closed"):
                    await websocket.send(_dumps({"type": "session.state_updated", "state": closing}))
            await websocket.close(code)
        finally:
            session.sockets.discard(sock)

    async def _close_later(sock: LiteSocketSimulator, delay: float) -> None:
        await trio.sleep(delay)
        sock.close(1000)

    # ------------------------------------------------------------------------------------------------------------------
    # Control

    @app.get("/_sim/ledger")
    async def ledger() -> Response:
        return _json({
            "sessions": {sid: s.to_ledger() for sid, s in state.sessions.items()},
            "requests": dict(state.requests),
            "refusals": list(state.refusals),
            "active": state.active_count(),
        }, 200)

    @app.get("/_sim/audio/<session_id>/<event_id>")
    async def recorded_audio(session_id: str, event_id: str) -> Response:
        session = state.sessions.get(session_id)
        if session is None or event_id not in session.lite.audio:
            return _json({"error": "no recorded audio"}, 404)
        return Response(bytes(session.lite.audio[event_id]), status=200,
                        content_type="application/octet-stream")

    @app.post("/_sim/faults")
    async def faults() -> Response:
        update = await body_json()
        if update is None:
            return _json({"error": "faults must be a JSON object"}, 400)
        state.merge_faults(update)
        return _json(state.faults, 200)

    @app.post("/_sim/connect")
    async def release_connected() -> Response:
        released = 0
        for session in state.sessions.values():
            for sock in session.sockets:
                sock.release()
                released += 1
        return _json({"released": released}, 200)

    @app.post("/_sim/reset")
    async def reset() -> Response:
        state.reset()
        return _json({"ok": True}, 200)

    return app
