"""What the avatar simulators share (LiveAvatar's, Simli's): their faults and how `POST /_sim/faults` merges them,
the requests counted by endpoint, the refusals recorded, the sessions by id and by token (`SimLedger`), the gate
every API request passes first (counted, injected latency, a forced failure, the API key: `SimLedger.gate`), and the
FastAPI-shaped answers both real APIs give (`json_response`, `validation_error`).

Like every simulator it imports nothing from the relay's own logic (only its HTTP keep-alive guard). Blocks only
in `gate`, for the injected latency (cancelled with the request).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import orjson
import trio
from quart import Response
from quart_trio import QuartTrio

from relay.net.http_keepalive import KeepAliveGuard

S = TypeVar("S")

# One field's validation problem: (its location, e.g. ["body", "faceId"], the message, the error type).
Problem = tuple[list[Any], str, str]


def json_response(payload: Any, status: int) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type="application/json")


def validation_error(problems: list[Problem]) -> Response:
    """422 with FastAPI's `detail` list, as both real APIs answer a body their schema refuses."""
    return json_response({"detail": [{"loc": loc, "msg": msg, "type": kind} for loc, msg, kind in problems]}, 422)


def take_forced_failure(failures: dict[str, Any], endpoint: str) -> dict[str, Any] | None:
    """The forced failure configured for `endpoint` (`{"status", "code", "message", "retry_after", "times"}`), or
    None when this request should succeed. A failure with `times` fails that many requests, counting down."""
    fail = failures.get(endpoint)
    if not fail:
        return None
    times = fail.get("times")
    if times is not None:
        if times <= 0:
            return None
        fail["times"] = times - 1
    return dict(fail)


def fresh_faults(defaults: dict[str, Any]) -> dict[str, Any]:
    """A copy of `defaults` whose dicts and lists are copies too (a test's changes never reach the defaults)."""
    return {key: (dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value)
            for key, value in defaults.items()}


class SimLedger(Generic[S]):
    """A simulator's state: `faults` (from `defaults`), `requests` by endpoint, `refusals`, `sessions` by id and
    `by_token` (a session's token -> its id). Subclasses end their sessions in `reset` before `clear`."""

    def __init__(self, defaults: dict[str, Any]) -> None:
        self._defaults = defaults
        self.faults = fresh_faults(defaults)
        self.sessions: dict[str, S] = {}
        self.by_token: dict[str, str] = {}
        self.requests: dict[str, int] = {}
        self.refusals: list[dict[str, Any]] = []

    def clear(self) -> None:
        """Forget every session, count and refusal; the faults are the defaults again."""
        self.faults = fresh_faults(self._defaults)
        self.sessions = {}
        self.by_token = {}
        self.requests = {}
        self.refusals = []

    def merge_faults(self, update: dict[str, Any]) -> None:
        """`POST /_sim/faults`: `latency_ms` and `fail` merge by endpoint, every other key is replaced."""
        for key, value in update.items():
            if key in ("latency_ms", "fail") and isinstance(value, dict):
                self.faults[key].update(value)
            else:
                self.faults[key] = value

    def faults_update(self, update: dict[str, Any] | None) -> Response:
        """`POST /_sim/faults` with the body `update` (None: not a JSON object): merged, answered with the faults now
        in force; a key the simulator does not know (a typo would silently test nothing) -> 400 naming the known
        ones, nothing merged."""
        if update is None:
            return json_response({"error": "faults must be a JSON object"}, 400)
        unknown = sorted(set(update) - set(self._defaults))
        if unknown:
            return json_response({"error": f"unknown fault keys {unknown}", "known": sorted(self._defaults)}, 400)
        self.merge_faults(update)
        return json_response(self.faults, 200)

    def count(self, endpoint: str) -> None:
        self.requests[endpoint] = self.requests.get(endpoint, 0) + 1

    def refuse(self, endpoint: str, response: Response, **details: Any) -> Response:
        """Record the refusal (`endpoint`, the response's status, `details`, the time) and return `response`."""
        self.refusals.append({"endpoint": endpoint, "status": response.status_code, **details, "at": time.monotonic()})
        return response

    async def gate(self, endpoint: str, failure: Callable[[dict[str, Any]], tuple[Response, dict[str, Any]]],
                   key_problem: Callable[[str], Response | None] | None = None) -> Response | None:
        """What every API request passes first: counted, delayed by its injected latency, answered by its forced
        failure (`failure(fail)` -> the response and the refusal's details), then refused by `key_problem(endpoint)`
        when given. None: go on. Blocks for the latency only."""
        self.count(endpoint)
        latency = self.faults["latency_ms"].get(endpoint)
        if latency:
            await trio.sleep(latency / 1000)
        fail = take_forced_failure(self.faults["fail"], endpoint)
        if fail is not None:
            response, details = failure(fail)
            return self.refuse(endpoint, response, **details)
        return None if key_problem is None else key_problem(endpoint)


def simulator_app(import_name: str, state: SimLedger[Any], start_faults: dict[str, Any] | None) -> QuartTrio:
    """A simulator's app: Quart-Trio, never losing a kept-alive request (`KeepAliveGuard`), with `start_faults`
    (`avatar-relay sim --faults NAME=JSON`) merged into `state`'s faults (`/_sim/reset` forgets them)."""
    app = QuartTrio(import_name)
    app.asgi_app = KeepAliveGuard(app.asgi_app)  # type: ignore[method-assign]
    if start_faults:
        state.merge_faults(start_faults)
    return app
