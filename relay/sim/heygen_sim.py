"""Simulator of HeyGen's Interactive Avatar Streaming API v1 (`reference/heygen-streaming-v1.md`).

An ASGI app (`create_app()`) with every endpoint of the reference: `streaming.new` / `.start` / `.task` /
`.interrupt` / `.keep_alive` / `.stop` / `.create_token` / `.start_listening` / `.stop_listening`,
`GET /v1/streaming.list`, `GET /v2/streaming.list` (paginated), `GET /v1/streaming/avatar.list`, and the
`realtime_endpoint` websocket (`/v1/realtime/<session_id>?token=...`, the LiveAvatar LITE protocol: base64
PCM16 24 kHz `agent.speak`, `agent.speak_end`, `agent.interrupt`, `session.keep_alive`). Sessions go
new -> connecting -> connected -> closed; each has an idle timer (`activity_idle_timeout`, default 120 s) that
tasks, keep-alives and realtime traffic reset; expiry closes the session and the ledger marks it EXPIRED (a
leak, for the tests). Sessions live in memory per app instance; the LiveKit room is fake
(`wss://livekit.simulated.invalid`).

It must never import from `relay` (a protocol bug must not hide in both sides), never log per request or per
audio frame, and never keep audio: the ledger holds counts and timestamps (`time.monotonic()`), not payloads.

Control endpoints:
- `GET /_sim/ledger`: `sessions` (by id: status, timestamps `created_at` / `started_at` / `connected_at` /
  `stopped_at` / `expired_at`, the `streaming.new` parameters, `tasks` [{text, task_type, task_mode,
  received_at, task_id, duration_ms}], `interrupts` and `keep_alives` {count, at} (REST), `stop_requests`,
  and `realtime`: `relay.sim.lite_socket.LiteLedger.to_json()` (audio_seconds at 24 kHz, chunks, events
  by event_id, interrupts, chunks_after_interrupt, keep_alives, speak_ends, errors_sent, ...) plus
  `connections`), `totals` {created, started, stopped, expired, open}, `requests` (count per endpoint name).
- `POST /_sim/reset`: forget every session, token, count and fault.
- `POST /_sim/faults`: JSON merged into the current faults (a dict value is merged one level down; `null`
  deletes a key or an entry). Endpoint names: `streaming.new`, `streaming.start`, `streaming.task`,
  `streaming.interrupt`, `streaming.keep_alive`, `streaming.stop`, `streaming.create_token`,
  `streaming.start_listening`, `streaming.stop_listening`, `streaming.list`, `v2/streaming.list`,
  `avatar.list`, `realtime`.
  - `latency_ms` {endpoint: ms}: delay before the effect, except for `streaming.new`, which creates the session
    first and then delays the answer (a client that gives up meanwhile has leaked a session, as with HeyGen).
    For `realtime`, the delay before the socket is accepted.
  - `fail` {endpoint: {status (default 500), code, message, retry_after (seconds, sent as Retry-After),
    times (answer this many calls so, then succeed; omitted or null: every call)}}: answered before anything
    else (before auth), with no effect.
  - `hang` [endpoint, ...]: the request is swallowed: never answered, no effect.
  - `invalid_keys` [key, ...] or "*": those API keys get 401 `{"code":40102,...}` (a missing key always does).
  - `concurrency_limit` int (default 100): open sessions per API key; beyond it `10007 concurrent limit
    reached`.
  - `idle_timeout_s` float: overrides every session's `activity_idle_timeout` (also for sessions already open).
  - `unknown_session_code` 400004 (default, "Session does not exist. SessionID: <id>") or 10006.
  - `unknown_avatars` [avatar_id, ...]: `streaming.new` answers 10012 "avatar not found" for those.
  - `ms_per_char` int (default 65): how `duration_ms` of a task is estimated from its text.
  - `retired` true (404) or a status (404, 410): every `streaming.*` call (and `streaming/avatar.list`) answers
    that status, as an API that
    HeyGen has switched off would (Streaming v1 was retired on 2026-03-31; what it answers now is unverified).
  - `not_streaming_enabled` true: `streaming.new` answers HTTP 401 with code 400112 (the avatar or voice is not
    enabled for streaming; HeyGen-Official/StreamingAvatarSDK#3).
  - `no_api_access` true: every call answers code 400599 "Your account doesn't have API access" (HTTP 403 here;
    the real status is unverified).
  - `withhold_connected` true: new realtime sockets stay `connecting` (commands dropped and counted) until
    `POST /_sim/connect`; never asking is a socket that never connects.
- `POST /_sim/connect`: send the withheld `session.state_updated: connected` on every open realtime socket.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio
from quart import Response, abort, request, websocket
from quart_trio import QuartTrio

from relay.net.http_keepalive import KeepAliveGuard
from relay.sim.faults import take_forced_failure

# HeyGen's realtime endpoint speaks LiveAvatar's LITE protocol: the simulators share its server side, not the relay's.
from relay.sim.lite_socket import LiteLedger, LiteSocketSimulator

OPEN_STATES = ("new", "connecting", "connected")
STATE_CODES = {"new": 10001, "connecting": 10002, "connected": 10003, "closing": 10004, "closed": 10005}
SIMULATED_LIVEKIT_URL = "wss://livekit.simulated.invalid"
DEFAULT_IDLE_TIMEOUT = 120
DEFAULT_CONCURRENCY_LIMIT = 100
AVATARS = (
    {"avatar_id": "Wayne_20240711", "created_at": 1720656000, "default_voice": "en-US-GuyNeural",
     "is_public": True, "normal_preview": "https://example.invalid/wayne.webp", "pose_name": "Wayne",
     "status": "ACTIVE"},
    {"avatar_id": "Ann_Therapist_public", "created_at": 1727740800, "default_voice": "en-US-JennyNeural",
     "is_public": True, "normal_preview": "https://example.invalid/ann.webp", "pose_name": "Ann Therapist",
     "status": "ACTIVE"},
)
DEFAULT_AVATAR = AVATARS[0]["avatar_id"]


@dataclass(slots=True)
class _Session:
    session_id: str
    api_key: str
    params: dict[str, Any]
    idle_timeout: float
    realtime_token: str
    created_at: float
    last_activity: float
    status: str = "new"
    created_wall: float = field(default_factory=time.time)
    started_at: float | None = None
    connected_at: float | None = None
    stopped_at: float | None = None
    expired_at: float | None = None
    stop_requests: int = 0
    tasks: list[dict[str, Any]] = field(default_factory=list)
    interrupts: list[float] = field(default_factory=list)
    keep_alives: list[float] = field(default_factory=list)
    realtime: LiteLedger = field(default_factory=LiteLedger)
    realtime_connections: int = 0
    closed: trio.Event = field(default_factory=trio.Event)

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id, "status": "expired" if self.expired_at is not None else self.status,
            "api_key_type": "api", **self.params, "activity_idle_timeout": self.idle_timeout,
            "created_at": self.created_at, "started_at": self.started_at, "connected_at": self.connected_at,
            "stopped_at": self.stopped_at, "expired_at": self.expired_at, "stop_requests": self.stop_requests,
            "tasks": self.tasks, "interrupts": {"count": len(self.interrupts), "at": self.interrupts},
            "keep_alives": {"count": len(self.keep_alives), "at": self.keep_alives},
            "realtime": {**self.realtime.to_json(), "connections": self.realtime_connections},
        }


class _Answer(Exception):
    """Raised inside a handler to answer at once with `status` and a JSON `payload`."""

    def __init__(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.payload = payload
        self.headers = headers or {}


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status=status, headers=headers, mimetype="application/json")


def _ok(data: Any) -> dict[str, Any]:
    return {"code": 100, "message": "success", "data": data}


def _error(code: int, message: str, status: int = 400) -> _Answer:
    return _Answer(status, {"code": code, "message": message})


class _State:
    """Everything one simulator instance knows. Handlers are methods; nothing here blocks but explicit sleeps."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sessions: dict[str, _Session] = {}
        self.open_ids: set[str] = set()
        self.tokens: set[str] = set()
        self.requests: dict[str, int] = {}
        self.faults: dict[str, Any] = {}
        self.totals = {"created": 0, "started": 0, "stopped": 0, "expired": 0}
        self.sockets: set[LiteSocketSimulator] = set()  # open realtime sockets

    # ------------------------------------------------------------------------------------------------------------------
    # Faults

    def merge_faults(self, update: dict[str, Any]) -> None:
        for key, value in update.items():
            if value is None:
                self.faults.pop(key, None)
            elif isinstance(value, dict) and isinstance(self.faults.get(key), dict):
                merged = dict(self.faults[key])
                for inner_key, inner in value.items():
                    if inner is None:
                        merged.pop(inner_key, None)
                    else:
                        merged[inner_key] = inner
                self.faults[key] = merged
            else:
                self.faults[key] = value

    def latency(self, endpoint: str) -> float:
        return float(self.faults.get("latency_ms", {}).get(endpoint, 0)) / 1000

    def forced_failure(self, endpoint: str) -> _Answer | None:
        fail = take_forced_failure(self.faults.get("fail", {}), endpoint)
        if fail is None:
            return None
        headers = {}
        if fail.get("retry_after") is not None:
            headers["Retry-After"] = str(fail["retry_after"])
        payload = {"code": fail.get("code", 500), "message": fail.get("message", "internal error")}
        return _Answer(int(fail.get("status", 500)), payload, headers)

    # ------------------------------------------------------------------------------------------------------------------
    # Sessions

    def idle_timeout_of(self, session: _Session) -> float:
        override = self.faults.get("idle_timeout_s")
        return float(override) if override is not None else session.idle_timeout

    def deadline_of(self, session: _Session) -> float:
        return session.last_activity + self.idle_timeout_of(session)

    def expire_if_due(self, session: _Session, now: float) -> None:
        if session.status in OPEN_STATES and now >= self.deadline_of(session):
            self.close(session, expired_at=self.deadline_of(session))

    def sweep(self) -> None:
        now = time.monotonic()
        for sid in list(self.open_ids):
            self.expire_if_due(self.sessions[sid], now)

    def close(self, session: _Session, *, expired_at: float | None = None) -> None:
        session.status = "closed"
        self.open_ids.discard(session.session_id)
        if expired_at is not None:
            session.expired_at = expired_at
            self.totals["expired"] += 1
        else:
            session.stopped_at = time.monotonic()
            self.totals["stopped"] += 1
        session.closed.set()

    def touch(self, session: _Session) -> None:
        session.last_activity = time.monotonic()

    def find(self, body: dict[str, Any]) -> _Session:
        """The session named in the body, after expiring it if its idle time is up; 400 if unknown."""
        sid = body.get("session_id")
        session = self.sessions.get(sid) if isinstance(sid, str) else None
        if session is None:
            if int(self.faults.get("unknown_session_code", 400004)) == 10006:
                raise _error(10006, "Session not found")
            raise _error(400004, f"Session does not exist. SessionID: {sid}")
        self.expire_if_due(session, time.monotonic())
        return session

    def require_state(self, session: _Session, *allowed: str) -> None:
        if session.status not in allowed:
            raise _error(STATE_CODES[session.status], f"session state wrong: {session.status}")

    def open_count(self, api_key: str) -> int:
        self.sweep()
        return sum(1 for sid in self.open_ids if self.sessions[sid].api_key == api_key)

    def ledger(self) -> dict[str, Any]:
        self.sweep()
        return {"sessions": {sid: s.to_json() for sid, s in self.sessions.items()},
                "totals": {**self.totals, "open": len(self.open_ids)}, "requests": self.requests,
                "tokens_issued": len(self.tokens)}


def create_app(*, start_faults: dict[str, Any] | None = None) -> QuartTrio:
    """A fresh simulator (its own sessions, ledger and faults); `start_faults` are merged in at start (`avatar-relay sim
    --faults heygen=JSON`; `/_sim/reset` forgets them)."""
    app = QuartTrio(__name__)
    app.asgi_app = KeepAliveGuard(app.asgi_app)  # type: ignore[method-assign]  # never lose a kept-alive request
    state = _State()
    if start_faults:
        state.merge_faults(start_faults)

    def authenticate() -> str:
        key = request.headers.get("x-api-key")
        if not key:
            auth = request.headers.get("authorization", "")
            token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
            if token and token in state.tokens:
                return "token:" + token
            raise _error(40102, "Unauthorized", 401)
        invalid = state.faults.get("invalid_keys", ())
        if invalid == "*" or key in invalid:
            raise _error(40102, "Unauthorized", 401)
        return key

    async def json_body() -> dict[str, Any]:
        if request.mimetype != "application/json":
            raise _Answer(415, {"detail": f"Unsupported media type '{request.content_type or ''}' in request. "
                                          "'application/json' is required."})
        raw = await request.get_data()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            raise _error(400, "invalid JSON body") from None
        if not isinstance(body, dict):
            raise _error(400, "the body must be a JSON object")
        return body

    def account_refusal(endpoint: str) -> _Answer | None:
        """What a retired API or an account without streaming answers (the `retired`, `no_api_access` and
        `not_streaming_enabled` faults)."""
        retired = state.faults.get("retired")
        if retired and endpoint.startswith(("streaming.", "v2/streaming.", "avatar.list")):
            status = int(retired) if not isinstance(retired, bool) else 404
            return _Answer(status, {"code": status, "message": "Not Found" if status == 404 else "Gone"})
        if state.faults.get("no_api_access"):
            return _error(400599, "Your account doesn't have API access", 403)
        if state.faults.get("not_streaming_enabled") and endpoint == "streaming.new":
            return _error(400112, "This avatar or voice is not allowed for streaming", 401)
        return None

    async def handle(endpoint: str, effect: Any, *, post: bool = True) -> Response:
        """The common path: count, hang, forced failure, auth, body, latency, effect."""
        state.requests[endpoint] = state.requests.get(endpoint, 0) + 1
        if endpoint in state.faults.get("hang", ()):
            await trio.sleep_forever()
        try:
            forced = state.forced_failure(endpoint)
            if forced is not None:
                raise forced
            account = account_refusal(endpoint)
            if account is not None:
                raise account
            api_key = authenticate()
            body = await json_body() if post else {}
            payload = await effect(api_key, body)
        except _Answer as answer:
            return _json(answer.status, answer.payload, answer.headers)
        return _json(200, payload)

    async def delay(endpoint: str) -> None:
        seconds = state.latency(endpoint)
        if seconds > 0:
            await trio.sleep(seconds)

    # ------------------------------------------------------------------------------------------------------------------
    # Streaming endpoints

    async def new(api_key: str, body: dict[str, Any]) -> dict[str, Any]:
        quality = body.get("quality", "medium")
        if quality not in ("low", "medium", "high"):
            raise _error(400, f"invalid quality: {quality}")
        encoding = body.get("video_encoding", "VP8")
        if encoding not in ("H264", "VP8"):
            raise _error(400, f"invalid video_encoding: {encoding}")
        if body.get("version") != "v2":
            raise _error(400, "version v1 (raw WebRTC) is no longer supported; send version v2")
        idle = body.get("activity_idle_timeout", DEFAULT_IDLE_TIMEOUT)
        if not isinstance(idle, int | float) or isinstance(idle, bool) or not 30 <= idle <= 3600:
            raise _error(400, "activity_idle_timeout must be between 30 and 3600")
        avatar = body.get("avatar_id") or body.get("avatar_name") or DEFAULT_AVATAR
        if avatar in state.faults.get("unknown_avatars", ()):
            raise _error(10012, f"avatar not found: {avatar}")
        limit = int(state.faults.get("concurrency_limit", DEFAULT_CONCURRENCY_LIMIT))
        if state.open_count(api_key) >= limit:
            raise _error(10007, "concurrent limit reached")
        voice = body.get("voice")
        voice_id = voice.get("voice_id") if isinstance(voice, dict) else None
        now = time.monotonic()
        session = _Session(
            session_id=secrets.token_hex(16), api_key=api_key, idle_timeout=float(idle),
            realtime_token=secrets.token_urlsafe(16), created_at=now, last_activity=now,
            params={"avatar_id": avatar, "quality": quality, "video_encoding": encoding,
                    "version": body["version"], "voice_id": voice_id,
                    "sent_avatar_id": "avatar_id" in body, "sent_avatar_name": "avatar_name" in body},
        )
        state.sessions[session.session_id] = session
        state.open_ids.add(session.session_id)
        state.totals["created"] += 1
        ws_scheme = "wss" if request.scheme == "https" else "ws"
        data = {
            "session_id": session.session_id,
            "url": SIMULATED_LIVEKIT_URL,
            "access_token": "sim-livekit-viewer-" + secrets.token_urlsafe(12),
            "session_duration_limit": 600,
            "is_paid": True,
            "realtime_endpoint": f"{ws_scheme}://{request.host}/v1/realtime/{session.session_id}"
                                 f"?token={session.realtime_token}",
            "livekit_agent_token": "sim-livekit-agent-" + secrets.token_urlsafe(12),
            "sdp": None,
            "ice_servers": None,
            "ice_servers2": None,
        }
        await delay("streaming.new")
        return _ok(data)

    async def start(api_key: str, body: dict[str, Any]) -> dict[str, Any]:
        session = state.find(body)
        state.require_state(session, "new")
        session.status = "connecting"
        session.started_at = time.monotonic()
        state.totals["started"] += 1
        await delay("streaming.start")
        if session.status == "connecting":
            session.status = "connected"
            session.connected_at = time.monotonic()
            state.touch(session)
        return _ok({})

    async def task(api_key: str, body: dict[str, Any]) -> dict[str, Any]:
        await delay("streaming.task")
        session = state.find(body)
        state.require_state(session, "connected")
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _error(400, "text is required")
        task_type = body.get("task_type", "repeat")
        task_mode = body.get("task_mode", "sync")
        if task_type not in ("repeat", "chat", "talk") or task_mode not in ("sync", "async"):
            raise _error(400, "invalid task_type or task_mode")
        duration_ms = len(text) * int(state.faults.get("ms_per_char", 65))
        task_id = secrets.token_hex(8)
        state.touch(session)
        session.tasks.append({"text": text, "task_type": task_type, "task_mode": task_mode,
                              "received_at": time.monotonic(), "task_id": task_id, "duration_ms": duration_ms})
        if task_mode == "sync":
            # A sync task answers once the avatar has spoken it.
            with trio.move_on_after(duration_ms / 1000):
                await session.closed.wait()
        return _ok({"duration_ms": duration_ms, "task_id": task_id})

    async def interrupt(api_key: str, body: dict[str, Any]) -> dict[str, Any]:
        await delay("streaming.interrupt")
        session = state.find(body)
        state.require_state(session, "connected")
        state.touch(session)
        session.interrupts.append(time.monotonic())
        return _ok({})

    async def keep_alive(api_key: str, body: dict[str, Any]) -> dict[str, Any]:
        await delay("streaming.keep_alive")
        session = state.find(body)
        state.require_state(session, *OPEN_STATES)
        state.touch(session)
        session.keep_alives.append(time.monotonic())
        return _ok({})

    async def stop(api_key: str, body: dict[str, Any]) -> dict[str, Any]:
        await delay("streaming.stop")
        session = state.find(body)
        session.stop_requests += 1
        state.require_state(session, *OPEN_STATES)
        state.close(session)
        return _ok({})

    async def listening(api_key: str, body: dict[str, Any]) -> dict[str, Any]:
        session = state.find(body)
        state.require_state(session, "connected")
        state.touch(session)
        return _ok({})

    async def create_token(api_key: str, body: dict[str, Any]) -> dict[str, Any]:
        await delay("streaming.create_token")
        token = secrets.token_urlsafe(24)
        state.tokens.add(token)
        return {"error": None, "data": {"token": token}}

    def listed(session: _Session) -> dict[str, Any]:
        return {"session_id": session.session_id, "status": session.status,
                "created_at": int(session.created_wall), "api_key_type": "api"}

    async def list_v1(api_key: str, body: dict[str, Any]) -> dict[str, Any]:
        await delay("streaming.list")
        state.sweep()
        return _ok({"sessions": [listed(state.sessions[sid]) for sid in sorted(state.open_ids)]})

    async def list_v2(api_key: str, body: dict[str, Any]) -> dict[str, Any]:
        await delay("v2/streaming.list")
        state.sweep()
        try:
            page_size = max(1, min(100, int(request.args.get("page_size", 10))))
            page = max(1, int(request.args.get("page", 1)))
            token = request.args.get("token")
            if token:
                page = int(token.removeprefix("page-"))
        except ValueError:
            raise _error(400, "invalid pagination parameters") from None
        ids = sorted(state.open_ids, key=lambda sid: state.sessions[sid].created_at)
        chunk = ids[(page - 1) * page_size: page * page_size]
        more = page * page_size < len(ids)
        entries = []
        for sid in chunk:
            session = state.sessions[sid]
            entries.append({**listed(session), "duration": int(time.monotonic() - session.created_at),
                            "avatar_id": session.params["avatar_id"], "voice_name": session.params["voice_id"]})
        return _ok({"total": len(ids), "page": page, "page_size": page_size,
                    "next_pagination_token": f"page-{page + 1}" if more else None, "data": entries})

    async def avatar_list(api_key: str, body: dict[str, Any]) -> dict[str, Any]:
        await delay("avatar.list")
        return _ok(list(AVATARS))

    routes = {
        "streaming.new": new, "streaming.start": start, "streaming.task": task,
        "streaming.interrupt": interrupt, "streaming.keep_alive": keep_alive, "streaming.stop": stop,
        "streaming.create_token": create_token, "streaming.start_listening": listening,
        "streaming.stop_listening": listening,
    }

    def add_post(endpoint: str, effect: Any) -> None:
        async def view() -> Response:
            return await handle(endpoint, effect)

        app.add_url_rule(f"/v1/{endpoint}", endpoint.replace(".", "_"), view, methods=["POST"])

    for endpoint, effect in routes.items():
        add_post(endpoint, effect)

    @app.get("/v1/streaming.list")
    async def get_list_v1() -> Response:
        return await handle("streaming.list", list_v1, post=False)

    @app.get("/v2/streaming.list")
    async def get_list_v2() -> Response:
        return await handle("v2/streaming.list", list_v2, post=False)

    @app.get("/v1/streaming/avatar.list")
    async def get_avatar_list() -> Response:
        return await handle("avatar.list", avatar_list, post=False)

    # ------------------------------------------------------------------------------------------------------------------
    # The realtime socket (LITE protocol)

    @app.websocket("/v1/realtime/<session_id>")
    async def realtime(session_id: str) -> None:
        state.requests["realtime"] = state.requests.get("realtime", 0) + 1
        session = state.sessions.get(session_id)
        if session is None or websocket.args.get("token") != session.realtime_token:
            abort(401)
        state.expire_if_due(session, time.monotonic())
        if session.status != "connected":
            abort(409)
        await delay("realtime")
        await websocket.accept()
        session.realtime_connections += 1
        state.touch(session)
        sock = LiteSocketSimulator(session.realtime, on_activity=lambda: state.touch(session),
                                   withhold_connected=bool(state.faults.get("withhold_connected")))
        state.sockets.add(sock)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(close_when_session_ends, session, sock)
                code = await sock.run(websocket.receive, websocket.send)
                nursery.cancel_scope.cancel()
        finally:
            state.sockets.discard(sock)
        if session.status not in OPEN_STATES:
            for closing in ("closing", "closed"):
                await websocket.send(orjson.dumps({"type": "session.state_updated", "state": closing}).decode())
        await websocket.close(code)

    async def close_when_session_ends(session: _Session, sock: LiteSocketSimulator) -> None:
        """End the socket when the session is stopped or its idle time runs out."""
        while session.status in OPEN_STATES and not session.closed.is_set():
            remaining = state.deadline_of(session) - time.monotonic()
            if remaining <= 0:
                state.expire_if_due(session, time.monotonic())
                break
            # Re-check at least every second: a fault may shorten the idle timeout meanwhile.
            with trio.move_on_after(min(remaining, 1.0)):
                await session.closed.wait()
        sock.close(1000)

    # ------------------------------------------------------------------------------------------------------------------
    # Control

    @app.get("/_sim/ledger")
    async def ledger() -> Response:
        return _json(200, state.ledger())

    @app.post("/_sim/faults")
    async def faults() -> Response:
        update = orjson.loads(await request.get_data() or b"{}")
        if not isinstance(update, dict):
            return _json(400, {"error": "faults must be a JSON object"})
        state.merge_faults(update)
        return _json(200, state.faults)

    @app.post("/_sim/connect")
    async def release_connected() -> Response:
        for sock in state.sockets:
            sock.release()
        return _json(200, {"released": len(state.sockets)})

    @app.post("/_sim/reset")
    async def reset() -> Response:
        for session in state.sessions.values():
            session.status = "closed"
            session.closed.set()
        state.reset()
        return _json(200, {"ok": True})

    return app
