"""The LiveAvatar REST API: `sessions/token` (with the schema's validation), `sessions/start` (and the session's
watchdog: idle timeout, maximum duration), `sessions/stop`, `sessions/keep-alive`, `GET /v1/sessions`, and the avatar
catalogue."""

from __future__ import annotations

import math
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from relay.sim.faults import json_response, validation_error
from relay.sim.liveavatar_sim.checks import RequestChecks, envelope, failure
from relay.sim.liveavatar_sim.sessions import (
    AVATARS,
    ENCODINGS,
    QUALITIES,
    SANDBOX_AVATAR_ID,
    SIMULATED_LIVEKIT_URL,
    STOP_REASONS,
    SimSession,
    is_uuid,
)


def add_session_routes(app: QuartTrio, checks: RequestChecks) -> None:
    """`/v1/sessions/...` on `app`: token, start, stop, keep-alive, and the list."""
    state = checks.state
    prelude, gate, refuse = checks.prelude, checks.gate, checks.refuse
    bearer_session, body_json, session_for_key_or_bearer = (checks.bearer_session, checks.body_json,
                                                            checks.session_for_key_or_bearer)

    def session_length(session: SimSession) -> float:
        """How long a started session may run: what the token asked, at most the sandbox's minute."""
        if session.is_sandbox:
            return min(float(session.max_session_duration), float(state.faults["sandbox_duration_s"]))
        return float(session.max_session_duration)

    async def watchdog(session: SimSession) -> None:
        """Expire a started session on idle timeout or when its duration is used up."""
        scope = trio.CancelScope()
        session.watchdog = scope
        with scope:
            assert session.started is not None
            length = session_length(session)
            unreported = state.faults["unreported_max_duration_s"]
            if unreported is not None:  # a limit the start answer does not say
                length = min(length, float(unreported))
            ends_at = session.started + length
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

    @app.post("/v1/sessions/token")
    async def create_token() -> Response:
        refused = await gate("token")
        if refused is not None:
            return refused
        body = await body_json()
        if body is None:
            return validation_error([(["body"], "Input should be a valid dictionary", "dict_type")])
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
        elif not is_uuid(avatar_id):
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
            return refuse("token", validation_error(problems), 422)
        if is_sandbox and avatar_id != SANDBOX_AVATAR_ID:
            return refuse("token", failure(400, 4000, "Sandbox mode only supports the sandbox avatar"), 4000)
        if state.faults["no_credits"] and not is_sandbox:
            return refuse("token", failure(403, 4033, "Insufficient credits"), 4033)
        limit = state.faults["concurrency_limit"]
        if limit is not None and state.active_count() >= int(limit):
            return refuse("token", failure(429, 4029, "Concurrent session limit reached"), 4029)
        session = SimSession(
            session_id=str(uuid.uuid4()), session_token=secrets.token_urlsafe(24),
            ws_token=secrets.token_urlsafe(24), avatar_id=str(avatar_id), is_sandbox=is_sandbox, mode=str(mode),
            max_session_duration=duration, created=time.monotonic(), created_at=datetime.now(UTC),
        )
        session.lite.record_audio = bool(state.faults["record_audio"])
        session.touch()
        state.sessions[session.session_id] = session
        state.by_token[session.session_token] = session.session_id
        return envelope({"session_id": session.session_id, "session_token": session.session_token})

    @app.post("/v1/sessions/start")
    async def start_session() -> Response:
        forced = await prelude("start")
        if forced is not None:
            return forced
        session = bearer_session()
        if session is None:
            return refuse("start", json_response({"error": "invalid session token"}, 401), None)
        if not session.active:
            return refuse("start", failure(400, 4000, "Session start failed: session has ended"), 4000)
        if session.started is not None:
            return refuse("start", failure(400, 4000, "Session start failed: already started"), 4000)
        session.started = time.monotonic()
        session.touch()
        app.nursery.start_soon(watchdog, session)
        host = request.headers.get("Host", "127.0.0.1")
        scheme = "wss" if request.scheme in ("https", "wss") else "ws"
        return envelope({
            "session_id": session.session_id,
            "livekit_url": state.faults["livekit_url"] or SIMULATED_LIVEKIT_URL,
            "livekit_client_token": f"sim-client.{secrets.token_urlsafe(16)}",
            "livekit_agent_token": f"sim-agent.{secrets.token_urlsafe(16)}",
            "max_session_duration": max(1, math.floor(session_length(session))),  # what applies (sandbox: its)
            "ws_url": f"{scheme}://{host}/v1/ws/{session.session_id}?token={session.ws_token}",
        }, status=201)

    @app.post("/v1/sessions/stop")
    async def stop_session() -> Response:
        forced = await prelude("stop")
        if forced is not None:
            return forced
        body = await body_json()
        if body is None:
            return validation_error([(["body"], "Input should be a valid dictionary", "dict_type")])
        reason = body.get("reason", "UNKNOWN")
        if reason not in STOP_REASONS:
            return validation_error([(["body", "reason"], "Input should be a valid stop reason", "enum")])
        found = session_for_key_or_bearer("stop", body)
        if isinstance(found, Response):
            return found
        found.stop_calls += 1
        if found.stop_reason is None:
            found.stop_reason = reason
        if found.active:
            found.end(reason, expired=False)
        return envelope(None)

    @app.post("/v1/sessions/keep-alive")
    async def keep_alive() -> Response:
        forced = await prelude("keep_alive")
        if forced is not None:
            return forced
        body = await body_json()
        if body is None:
            return validation_error([(["body"], "Input should be a valid dictionary", "dict_type")])
        found = session_for_key_or_bearer("keep_alive", body)
        if isinstance(found, Response):
            return found
        if not found.active:
            return refuse("keep_alive", failure(400, 4000, "Session is not active"), 4000)
        found.rest_keep_alives += 1
        found.touch()
        return envelope(None)

    @app.get("/v1/sessions")
    async def list_sessions() -> Response:
        refused = await gate("list_sessions")
        if refused is not None:
            return refused
        # As the reference's OpenAPI (`list_sessions_v1_sessions_get`) has it: `type` required, `page` >= 1,
        # 1 <= `page_size` <= 100 (default 20); anything else is FastAPI's 422.
        kind = request.args.get("type")
        if kind is None:
            return validation_error([(["query", "type"], "Field required", "missing")])
        if kind not in ("active", "historic"):
            return validation_error([(["query", "type"], "Input should be 'active' or 'historic'", "enum")])
        bounds = {"page": (1, None, "1"), "page_size": (1, 100, "20")}
        numbers: dict[str, int] = {}
        for name, (least, most, default) in bounds.items():
            try:
                numbers[name] = int(request.args.get(name, default))
            except ValueError:
                return validation_error([(["query", name], "Input should be a valid integer", "int_parsing")])
            if numbers[name] < least:
                return validation_error([(["query", name], f"Input should be greater than or equal to {least}",
                                          "greater_than_equal")])
            if most is not None and numbers[name] > most:
                return validation_error([(["query", name], f"Input should be less than or equal to {most}",
                                          "less_than_equal")])
        page, page_size = numbers["page"], numbers["page_size"]
        chosen = [s for s in state.sessions.values() if s.active == (kind == "active")]
        chosen.sort(key=lambda s: s.created, reverse=True)
        start = (page - 1) * page_size
        results = [s.to_api() for s in chosen[start:start + page_size]]
        base = f"/v1/sessions?type={kind}&page_size={page_size}&page="
        return envelope({
            "count": len(chosen),
            "next": base + str(page + 1) if start + page_size < len(chosen) else None,
            "previous": base + str(page - 1) if page > 1 else None,
            "results": results,
        })


def add_avatar_routes(app: QuartTrio, checks: RequestChecks) -> None:
    """`/v1/avatars`, `/v1/avatars/public` and `/v1/avatars/<id>` on `app`."""
    gate = checks.gate

    def avatar_page() -> dict[str, Any]:
        return {"count": len(AVATARS), "next": None, "previous": None,
                "results": [{k: v for k, v in a.items() if k != "is_sandbox"} for a in AVATARS]}

    @app.get("/v1/avatars", endpoint="list_avatars")
    @app.get("/v1/avatars/public", endpoint="list_public_avatars")
    async def list_avatars() -> Response:
        refused = await gate("avatars")
        return refused if refused is not None else envelope(avatar_page())

    @app.get("/v1/avatars/<avatar_id>")
    async def get_avatar(avatar_id: str) -> Response:
        refused = await gate("avatars")
        if refused is not None:
            return refused
        for avatar in AVATARS:
            if avatar["id"] == avatar_id:
                return envelope({k: v for k, v in avatar.items() if k != "is_sandbox"})
        return failure(404, 4004, "Avatar not found")
