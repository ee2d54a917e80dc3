"""The QuartTrio app: routes (`/ws`, `/`, static files, health) and lifespan (one shared HTTP client; in demo mode the
simulators, started in `app.nursery`). No conversation logic here: `/ws` hands the socket to
`relay.nursery.run_conversation`.

`hypercorn -k trio relay.web:app` serves it; `app` builds the real app on first use, reading the environment and
`.env` then, so a configuration error stops the server with a message instead of a traceback. That app also watches
for hypercorn's shutdown and its parent's death itself and drains (`relay.server.hosted`), as `avatar-relay serve`
drains the app it serves.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import TYPE_CHECKING, Any

import httpx2
import trio
from quart import Response, abort, websocket
from quart_trio import QuartTrio

from relay import __version__
from relay.avatars import AvatarProvider
from relay.avatars import registry as avatar_registry
from relay.avatars.budget import AvatarBudget, BudgetedProvider, LocalAvatarBudget
from relay.avatars.hooks import HookedProvider, MakeHooks
from relay.config import ConfigError, Settings, load_settings
from relay.conversation.endings import ConversationOver
from relay.conversation.record import ConversationRecord
from relay.elevenlabs import open_agent
from relay.nursery import ConversationHooks, Upstreams
from relay.ops.fleet import Fleet, FleetUnavailable
from relay.ops.fleet_sessions import FleetSessions, SessionEntry
from relay.ops.journal import Journal, journal_hooks, open_journal_now, state_dir
from relay.ops.logs import configure_logging, set_worker
from relay.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from relay.ops.metrics import RelayMetrics
from relay.ops.reaper import reap_periodically
from relay.ops.transcripts import TranscriptWriter
from relay.server.admission import Registry
from relay.server.auth import Gate, auth_problem, chosen_protocol, protocol_token
from relay.server.demo import demo_settings
from relay.server.departures import NoteDepartures, browser_left
from relay.server.fleet_admission import FleetSeats, seat_keeper, token_uses
from relay.server.jwks import JwksCache, http_fetcher
from relay.server.opening import Doorway
from relay.server.page_headers import page_headers
from relay.server.pending import PendingPool
from relay.server.request_guard import GuardPolicy, RequestGuard
from relay.server.seats import SharedAvatarBudget
from relay.server.ws_limits import limit_websocket_messages
from relay.sim.http_keepalive import KeepAliveGuard
from relay.sim.runner import SimulatorURLs

if TYPE_CHECKING:
    from relay.server.workers import WorkerRole

log = logging.getLogger("relay.web")

STATIC_DIR = resources.files("relay") / "static"

class QuartBrowser:
    """The `BrowserSocket` seam over quart's websocket. Made inside the `/ws` handler: it holds that connection's
    own Websocket object and its bound methods, so a frame costs no context-local proxy lookups (the audio hot
    path; docs/performance.md).

    With permessage-deflate, which every browser offers and hypercorn 0.18 always accepts, every send runs to its
    end once started (`send_whole`): wsproto compresses a frame into the connection's shared LZ77 window inside
    hypercorn's `send`, *before* hypercorn takes the socket's send lock and writes it. A send cancelled in between
    (the conversation ending while its outbox sends, the lock held by hypercorn's own pong or close reply) leaves a
    frame compressed but never written, and the browser fails to decompress every later frame (`ended` first): it
    closes with 1002/1007 instead of reading why the conversation ended (docs/reliability.md). Without the
    extension a cancelled send writes nothing at all, so `send` is quart's own (no cancel scope per frame)."""

    __slots__ = ("_raw_send", "_send_timeout", "_ws", "receive", "send")

    def __init__(self, send_timeout: float) -> None:
        self._ws = websocket._get_current_object()  # type: ignore[attr-defined]
        self.receive: Callable[[], Coroutine[Any, Any, str | bytes | None]] = self._ws.receive
        self._raw_send: Callable[[str | bytes], Coroutine[Any, Any, None]] = self._ws.send
        self._send_timeout = send_timeout
        offers = ",".join(self._ws.headers.getlist("Sec-WebSocket-Extensions")).lower()
        self.send: Callable[[str | bytes], Coroutine[Any, Any, None]] = (
            self.send_whole if "permessage-deflate" in offers else self._raw_send)

    async def send_whole(self, data: str | bytes) -> None:
        """Send one frame whole: shielded from the caller's cancellation (which takes effect at the caller's next
        checkpoint, after the frame is written) and bounded by RELAY_SEND_TIMEOUT. A send still waiting for the
        socket after that long may have been compressed already, so nothing more can be sent on this socket but
        its close: the conversation ends (`timeout`, as with the send watchdog). A write that has begun cannot be
        interrupted anyway (hypercorn shields it; TCP_USER_TIMEOUT breaks a stalled one)."""
        with trio.CancelScope(deadline=trio.current_time() + self._send_timeout, shield=True) as scope:
            await self._raw_send(data)
        if scope.cancelled_caught:
            self.send = self._raw_send = _refuse_after_abandoned_send
            raise _abandoned_send()

    async def close(self, code: int, reason: str = "") -> None:
        await self._ws.close(code, reason)


def _abandoned_send() -> ConversationOver:
    return ConversationOver.failed("timeout", "the browser stopped reading; conversation ended")


async def _refuse_after_abandoned_send(data: str | bytes) -> None:
    raise _abandoned_send()


@dataclass
class RelayState:
    """What the app holds while serving; `app.extensions["relay"]`."""

    settings: Settings
    registry: Registry
    upstreams: Upstreams | None = None
    simulators: SimulatorURLs | None = None
    gate: Gate | None = None
    journal: Journal | None = None
    metrics: RelayMetrics | None = None
    transcripts: TranscriptWriter | None = None
    worker: WorkerRole | None = None  # under `serve --workers N`
    fleet: Fleet | None = None  # with RELAY_REDIS_URL: this relay's membership of the fleet
    avatar_budget: AvatarBudget | None = None  # with RELAY_MAX_AVATAR_SESSIONS
    fleet_sessions: FleetSessions | None = None  # with a fleet and an avatar: the fleet's session registry

    @property
    def readiness(self) -> dict[str, bool]:
        """What `/readyz` checks: set up (configuration valid, upstreams ready), not shutting down, under capacity
        (the whole relay's, with several workers)."""
        checks = {"started": self.upstreams is not None, "accepting": not self.registry.shutting_down,
                  "under_capacity": self.registry.under_capacity}
        if self.fleet is not None:
            # Under the `local` outage policy the relay still admits while Redis is away: ready, not degraded.
            checks["redis"] = self.fleet.healthy or self.settings.relay_fleet_outage == "local"
        return checks

    @property
    def ready(self) -> bool:
        return all(self.readiness.values())


def relay_state(app: QuartTrio) -> RelayState:
    return app.extensions["relay"]  # type: ignore[no-any-return]


def create_app(settings: Settings | None = None, worker: WorkerRole | None = None, *,
               own_shutdown: bool = False) -> QuartTrio:
    """The relay app. `worker`: this process is one of `serve --workers N` (shared cap, merged /metrics, the worker
    index on log lines). `own_shutdown`: served by hypercorn's command line, the app watches for the shutdown
    itself and drains (`relay.server.hosted`); `avatar-relay serve` drains it from outside instead."""
    settings = settings or load_settings()
    if (problem := auth_problem(settings)) is not None:
        raise ConfigError(f"invalid configuration: {problem}")
    if worker is not None:
        set_worker(worker.index)
    configure_logging(settings)
    if (secret := settings.relay_auth_secret) is not None and len(secret.get_secret_value().encode()) < 32:
        log.warning("RELAY_AUTH_SECRET is shorter than 32 bytes, below what HS256 calls for (RFC 7518 3.2): "
                    "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    app = QuartTrio(__name__, static_folder=None)
    limit_websocket_messages(app, settings.relay_max_frame_bytes, settings.relay_max_start_bytes)
    app.asgi_app = RequestGuard(NoteDepartures(KeepAliveGuard(app.asgi_app)),  # type: ignore[method-assign]
                                GuardPolicy.from_settings(settings))
    fleet = Fleet.from_settings(settings)
    # The one place where admission is chosen: the fleet's seats in Redis, or this process's (and its workers').
    keeper = seat_keeper(settings, fleet, None if fleet is not None or worker is None
                         else worker.seats(settings.relay_max_conversations))
    registry = Registry(settings.relay_max_conversations, settings.relay_max_conversations_per_client, keeper=keeper)
    gate = Gate(settings)
    gate.allow_start = keeper.allow_start
    pending = PendingPool(settings.relay_max_pending, settings.relay_max_pending_per_client)
    registry.close_waiting = pending.close_all
    state = RelayState(settings, registry, gate=gate, worker=worker, fleet=fleet)
    if (budget_size := settings.relay_max_avatar_sessions) is not None:
        # The fleet's budget in Redis, else the machine's (shared by the workers), else this process's.
        state.avatar_budget = keeper if isinstance(keeper, FleetSeats) else \
            LocalAvatarBudget(budget_size) if worker is None else SharedAvatarBudget(worker.avatar_seats(budget_size))
    app.extensions["relay"] = state
    metrics = state.metrics = RelayMetrics(ready=lambda: state.ready, avatar=settings.avatar,
                                           demo_mode=settings.demo_mode)
    if isinstance(keeper, FleetSeats):
        fleet_seats = keeper
        metrics.watch_fleet(healthy=lambda: fleet_seats.fleet.healthy, seats=lambda: fleet_seats.fleet_taken,
                            seats_held=lambda: len(fleet_seats.held), avatars=lambda: fleet_seats.fleet_avatars,
                            avatars_held=lambda: len(fleet_seats.avatars))
    elif isinstance(budget := state.avatar_budget, (LocalAvatarBudget, SharedAvatarBudget)):
        local_budget = budget
        metrics.watch_fleet(avatars_held=lambda: len(local_budget.held))
    if settings.relay_transcripts_dir:
        state.transcripts = TranscriptWriter(settings.relay_transcripts_dir, settings.relay_transcript_max_bytes)

    def on_start(record: ConversationRecord) -> None:
        metrics.conversation_started(record)
        if state.transcripts is not None:
            state.transcripts.start(record)

    def on_end(record: ConversationRecord) -> None:
        metrics.conversation_ended(record)
        if state.transcripts is not None:
            app.nursery.start_soon(state.transcripts.write, record)

    doorway = Doorway(gate, registry, pending, metrics, token_uses(keeper, worker))
    transcripts = state.transcripts
    hooks = ConversationHooks(
        on_start=on_start, on_ready=metrics.conversation_ready, on_end=on_end,
        on_agent_event=None if transcripts is None else transcripts.agent_event,
        on_user_text=None if transcripts is None else transcripts.user_text)

    @app.before_serving
    async def start_upstreams() -> None:
        if state.fleet is not None:
            # Joins the fleet (or stops the start-up with a clear error) before anything is admitted.
            try:
                await app.nursery.start(state.fleet.serve)
            except FleetUnavailable as exc:
                # One clear line and a non-zero exit under every entry point (`serve`, its workers, hypercorn's
                # command line), instead of quart's and hypercorn's tracebacks; nothing is open yet.
                print(f"avatar-relay: {exc}", file=sys.stderr, flush=True)
                os._exit(1)
            if isinstance(keeper, FleetSeats):
                await app.nursery.start(keeper.serve)
        effective = settings
        if settings.demo_mode:
            from relay.sim.runner import serve_simulators

            urls = await app.nursery.start(partial(serve_simulators, "127.0.0.1", demo=True))
            state.simulators = urls
            effective = demo_settings(settings, urls.elevenlabs, urls.heygen, urls.liveavatar)
            log.info("demo mode: no API keys set, running on the built-in simulators (avatar=%s) "
                     "elevenlabs=%s heygen=%s liveavatar=%s", effective.avatar, urls.elevenlabs, urls.heygen,
                     urls.liveavatar)
        http = httpx2.AsyncClient(timeout=httpx2.Timeout(10.0, pool=5.0),
                                  limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=200),
                                  headers={"user-agent": f"avatar-relay/{__version__}"})
        if settings.relay_auth_jwks_url and state.gate is not None:
            state.gate.jwks = JwksCache(http_fetcher(http, settings.relay_auth_jwks_url),
                                        min_interval=settings.relay_auth_jwks_min_interval)
        provider = avatar_registry.make_provider(effective, http)
        session_hooks: list[MakeHooks] = []
        if provider is not None and state.fleet is not None and not settings.demo_mode:
            async def stop_session(entry: SessionEntry) -> None:
                await avatar_registry.stop_by_id(effective, http, entry.provider, entry.session_id, entry.base_url)

            state.fleet_sessions = FleetSessions(state.fleet, stop_session)
            metrics.observe_fleet_sessions(state.fleet_sessions)
        if provider is not None and settings.relay_journal and not settings.demo_mode:
            # Demo sessions die with the in-process simulators: nothing to journal or reap.
            state.journal = await open_journal_now(state_dir(settings))
            session_hooks.append(journal_hooks(state.journal, avatar_registry.base_url(effective, provider.name)))
            app.nursery.start_soon(reap_periodically, effective, http, state.journal, state.fleet_sessions)
        if provider is not None and state.fleet_sessions is not None:
            # Registered alongside the creation call, right after the journal's row.
            session_hooks.append(state.fleet_sessions.hooks(avatar_registry.base_url(effective, provider.name)))
            app.nursery.start_soon(state.fleet_sessions.serve)
        session_hooks.append(metrics.session_hooks)
        if state.transcripts is not None:
            await state.transcripts.prepare()
        if worker is not None:
            from relay.server.worker_metrics import serve_own_metrics

            await app.nursery.start(serve_own_metrics, worker.metrics_socket(worker.index), metrics.render)
        hooked: AvatarProvider | None = None if provider is None else HookedProvider(provider, session_hooks)
        if hooked is not None and state.avatar_budget is not None:
            # Outside the hooks: a session refused for want of a seat was never asked of the provider.
            hooked = BudgetedProvider(hooked, state.avatar_budget, settings.relay_avatar_seat_wait,
                                      on_refused=lambda: metrics.admission_refused("avatar_budget"))
        state.upstreams = Upstreams(settings=effective, http=http, provider=hooked,
                                    open_agent=metrics.observe_agent(open_agent), hooks=hooks)
        if own_shutdown:
            from relay.server.hosted import host_links, watch_host

            app.nursery.start_soon(watch_host, registry, settings, host_links())

    @app.after_serving
    async def stop_upstreams() -> None:
        if state.upstreams is not None:
            await state.upstreams.http.aclose()
        if state.journal is not None:
            state.journal.close()

    @app.websocket("/ws")
    async def conversation_socket() -> None:
        assert state.upstreams is not None and state.gate is not None
        headers = websocket.headers
        gate = state.gate
        decision = await gate.check_handshake(
            origin=headers.get("origin"), host=headers.get("host"), remote_addr=websocket.remote_addr,
            forwarded_for=headers.get("x-forwarded-for"), forwarded_proto=headers.get("x-forwarded-proto"),
            now=trio.current_time(),
            query_token=websocket.args.get("token") or protocol_token(headers.get("sec-websocket-protocol")))
        if decision.refuse_status is not None:
            log.info("websocket refused status=%d client=%s", decision.refuse_status, decision.client)
            metrics.conversation_refused(f"http_{decision.refuse_status}")
            abort(decision.refuse_status)  # before accepting: a plain HTTP answer, nothing upstream was called
        if decision.claims is not None:
            log.info("client token accepted client=%s", decision.client)
        if (protocol := chosen_protocol(headers.get("sec-websocket-protocol"))) is not None:
            await websocket.accept(subprotocol=protocol)
        await doorway.serve(QuartBrowser(settings.relay_send_timeout), decision, state.upstreams,
                            browser_left=browser_left(websocket.scope))

    security_headers = page_headers(settings)

    @app.after_request
    async def add_security_headers(response: Response) -> Response:
        """The page's own defences on every HTTP answer (the page, its static files, the JSON endpoints)."""
        for name, value in security_headers.items():
            response.headers.setdefault(name, value)
        return response

    @app.route("/")
    async def index() -> Response:
        return _static_response("index.html")

    @app.route("/static/<path:name>")
    async def static_file(name: str) -> Response:
        return _static_response(name)

    @app.route("/client-config.json")
    async def client_config() -> dict[str, Any]:
        return {"livekit_client_url": settings.relay_livekit_client_url, "ws_path": "/ws",
                "frame_ms": settings.relay_client_frame_ms,
                "livekit_client_integrity": settings.livekit_client_integrity}

    @app.route("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers. Never depends on upstreams (a restart would not fix them)."""
        body: dict[str, Any] = {"status": "ok", "version": __version__}
        if worker is not None:
            body["worker"] = worker.index
        return body

    @app.route("/readyz")
    async def readyz() -> Any:
        """Readiness: 200 while new conversations are welcome, 503 (with the failing checks) otherwise — from
        the first moment of a shutdown, so a load balancer stops sending new ones before the drain."""
        checks = state.readiness
        body = {"ready": all(checks.values()), "checks": checks, "open_conversations": state.registry.open_count,
                "max_conversations": state.registry.max_conversations}
        return body, 200 if body["ready"] else 503

    @app.route("/metrics")
    async def metrics_endpoint() -> Response:
        """This relay's metrics; with several workers, all of theirs, each sample labelled with its `worker`."""
        body = metrics.render()
        if worker is not None:
            from relay.server.worker_metrics import gather_expositions, merge_expositions

            sockets = {index: worker.metrics_socket(index) for index in range(worker.count)}
            body = merge_expositions(await gather_expositions(sockets, worker.index, body))
        return Response(body, content_type=METRICS_CONTENT_TYPE, headers={"cache-control": "no-store"})

    @app.route("/_demo/simulators")
    async def demo_simulators() -> Any:
        urls = state.simulators
        if urls is None:
            return {"error": "not in demo mode"}, 404
        return {"elevenlabs": urls.elevenlabs, "heygen": urls.heygen, "liveavatar": urls.liveavatar}

    return app


_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                  ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
                  ".json": "application/json"}


def _static_response(name: str) -> Response:
    parts = [p for p in name.split("/") if p]
    if not parts or any(p in (".", "..") or p.startswith(".") for p in parts):
        return Response("not found", status=404)
    target = STATIC_DIR.joinpath(*parts)
    if not target.is_file():
        return Response("not found", status=404)
    suffix = "." + parts[-1].rsplit(".", 1)[-1] if "." in parts[-1] else ""
    return Response(target.read_bytes(), content_type=_CONTENT_TYPES.get(suffix, "application/octet-stream"),
                    headers={"cache-control": "no-cache"})


class _AppOnFirstUse:
    """`relay.web:app` for `hypercorn -k trio relay.web:app`: the app is built, reading the environment and `.env`,
    when hypercorn first calls it (its lifespan start-up), not when the module is imported, so importing `relay.web`
    has no side effects. A configuration error prints one line and ends the process with status 2."""

    def __init__(self) -> None:
        self._app: QuartTrio | None = None

    def _build(self) -> QuartTrio:
        if self._app is None:
            try:
                self._app = create_app(own_shutdown=True)
            except ConfigError as exc:
                print(f"avatar-relay: {exc}", file=sys.stderr, flush=True)
                os._exit(2)  # not SystemExit: hypercorn would report it from inside its task group
        return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._build()(scope, receive, send)

    @property
    def websocket_limits(self) -> Any:
        """The built app's WebSocket message bounds, for hypercorn's streams (relay.server.ws_limits)."""
        return getattr(self._app, "websocket_limits", None)


app = _AppOnFirstUse()
