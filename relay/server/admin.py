"""The operator's endpoints (docs/operations.md, "The operator's endpoints"), off unless RELAY_ADMIN_TOKEN is set:

- `GET /admin/conversations`: the live conversations (id, start, subject, client address, provider, avatar session
  id, state, seconds of avatar time so far) of this relay — every worker's under `serve --workers N` —, or with
  RELAY_REDIS_URL of the whole fleet (`relay.ops.fleet_roster`);
- `POST /admin/conversations/<id>/end`: end one (reason `admin`, told to its browser in `ended`, its avatar
  stopped), wherever it runs; answered once it has ended, or 404 when no live conversation has that id;
- `GET /admin/avatar-sessions`: each avatar account's running sessions (its own list call) against the relay's
  records — the fleet's with RELAY_REDIS_URL —, naming the sessions it bills that no relay holds
  (`relay.ops.untracked`).

Only direct requests (no forwarding header: a proxy's request gets 404, as if the endpoints were off) carrying
`Authorization: Bearer <RELAY_ADMIN_TOKEN>` are answered (compared in constant time); anything else is 401 with the
same answer whatever was wrong, and a log line saying what (never the token presented). `Operator` is this
relay's side (the roster, the other workers' answers, the records the comparison reads); `start_operator` serves the
worker's admin socket and runs the periodic untracked-session check, with or without the endpoints.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
import trio
from quart import Response, request
from quart_trio import QuartTrio

from relay.ops.fleet import FleetUnavailable
from relay.ops.fleet_roster import TICK as FLEET_TICK
from relay.ops.fleet_roster import FleetRoster, Published
from relay.ops.untracked import Held, RecordsUnavailable, UntrackedCheck, untracked_gauge
from relay.server.worker_admin import admin_socket, ask_workers, serve_admin_socket

if TYPE_CHECKING:
    from relay.server.state import RelayState

log = logging.getLogger("relay.admin")

ASK_TIMEOUT = 2.0  # seconds another worker may take to answer a listing
UNAUTHORIZED = b'{"error":"unauthorized"}'
# What nginx, Caddy, Traefik, HAProxy and the cloud load balancers add to what they forward (RFC 7239 and the de facto
# X- headers); the nginx and Caddy blocks of docs/deploy.md set X-Forwarded-For and X-Forwarded-Proto.
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip", "via")


def refusal(authorization: str | None, token: str) -> str | None:
    """Why a request carrying `authorization` is refused (for the log line: "no token", "not a bearer token",
    "wrong token"), None when it carries `Bearer <token>`. The token is compared in constant time."""
    if not authorization:
        return "no token"
    scheme, _, presented = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return "not a bearer token"
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        return "wrong token"
    return None


def forwarded_by(headers: Any) -> str | None:
    """The forwarding header a request carries (a proxy passed it on), None for a direct request. The operator's
    endpoints answer direct requests only: whatever path rules the public proxy has, what it forwards never
    reaches them."""
    for name in FORWARDING_HEADERS:
        if headers.get(name) is not None:
            return name
    return None


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type="application/json",
                    headers={"cache-control": "no-store", "x-content-type-options": "nosniff"})


class Operator:
    """This relay's answers to its operator. Everything that blocks is bounded: another worker's answer by
    ASK_TIMEOUT, an end by RELAY_STOP_TIMEOUT (+2 s), the comparison by the providers' list calls."""

    def __init__(self, state: RelayState) -> None:
        self.state = state
        self.fleet_roster: FleetRoster | None = None  # with a fleet: every relay's conversations

    # -- this process -----------------------------------------------------------------------------------------------

    async def answer(self, asked: dict[str, Any]) -> dict[str, Any]:
        """This process's own answer (also what the other workers ask on its admin socket)."""
        roster = self.state.roster
        op = asked.get("op")
        if op == "list":
            return {"conversations": roster.summaries()}
        if op == "sessions":
            return {"sessions": sorted(roster.sessions())}
        if op == "end" and isinstance(wanted := asked.get("id"), str):
            entry = roster.end(wanted)
            if entry is None:
                return {"ended": False}
            log.info("conversation ended by the operator id=%s", wanted)
            with trio.move_on_after(self.state.settings.relay_stop_timeout + 2.0):
                await entry.gone.wait()
            return {"ended": True, "stopped": entry.gone.is_set()}
        return {"error": "unknown request"}

    # -- this relay: every worker -----------------------------------------------------------------------------------

    async def _everywhere(self, asked: dict[str, Any], bound: float) -> dict[int, dict[str, Any] | None]:
        """Every worker's answer by index (only this process's, as 0, without workers)."""
        worker = self.state.worker
        own = await self.answer(asked)
        if worker is None:
            return {0: own}
        others = await ask_workers(worker.directory, worker.count, worker.index, asked, bound)
        return {worker.index: own, **others}

    def about(self) -> dict[str, Any]:
        fleet = self.state.fleet
        return {"relay": None if fleet is None else fleet.relay_id}

    async def conversations(self) -> dict[str, Any]:
        """This relay's conversations (every worker's) or, with a fleet, every live relay's."""
        if self.fleet_roster is not None:
            return await self._fleet_conversations(self.fleet_roster)
        answers = await self._everywhere({"op": "list"}, ASK_TIMEOUT)
        listed = [{**conversation, "worker": index} for index, answer in sorted(answers.items()) if answer
                  for conversation in answer.get("conversations", [])]
        listed.sort(key=lambda c: c["started"])
        return {**self.about(), "conversations": listed,
                "workers": {str(index): answer is not None for index, answer in sorted(answers.items())}}

    async def _fleet_conversations(self, roster: FleetRoster) -> dict[str, Any]:
        own = roster.fleet.relay_id
        listed = [{**conversation, "relay": own} for conversation in self.state.roster.summaries()]
        relays, error = {own: True}, None
        try:
            wall = time.time()
            for published in await roster.listing():
                if published.relay_id != own:
                    relays[published.relay_id] = True
                    listed.extend(published.now(wall))
        except FleetUnavailable as exc:
            error = f"the other relays' conversations cannot be read ({exc})"
        listed.sort(key=lambda c: c["started"])
        return {**self.about(), "conversations": listed, "relays": relays, "error": error}

    async def end(self, wanted: str) -> dict[str, Any] | None:
        """End the conversation `wanted` wherever it runs on this relay — or, with a fleet, on whichever relay
        holds it; None when none has that id. Raises FleetUnavailable when the fleet cannot be asked."""
        bound = self.state.settings.relay_stop_timeout + 2.0
        answers = await self._everywhere({"op": "end", "id": wanted}, bound + ASK_TIMEOUT)
        for index, answer in sorted(answers.items()):
            if answer and answer.get("ended"):
                return {**self.about(), "ended": wanted, "reason": "admin", "worker": index,
                        "stopped": bool(answer.get("stopped"))}
        if self.fleet_roster is None:
            return None
        return await self._end_elsewhere(self.fleet_roster, wanted, bound)

    async def _end_elsewhere(self, roster: FleetRoster, wanted: str, bound: float) -> dict[str, Any] | None:
        """Ask the relay that published `wanted` to end it, and wait (up to `bound` seconds and two of its ticks)
        until its publication no longer lists it."""
        def holder(listing: list[Published]) -> str | None:
            for published in listing:
                if any(wanted in (c.get("id"), c.get("conversation_id")) for c in published.conversations):
                    return published.relay_id
            return None

        owner = holder(await roster.listing())
        if owner is None or owner == roster.fleet.relay_id:
            return None
        await roster.ask_end(owner, wanted)
        stopped = False
        with trio.move_on_after(bound + 2 * FLEET_TICK):
            while not stopped:  # the owner publishes its conversations again once it has ended it
                stopped = holder(await roster.listing()) != owner
                await trio.sleep(0 if stopped else FLEET_TICK / 5)
        log.info("conversation ended by the operator id=%s relay=%s", wanted, owner)
        return {**self.about(), "ended": wanted, "reason": "admin", "relay": owner, "stopped": stopped}

    async def held_sessions(self) -> Held:
        """The relay's records of the avatar sessions it holds: every worker's open sessions, the session journal
        (sessions this machine's relays believe running, their stops retried) and, with a fleet, every session
        its registry holds. Raises RecordsUnavailable when a part cannot be read."""
        held: Held = set()
        for index, answer in (await self._everywhere({"op": "sessions"}, ASK_TIMEOUT)).items():
            if answer is None:
                raise RecordsUnavailable(f"worker {index} did not answer")
            held.update((str(p), str(s)) for p, s in answer.get("sessions", []))
        if self.state.journal is not None:
            held.update((row.provider, row.session_id) for row in await self.state.journal.entries())
        if self.state.fleet_sessions is not None:
            try:
                held.update((s.entry.provider, s.entry.session_id) for s in await self.state.fleet_sessions.listing())
            except FleetUnavailable as exc:
                raise RecordsUnavailable(f"the fleet's session registry cannot be read ({exc})") from None
        return held

    def untracked_check(self) -> UntrackedCheck | None:
        """The comparison, once the upstreams are up with an avatar provider; None for voice only."""
        up = self.state.upstreams
        if up is None or up.provider is None:
            return None
        return UntrackedCheck(up.settings, up.http, self.held_sessions)


def add_admin_routes(app: QuartTrio, state: RelayState) -> None:
    """Add the operator's endpoints when RELAY_ADMIN_TOKEN is set (none at all otherwise: 404), and start the
    operator's own tasks (`start_operator`) either way."""
    operator = Operator(state)

    @app.before_serving
    async def operator_tasks() -> None:
        await start_operator(app, state, operator)

    secret = state.settings.relay_admin_token
    if secret is None:
        return
    token = secret.get_secret_value()

    def refused() -> Response | None:
        if (proxy := forwarded_by(request.headers)) is not None:
            log.warning("admin request through a proxy refused (it carries %s) method=%s path=%s client=%s", proxy,
                        request.method, request.path, request.remote_addr)
            return Response(b'{"error":"not found"}', status=404, content_type="application/json")
        why = refusal(request.headers.get("authorization"), token)
        if why is None:
            return None
        log.warning("admin request refused (%s) method=%s path=%s client=%s", why, request.method, request.path,
                    request.remote_addr)
        return Response(UNAUTHORIZED, status=401, content_type="application/json",
                        headers={"www-authenticate": "Bearer", "cache-control": "no-store"})

    @app.get("/admin/conversations")
    async def admin_conversations() -> Response:
        return refused() or _json(await operator.conversations())

    @app.post("/admin/conversations/<conversation>/end")
    async def admin_end(conversation: str) -> Response:
        if (no := refused()) is not None:
            return no
        try:
            ended = await operator.end(conversation[:200])
        except FleetUnavailable as exc:
            return _json({"error": f"the fleet cannot be asked ({exc})"}, 503)
        if ended is None:
            return _json({"error": "no live conversation of this relay has that id"}, 404)
        return _json(ended)

    @app.get("/admin/avatar-sessions")
    async def admin_avatar_sessions() -> Response:
        if (no := refused()) is not None:
            return no
        check = operator.untracked_check()
        if check is None:
            return _json({**operator.about(), "checked_at": None, "error": None, "providers": []})
        return _json({**operator.about(), **(await check.check()).to_json()})


async def start_operator(app: QuartTrio, state: RelayState, operator: Operator) -> None:
    """The app's start-up hook (after the upstreams'): this worker's admin socket under `serve --workers N`, and the
    periodic untracked-session check (RELAY_UNTRACKED_CHECK_INTERVAL > 0, an avatar provider; under workers, worker
    0's alone: it reads every worker's records). Both run in the app's nursery until it ends."""
    worker = state.worker
    if worker is not None:
        await app.nursery.start(serve_admin_socket, admin_socket(worker.directory, worker.index), operator.answer)
    if state.fleet is not None:
        roster = state.roster
        operator.fleet_roster = FleetRoster(state.fleet, roster.summaries,
                                            lambda wanted: roster.end(wanted) is not None, roster.signature)
        app.nursery.start_soon(operator.fleet_roster.serve)
    interval = state.settings.relay_untracked_check_interval
    check = operator.untracked_check()
    if check is None or interval <= 0 or (worker is not None and worker.index != 0):
        return
    assert state.metrics is not None
    gauge = untracked_gauge(state.metrics.registry, check.settings)  # in /metrics from the start
    app.nursery.start_soon(check.run_periodically, interval, gauge)
