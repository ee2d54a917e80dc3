"""The QuartTrio app, read top to bottom: `create_app` builds it (settings, logging, the ASGI guards, who gets in, the
state, the start-up of the upstreams, `/ws`, the page and the probes); `conversation_socket` is `/ws`, which hands the
socket to `relay.nursery.run_conversation` (no conversation logic here). The parts live in `relay.server`: `state`
(`RelayState`), `fleet_admission.choose_seating` (seats, registry, avatar budget), `upstreams` (what the lifespan
starts and stops), `page` (the page, its files, `client-config.json`, its headers) and `probes` (health, readiness,
metrics).

`hypercorn -k trio relay.web:app` serves it; `app` builds the real app on first use, reading the environment and
`.env` then, so a configuration error stops the server with a message instead of a traceback. That app also watches
for hypercorn's shutdown and its parent's death itself and drains (`relay.server.hosted`), as `avatar-relay serve`
drains the app it serves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from quart import abort, websocket
from quart_trio import QuartTrio

from relay.config import ConfigError, Settings
from relay.conversation.endings import BrowserSocket, ConversationOver, tell_browser_and_close
from relay.conversation.link import BrowserLink
from relay.net.http_keepalive import KeepAliveGuard
from relay.nursery import Grant, run_conversation
from relay.ops.fleet import Fleet
from relay.ops.logs import configure_logging, set_worker
from relay.ops.metrics import RelayMetrics
from relay.ops.transcripts import TranscriptWriter
from relay.protocol import browser as bp
from relay.providers import table as providers
from relay.server.admission import OVER_RATE, AdmissionRefused
from relay.server.auth import Gate, HandshakeDecision, TokenClaims, TokenError, auth_problem, identity
from relay.server.departures import NoteDepartures, browser_left, left_cleanly, note_browser_close_codes
from relay.server.fleet_admission import choose_seating, watch_seating
from relay.server.page import add_page_routes
from relay.server.probes import add_probe_routes
from relay.server.resuming import held_table, resume_connection, serve_connection
from relay.server.startup import StartupGuard, end_process
from relay.server.state import RelayState, relay_state
from relay.server.upstreams import conversation_hooks, start_upstreams, stop_upstreams

if TYPE_CHECKING:
    from relay.server.workers import WorkerRole

log = logging.getLogger("relay.web")

__all__ = ["QuartBrowser", "RelayState", "app", "create_app", "relay_state", "startup_guard"]


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
    if (secret := settings.relay_auth_secret) is not None and len(secret.get_secret_value().encode()) < 32:
        log.warning("RELAY_AUTH_SECRET is shorter than 32 bytes, below what HS256 calls for (RFC 7518 3.2): "
                    "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    app = QuartTrio(__name__, static_folder=None)
    app.asgi_app = NoteDepartures(KeepAliveGuard(app.asgi_app))  # type: ignore[method-assign]
    note_browser_close_codes()  # a clean close (1000) ends a resumable conversation; a dropped one is held

    fleet = Fleet.from_settings(settings)
    seating = choose_seating(settings, fleet, worker)
    gate = Gate(settings)
    gate.allow_start = seating.keeper.allow_start
    state = app.extensions["relay"] = RelayState(settings, seating.registry, gate=gate, worker=worker, fleet=fleet,
                                                 avatar_budget=seating.avatar_budget)
    metrics = state.metrics = RelayMetrics(ready=lambda: state.ready, avatar=providers.chosen_name(settings),
                                           demo_mode=settings.demo_mode)
    watch_seating(metrics, seating)
    state.held = held = held_table(state)
    if held is not None:
        metrics.watch_held(lambda: held.held_count)
    if settings.relay_transcripts_dir:
        state.transcripts = TranscriptWriter(settings.relay_transcripts_dir)
    hooks = conversation_hooks(app, state, metrics)

    # A start-up failure is one line and exit status 1 under every entry point (relay.server.startup).
    guard = app.extensions["relay_startup"] = StartupGuard(settings, end_process_on_failure=own_shutdown)
    guard.install(app, partial(start_upstreams, app, state, seating.keeper, hooks, own_shutdown=own_shutdown))
    app.after_serving(partial(stop_upstreams, state))

    @app.websocket("/ws", endpoint="conversation_socket")
    async def ws() -> None:
        await conversation_socket(state, app.nursery)

    add_page_routes(app, settings)
    add_probe_routes(app, state)
    return app


async def conversation_socket(state: RelayState, nursery: trio.Nursery) -> None:
    """`/ws`: check the handshake (origin, token, start rate: refused before accepting, as plain HTTP), take a seat,
    and run one conversation on the socket until it ends; a refusal after accepting is told to the browser. Cancelled
    when the browser leaves (quart cancels the handler) or by the drain. With RELAY_RESUME_WINDOW > 0 the
    conversation runs in `nursery` (the app's) so that a dropped connection does not end it, and a first frame
    `resume` takes a held one over (`relay.server.resuming`)."""
    assert state.upstreams is not None and state.gate is not None and state.metrics is not None
    gate, metrics = state.gate, state.metrics
    headers = websocket.headers
    decision = await gate.check_handshake(
        origin=headers.get("origin"), host=headers.get("host"), remote_addr=websocket.remote_addr,
        forwarded_for=headers.get("x-forwarded-for"), query_token=websocket.args.get("token"),
        now=trio.current_time())
    if decision.refuse_status is not None:
        log.info("websocket refused status=%d client=%s", decision.refuse_status, decision.client)
        metrics.conversation_refused(f"http_{decision.refuse_status}")
        abort(decision.refuse_status)  # before accepting: a plain HTTP answer, nothing upstream was called
    if decision.claims is not None:
        log.info("client token accepted client=%s", decision.client)
    browser = QuartBrowser(state.settings.relay_send_timeout)
    if state.held is None or decision.over_rate:  # over the start rate: refused at once, as without resuming
        await _converse(state, decision, browser, browser_left(websocket.scope))
        return
    # Resuming on: the first frame says whether this connection starts a conversation or resumes one.
    first: str | bytes | None = None
    with trio.move_on_after(state.settings.relay_idle_timeout) as waiting:
        first = await browser.receive()
    try:
        if waiting.cancelled_caught:
            raise ConversationOver.failed("timeout", "no 'start' message received")
        resume = bp.parse_resume(first)
    except bp.ProtocolError as exc:
        await tell_browser_and_close(browser, ConversationOver.failed("protocol_error", str(exc)))
        return
    except ConversationOver as over:
        await tell_browser_and_close(browser, over)
        return
    subject = None if decision.claims is None else identity(decision.claims, decision.client)
    if resume is not None:
        await resume_connection(state, browser, resume, subject, left_cleanly(websocket.scope))
        return
    await serve_connection(state, nursery, browser, first, subject,
                           lambda link, gone: _converse(state, decision, link, gone),
                           left_cleanly(websocket.scope))


async def _converse(state: RelayState, decision: HandshakeDecision, browser: BrowserSocket,
                    left: Callable[[], bool]) -> None:
    """Take a seat and run one conversation on `browser` until it ends; a refusal is told to the browser."""
    assert state.upstreams is not None and state.gate is not None and state.metrics is not None
    upstreams, gate, metrics, registry = state.upstreams, state.gate, state.metrics, state.registry
    try:
        if decision.over_rate:
            raise AdmissionRefused(OVER_RATE, why="start_rate")
        async with registry.admit(decision.client) as shutdown_scope:
            async def authorize(token: str | None) -> Grant:
                try:
                    claims = await gate.verify(token)
                except TokenError as exc:
                    raise ConversationOver.failed("unauthorized", str(exc)) from None
                try:
                    await registry.reassign(shutdown_scope, identity(claims, decision.client))
                except AdmissionRefused as exc:
                    metrics.admission_refused(exc.why)
                    raise ConversationOver.failed(exc.code, str(exc)) from None
                log.info("client token accepted client=%s", identity(claims, decision.client))
                if isinstance(browser, BrowserLink):
                    browser.subject = identity(claims, decision.client)  # a resume must come from the same
                return _grant(claims)

            await run_conversation(browser, upstreams, shutdown_scope,
                                   authorize=authorize if decision.check_start else None,
                                   grant=None if decision.claims is None else _grant(decision.claims),
                                   browser_left=left)
    except AdmissionRefused as exc:
        metrics.conversation_refused(exc.code)
        metrics.admission_refused(exc.why)
        log.info("conversation refused: %s", exc)
        await tell_browser_and_close(browser, ConversationOver.failed(exc.code, str(exc)))


def _grant(claims: TokenClaims) -> Grant:
    return Grant(max_duration=claims.max_duration, overrides=claims.overrides)


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


app = _AppOnFirstUse()
