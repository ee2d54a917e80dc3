"""What every request of the LiveAvatar simulator goes through: counting, injected latency and forced failures
(`prelude`), the API key or the session's bearer token, the JSON body, and the answers' shapes (the
`{code, data, message}` envelope, 422 `detail` lists)."""

from __future__ import annotations

import math
from typing import Any

import orjson
from quart import Response, request

from relay.sim.faults import json_response, validation_error
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


def _forced_answer(fail: dict[str, Any]) -> tuple[Response, dict[str, Any]]:
    """A forced failure's answer (`fail`: status, code, message, retry_after, or a whole `body`) and what the
    refusals record of it."""
    status = int(fail.get("status", 500))
    if "body" in fail:
        response = json_response(fail["body"], status)
        if fail.get("retry_after") is not None:
            response.headers["Retry-After"] = str(math.ceil(fail["retry_after"]))
    else:
        response = failure(status, int(fail.get("code", 5000)), str(fail.get("message", "Internal error")),
                           retry_after=fail.get("retry_after"))
    return response, {"code": fail.get("code")}


class RequestChecks:
    """The checks, over the simulator's `state`; each refusal is recorded in `state.refusals`."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def prelude(self, endpoint: str) -> Response | None:
        """Count the request, apply injected latency and forced failures."""
        return await self.state.gate(endpoint, _forced_answer)

    async def gate(self, endpoint: str) -> Response | None:
        """`prelude`, then the API key (`api_key_problem`). None: go on."""
        return await self.state.gate(endpoint, _forced_answer, self.api_key_problem)

    def refuse(self, endpoint: str, response: Response, code: int | None) -> Response:
        return self.state.refuse(endpoint, response, code=code)

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
