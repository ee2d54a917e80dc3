"""The LiveAvatar simulator's app: the REST routes (`rest`), the LITE websocket route (`relay.sim.lite_socket` behind
it) and the control endpoints (`/_sim/...`: ledger, recorded audio, faults, connect, reset)."""

from __future__ import annotations

import secrets
from typing import Any

import trio
from quart import Response, abort, websocket
from quart_trio import QuartTrio

from relay.sim.faults import json_response, simulator_app, take_forced_failure
from relay.sim.lite_socket import LiteSocketSimulator, dumps
from relay.sim.liveavatar_sim.checks import RequestChecks
from relay.sim.liveavatar_sim.rest import add_avatar_routes, add_session_routes
from relay.sim.liveavatar_sim.sessions import SimState


def create_app(*, start_faults: dict[str, Any] | None = None) -> QuartTrio:
    """The LiveAvatar simulator as an ASGI app (see the package docstring for endpoints and faults); `start_faults` are
    merged into the defaults at start (`avatar-relay sim --faults liveavatar=JSON`; `/_sim/reset` forgets them)."""
    state = SimState()
    app = simulator_app(__name__, state, start_faults)
    checks = RequestChecks(state)
    add_session_routes(app, checks)
    add_avatar_routes(app, checks)
    add_lite_socket_route(app, state)
    add_control_routes(app, checks)
    return app


def add_lite_socket_route(app: QuartTrio, state: SimState) -> None:
    """`/v1/ws/<session_id>`: a started session's LITE socket (its `ws_url`)."""

    @app.websocket("/v1/ws/<session_id>")
    async def lite_socket(session_id: str) -> None:
        state.count("ws_connect")
        latency = state.faults["latency_ms"].get("ws_connect")
        if latency:
            await trio.sleep(latency / 1000)
        fail = take_forced_failure(state.faults["fail"], "ws_connect")
        if fail is not None:
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
            render_delay=float(state.faults["render_delay_ms"] or 0) / 1000,
            after_commit=str(state.faults["after_commit"]),
            drop_after_audio_bytes=lambda: state.faults["drop_ws_after_audio_bytes"],
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
                    await websocket.send(dumps({"type": "session.state_updated", "state": closing}))
            await websocket.close(code)
        finally:
            session.sockets.discard(sock)

    async def _close_later(sock: LiteSocketSimulator, delay: float) -> None:
        await trio.sleep(delay)
        sock.close(1000)


def add_control_routes(app: QuartTrio, checks: RequestChecks) -> None:
    """`/_sim/ledger`, `/_sim/audio/...`, `/_sim/faults`, `/_sim/connect`, `/_sim/reset`."""
    state, body_json = checks.state, checks.body_json

    @app.get("/_sim/ledger")
    async def ledger() -> Response:
        return json_response({
            "sessions": {sid: s.to_ledger() for sid, s in state.sessions.items()},
            "requests": dict(state.requests),
            "refusals": list(state.refusals),
            "active": state.active_count(),
        }, 200)

    @app.get("/_sim/audio/<session_id>/<event_id>")
    async def recorded_audio(session_id: str, event_id: str) -> Response:
        session = state.sessions.get(session_id)
        if session is None or event_id not in session.lite.audio:
            return json_response({"error": "no recorded audio"}, 404)
        return Response(bytes(session.lite.audio[event_id]), status=200,
                        content_type="application/octet-stream")

    @app.post("/_sim/faults")
    async def faults() -> Response:
        return state.faults_update(await body_json())

    @app.post("/_sim/connect")
    async def release_connected() -> Response:
        released = 0
        for session in state.sessions.values():
            for sock in session.sockets:
                sock.release()
                released += 1
        return json_response({"released": released}, 200)

    @app.post("/_sim/reset")
    async def reset() -> Response:
        state.reset()
        return json_response({"ok": True}, 200)
