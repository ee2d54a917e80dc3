"""The QuartTrio app, read top to bottom: `create_app` builds it (settings, logging, the ASGI guards, who gets in, the
state, the start-up of the upstreams, `/ws`, the page and the probes); `conversation_socket` is `/ws`, which checks
the handshake and hands the socket to `relay.server.opening.Doorway` (its `start` and token read in a pre-start
slot, then a seat and `relay.nursery.run_conversation`; no conversation logic here). The parts live in
`relay.server`: `state` (`RelayState`), `fleet_admission.choose_seating` (seats, registry, avatar budget, token
uses), `upstreams` (what the lifespan starts and stops), `page` (the page, its files, `client-config.json`, its
headers), `probes` (health, readiness, metrics), `request_guard` and `ws_limits` (the ASGI guard and hypercorn's
message bounds).

`hypercorn -k trio relay.web:app` serves it; `app` builds the real app on first use, reading the environment and
`.env` then, so a configuration error stops the server with a message instead of a traceback. That app also watches
for hypercorn's shutdown and its parent's death itself and drains (`relay.server.hosted`), as `avatar-relay serve`
drains the app it serves.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from quart_trio import QuartTrio

from relay.config import ConfigError, Settings
from relay.net.http_keepalive import KeepAliveGuard
from relay.ops.fleet import Fleet
from relay.ops.logs import configure_logging, set_worker
from relay.ops.metrics import RelayMetrics
from relay.ops.tracing import configure_tracing
from relay.ops.transcripts import TranscriptWriter
from relay.providers import table as providers
from relay.server.admin import add_admin_routes
from relay.server.asgi_ws import ASGIWebSocket, WebSocketFront, install_departure_notice, serve_websocket
from relay.server.auth import Gate, auth_problem, identity
from relay.server.departures import NoteDepartures, browser_left, left_cleanly, note_browser_close_codes
from relay.server.direct_ws import DirectWebSocket, serve_websocket_directly
from relay.server.fleet_admission import choose_seating, watch_seating
from relay.server.handshake import chosen_protocol, protocol_token
from relay.server.opening import Doorway, ResumeDoor
from relay.server.page import add_page_routes
from relay.server.pending import PendingPool
from relay.server.probes import add_probe_routes
from relay.server.request_guard import GuardPolicy, RequestGuard
from relay.server.resuming import held_table, resume_connection, serve_connection
from relay.server.startup import StartupGuard, end_process
from relay.server.state import RelayState, relay_state
from relay.server.tcp_close import serialise_tcp_close
from relay.server.upstreams import conversation_hooks, start_upstreams, stop_upstreams
from relay.server.ws_limits import limit_websocket_messages
from relay.server.wsproto_mask import use_c_unmasking

if TYPE_CHECKING:
    from relay.server.workers import WorkerRole

log = logging.getLogger("relay.web")

__all__ = ["RelayState", "app", "create_app", "relay_state", "startup_guard"]


def create_app(settings: Settings | None = None, worker: WorkerRole | None = None, *,
               own_shutdown: bool = False) -> QuartTrio:
    """The relay app. `worker`: this process is one of `serve --workers N` (shared cap, merged /metrics, the worker
    index on log lines). `own_shutdown`: served by hypercorn's command line, the app watches for the shutdown
    itself and drains (`relay.server.hosted`); `avatar-relay serve` drains it from outside instead."""
    settings = settings or providers.load_settings()
    if (problem := auth_problem(settings)) is not None:
        raise ConfigError(f"invalid configuration: {problem}")
    if worker is not None:
        set_worker(worker.index)
    configure_logging(settings)
    configure_tracing()  # off unless OTEL_TRACES_EXPORTER names an exporter (relay.ops.tracing)
    if (secret := settings.relay_auth_secret) is not None and len(secret.get_secret_value().encode()) < 32:
        log.warning("RELAY_AUTH_SECRET is shorter than 32 bytes, below what HS256 calls for (RFC 7518 3.2): "
                    "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    app = QuartTrio(__name__, static_folder=None)
    # Message bounds inside hypercorn, then Host/path/metrics-token checks before anything else (relay.server.ws_limits,
    # relay.server.request_guard).
    limit_websocket_messages(app, settings.relay_max_frame_bytes, settings.relay_max_start_bytes)
    # `/ws` goes straight to `ws` below on hypercorn's callables, everything else to Quart (relay.server.asgi_ws).
    front = WebSocketFront(NoteDepartures(KeepAliveGuard(app.asgi_app)), "/ws", _not_yet)
    guard_policy = GuardPolicy.from_settings(settings)
    app.asgi_app = RequestGuard(front, guard_policy)  # type: ignore[method-assign]
    note_browser_close_codes()  # a clean close (1000) ends a resumable conversation; a dropped one is held
    install_departure_notice()  # the browser leaving cancels `/ws`'s handler at once, as under quart-trio
    serialise_tcp_close()  # hypercorn's close races a write: relay.server.tcp_close
    use_c_unmasking()  # the browser's frames unmasked in C, not wsproto's Python: relay.server.wsproto_mask

    fleet = Fleet.from_settings(settings)
    seating = choose_seating(settings, fleet, worker)
    gate = Gate(settings)
    gate.allow_start = seating.keeper.allow_start
    pending = PendingPool(settings.relay_max_pending, settings.relay_max_pending_per_client)  # sockets before `start`
    seating.registry.close_waiting = pending.close_all
    state = app.extensions["relay"] = RelayState(settings, seating.registry, gate=gate, worker=worker, fleet=fleet,
                                                 avatar_budgets=seating.avatar_budgets)
    metrics = state.metrics = RelayMetrics(ready=lambda: state.ready, avatar=providers.chosen_name(settings),
                                           demo_mode=settings.demo_mode, subjects=settings.relay_metrics_subjects)
    watch_seating(metrics, seating)
    state.held = held = held_table(state)
    if held is not None:
        metrics.watch_held(lambda: held.held_count)
    if settings.relay_transcripts_dir:
        state.transcripts = TranscriptWriter(settings.relay_transcripts_dir, settings.relay_transcript_max_bytes)
    hooks = conversation_hooks(app, state, metrics)

    # A start-up failure is one line and exit status 1 under every entry point (relay.server.startup).
    guard = app.extensions["relay_startup"] = StartupGuard(settings, end_process_on_failure=own_shutdown)
    guard.install(app, partial(start_upstreams, app, state, seating.keeper, hooks, own_shutdown=own_shutdown))
    app.after_serving(partial(stop_upstreams, state))

    doorway = Doorway(gate, seating.registry, pending, metrics, seating.uses, roster=state.roster)

    async def converse(connection: ASGIWebSocket | DirectWebSocket) -> None:
        await conversation_socket(state, doorway, app.nursery, connection)

    async def ws(scope: Any, receive: Any, send: Any) -> None:
        await serve_websocket(scope, receive, send, settings.relay_send_timeout, converse)

    front.handler = ws
    # Plain-TCP upgrades of `/ws` are served on their own socket, without hypercorn's reader task and wsproto
    # (relay.server.direct_ws); TLS and everything else stay on hypercorn's callables above.
    if settings.relay_direct_websocket:
        serve_websocket_directly(app, "/ws", converse, settings.relay_max_frame_bytes, settings.relay_max_start_bytes,
                                 guard_policy)

    add_page_routes(app, settings)
    add_probe_routes(app, state)
    add_admin_routes(app, state)  # /admin/... with RELAY_ADMIN_TOKEN; the untracked-session check either way
    return app


async def _not_yet(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("/ws served before create_app finished")


async def conversation_socket(state: RelayState, doorway: Doorway, nursery: trio.Nursery,
                              connection: ASGIWebSocket | DirectWebSocket) -> None:
    """`/ws`: check the handshake (origin, token — in `?token=` or Sec-WebSocket-Protocol —, start rate: refused
    before accepting, as plain HTTP), then hand the socket to `doorway` (relay.server.opening: its first frame read in
    a pre-start slot, a seat, the conversation). Cancelled when the browser leaves (`serve_websocket`) or by
    the drain. With RELAY_RESUME_WINDOW > 0 the conversation runs in `nursery` (the app's) so that a dropped
    connection does not end it, and a first frame `resume` takes a held one over (`relay.server.resuming`)."""
    assert state.upstreams is not None and state.gate is not None and state.metrics is not None
    gate, metrics = state.gate, state.metrics
    headers = connection.headers
    decision = await gate.check_handshake(
        origin=headers.get("origin"), host=headers.get("host"), remote_addr=connection.remote_addr,
        forwarded_for=headers.get("x-forwarded-for"), forwarded_proto=headers.get("x-forwarded-proto"),
        now=trio.current_time(),
        query_token=connection.args.get("token") or protocol_token(headers.get("sec-websocket-protocol")))
    if decision.refuse_status is not None:
        log.info("websocket refused status=%d client=%s", decision.refuse_status, decision.client)
        metrics.conversation_refused(f"http_{decision.refuse_status}")
        await connection.refuse(decision.refuse_status)  # before accepting: plain HTTP, nothing upstream called
        return
    if decision.claims is not None:
        log.info("client token accepted client=%s", decision.client)
    if (protocol := chosen_protocol(headers.get("sec-websocket-protocol"))) is not None:
        await connection.accept(protocol)
    browser = connection
    resuming = None
    if state.held is not None:
        cleanly = left_cleanly(connection.scope)
        resuming = ResumeDoor(
            resume=lambda socket, resume: resume_connection(
                state, socket, resume, None if decision.claims is None else identity(decision.claims, decision.client),
                cleanly),
            start=lambda socket, subject, converse: serve_connection(state, nursery, socket, subject, converse,
                                                                      cleanly))
    await doorway.serve(browser, decision, state.upstreams, browser_left=browser_left(connection.scope),
                        resuming=resuming)


def startup_guard(app: QuartTrio) -> StartupGuard:
    return app.extensions["relay_startup"]  # type: ignore[no-any-return]


class _AppOnFirstUse:
    """`relay.web:app` for `hypercorn -k trio relay.web:app`: the app is built, reading the environment and `.env`,
    when hypercorn first calls it (its lifespan start-up), not when the module is imported, so importing `relay.web`
    has no side effects. A configuration error prints one line and ends the process with status 1."""

    def __init__(self) -> None:
        self._app: QuartTrio | None = None

    def _build(self) -> QuartTrio:
        if self._app is None:
            try:
                self._app = create_app(own_shutdown=True)
            except ConfigError as exc:
                end_process(str(exc), exc)  # not SystemExit: hypercorn would report it from inside its task group
        return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._build()(scope, receive, send)

    @property
    def direct_websocket(self) -> Any:
        """The built app's `/ws` on its own socket, for hypercorn's connection handler (relay.server.direct_ws)."""
        return getattr(self._app, "direct_websocket", None)

    @property
    def websocket_limits(self) -> Any:
        """The built app's WebSocket message bounds, for hypercorn's streams (relay.server.ws_limits)."""
        return getattr(self._app, "websocket_limits", None)


app = _AppOnFirstUse()
