"""What every request of the LiveAvatar simulator goes through: counting, injected latency and forced failures
(`prelude`), the API key or the session's bearer token, the JSON body, and the answers' shapes (the
`{code, data, message}` envelope, 422 `detail` lists)."""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
import trio
from quart import Response, request

from relay.sim.faults import take_forced_failure
from relay.sim.liveavatar_sim.sessions import SimSession, SimState


def envelope(data: Any, status: int = 200, message: str = "Success") -> Response:
    return Response(orjson.dumps({"code": 1000, "data": data, "message": message}), status=status,
                    content_type="application/json")


def failure(status: int, code: int, message: str, *, retry_after: float | None = None) -> Response:
    response = Response(orjson.dumps({"code": code, "data": None, "message": message}), status=status,
                        content_type="application/json")
    if retry_after is not None:
        response.headers["Retry-After"] = str(math.ceil(retry_after))
    return response


def json_response(payload: Any, status: int) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type="application/json")


def validation_error(problems: list[tuple[list[Any], str, str]]) -> Response:
    return json_response({"detail": [{"loc": loc, "msg": msg, "type": kind} for loc, msg, kind in problems]}, 422)


class RequestChecks:
    """The checks, over the simulator's `state`; each refusal is recorded in `state.refusals`."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def prelude(self, endpoint: str) -> Response | None:
        """Count the request, apply injected latency and forced failures."""
        self.state.requests[endpoint] = self.state.requests.get(endpoint, 0) + 1
        latency = self.state.faults["latency_ms"].get(endpoint)
        if latency:
            await trio.sleep(latency / 1000)
        fail = take_forced_failure(self.state.faults["fail"], endpoint)
        if fail is None:
            return None
        status = int(fail.get("status", 500))
        self.state.refusals.append({"endpoint": endpoint, "status": status, "code": fail.get("code"),
                               "at": time.monotonic()})
        if "body" in fail:
            response = json_response(fail["body"], status)
            if fail.get("retry_after") is not None:
                response.headers["Retry-After"] = str(math.ceil(fail["retry_after"]))
            return response
        return failure(status, int(fail.get("code", 5000)), str(fail.get("message", "Internal error")),
                        retry_after=fail.get("retry_after"))

    def refuse(self, endpoint: str, response: Response, code: int | None) -> Response:
        self.state.refusals.append({"endpoint": endpoint, "status": response.status_code, "code": code,
                               "at": time.monotonic()})
        return response

    def api_key_problem(self, endpoint: str) -> Response | None:
        key = request.headers.get("X-API-KEY")
        if not key or key in self.state.faults["invalid_keys"]:
            return self.refuse(endpoint, json_response({"error": "bad api key"}, 401), None)
        return None

    def bearer_session(self) -> SimSession | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        session_id = self.state.by_token.get(token.strip())
        return self.state.sessions.get(session_id) if session_id else None

    async def body_json(self) -> dict[str, Any] | None:
        raw = await request.get_data()
        if not raw:
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return body if isinstance(body, dict) else None

    def session_for_key_or_bearer(self, endpoint: str, body: dict[str, Any]) -> SimSession | Response:
        """Bearer session token, or X-API-KEY plus `session_id` in the body."""
        session = self.bearer_session()
        if session is not None:
            wanted = body.get("session_id")
            if wanted is not None and wanted != session.session_id:
                return self.refuse(endpoint, failure(403, 4003, "Session token does not match session_id"), 4003)
            return session
        if request.headers.get("Authorization"):
            return self.refuse(endpoint, json_response({"error": "invalid session token"}, 401), None)
        problem = self.api_key_problem(endpoint)
        if problem is not None:
            return problem
        session_id = body.get("session_id")
        if not isinstance(session_id, str):
            return validation_error([(["body", "session_id"], "Field required", "missing")])
        found = self.state.sessions.get(session_id)
        if found is None:
            return self.refuse(endpoint, failure(404, 4004, "Session not found"), 4004)
        return found
