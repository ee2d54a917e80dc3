"""Starting the upstream services for the app (its `before_serving`, through `relay.server.startup.StartupGuard`):
the fleet, demo mode's simulators, the one shared HTTP client, the identity provider's keys, the avatar provider
with its hooks (journal and reaper, the fleet's sessions, metrics) and budget, and what the conversations call
(`Upstreams`). Also the conversations' own hooks (metrics, transcripts). Everything it starts runs in the app's
nursery and ends with it; `stop_upstreams` closes what it opened. Once started, the process's start-up heap is
put out of the garbage collector's reach (`settle_heap`).
"""

from __future__ import annotations

import gc
import logging
from functools import partial

import httpx2
from quart_trio import QuartTrio

from relay import __version__
from relay.avatars import AvatarProvider, UnavailableReason
from relay.avatars.budget import BudgetedProvider
from relay.avatars.failover import FailoverProvider
from relay.avatars.hooks import HookedProvider, MakeHooks
from relay.config import Settings
from relay.conversation.record import ConversationRecord
from relay.conversation.spans import avatar_failover
from relay.elevenlabs import open_agent
from relay.nursery import ConversationHooks, Upstreams
from relay.ops import tracing
from relay.ops.fleet_sessions import FleetSessions, SessionEntry
from relay.ops.journal import journal_hooks, open_journal_now, state_dir
from relay.ops.metrics import RelayMetrics
from relay.ops.reaper import reap_periodically
from relay.providers import table as providers
from relay.server.demo import demo_settings
from relay.server.fleet_admission import FleetSeats, SeatKeeper
from relay.server.jwks import JwksCache, http_fetcher
from relay.server.state import RelayState

log = logging.getLogger("relay.web")

# Below the 5 s idle timeout of Node's, uvicorn's and hypercorn's HTTP servers (and so of our simulators): httpx's
# own default is exactly 5 s, and a request sent as the server closes the connection is lost with it, unanswered
# (docs/decisions.md "Upstream keep-alive").
UPSTREAM_KEEPALIVE_EXPIRY = 4.0


def conversation_hooks(app: QuartTrio, state: RelayState, metrics: RelayMetrics) -> ConversationHooks:
    """What each conversation tells the metrics and the transcripts (written in the app's nursery at its end)."""
    transcripts = state.transcripts

    def on_start(record: ConversationRecord) -> None:
        metrics.conversation_started(record)
        state.roster.on_start(record)
        if transcripts is not None:
            transcripts.start(record)

    def on_end(record: ConversationRecord) -> None:
        metrics.conversation_ended(record)
        if transcripts is not None:
            app.nursery.start_soon(transcripts.write, record)

    return ConversationHooks(
        on_start=on_start, on_ready=metrics.conversation_ready, on_end=on_end,
        on_agent_event=None if transcripts is None else transcripts.agent_event,
        on_user_text=None if transcripts is None else transcripts.user_text,
        on_client_metrics=metrics.experience.report)


def upstream_http_client() -> httpx2.AsyncClient:
    """The process's one HTTP client to the avatar APIs, ElevenLabs' REST calls and the identity provider (traced
    when OTEL_TRACES_EXPORTER is set). Connections are kept; one idle longer than UPSTREAM_KEEPALIVE_EXPIRY
    seconds is not reused but closed."""
    limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=200,
                           keepalive_expiry=UPSTREAM_KEEPALIVE_EXPIRY)
    return httpx2.AsyncClient(timeout=httpx2.Timeout(10.0, pool=5.0), limits=limits,
                              headers={"user-agent": f"avatar-relay/{__version__}"},
                              transport=tracing.http_transport(limits))


async def start_upstreams(app: QuartTrio, state: RelayState, keeper: SeatKeeper, hooks: ConversationHooks, *,
                          own_shutdown: bool) -> None:
    """Start everything the conversations need, in `app.nursery`, and set `state.upstreams` (the relay is then
    `started`). Joins the fleet first (a Redis that does not answer stops the start-up before anything is
    admitted). `own_shutdown`: also watch for hypercorn's shutdown (`relay.server.hosted`)."""
    settings, metrics, worker = state.settings, state.metrics, state.worker
    assert metrics is not None
    if state.fleet is not None:
        await app.nursery.start(state.fleet.serve)
        if isinstance(keeper, FleetSeats):
            await app.nursery.start(keeper.serve)
    effective = await _effective_settings(app, state)
    http = upstream_http_client()
    if settings.relay_auth_jwks_url and state.gate is not None:
        state.gate.jwks = jwks = JwksCache(http_fetcher(http, settings.relay_auth_jwks_url),
                                           min_interval=settings.relay_auth_jwks_min_interval,
                                           url=settings.relay_auth_jwks_url)
        if state.gate.required:
            app.nursery.start_soon(jwks.fetch_at_startup)
    provider = await _hooked_provider(app, state, effective, http, metrics)
    if state.transcripts is not None:
        await state.transcripts.prepare()
    if worker is not None:
        from relay.server.worker_metrics import serve_own_metrics

        await app.nursery.start(serve_own_metrics, worker.metrics_socket(worker.index), metrics.render)
        if state.held is not None:
            from relay.server.handover import serve_handovers
            from relay.server.resuming import resume_connection

            await app.nursery.start(serve_handovers, worker.handover_socket(worker.index),
                                    partial(resume_connection, state, relayed=True), settings.relay_max_frame_bytes)
    state.upstreams = Upstreams(settings=effective, http=http, provider=provider,
                                open_agent=metrics.observe_agent(open_agent), hooks=hooks,
                                session_limits=providers.session_limits(effective))
    if own_shutdown:
        from relay.server.hosted import host_links, watch_host

        app.nursery.start_soon(watch_host, state.registry, settings, host_links())
    settle_heap()


_heap_settled = False


def settle_heap() -> None:
    """Once per process, when the relay has started: collect, then move everything alive — the modules, the app,
    its settings, clients and simulators, over 100,000 objects that live as long as the process — out of the garbage
    collector's reach (`gc.freeze`). A full collection then walks only what the conversations made: every
    conversation waits through it, and walking the start-up heap too made it a 110-180 ms pause, the relay's worst
    forwarding latency (docs/performance.md, round 7). Objects frozen here are still freed by reference counting;
    only a cycle among them would be kept, and they are the process's own for its lifetime anyway."""
    global _heap_settled
    if _heap_settled:
        return
    _heap_settled = True
    gc.collect()
    gc.freeze()


async def _effective_settings(app: QuartTrio, state: RelayState) -> Settings:
    """The settings the upstreams are called with: as configured, or in demo mode pointed at the simulators, which
    start here."""
    settings = state.settings
    if not settings.demo_mode:
        return settings
    urls = await app.nursery.start(partial(providers.serve_simulators, "127.0.0.1", demo=True))
    state.simulators = urls
    effective = demo_settings(settings, urls)
    log.info("demo mode: no API keys set, running on the built-in simulators (avatar=%s) %s",
             providers.chosen_name(effective), " ".join(f"{name}={url}" for name, url in urls.items()))
    return effective


async def _hooked_provider(app: QuartTrio, state: RelayState, effective: Settings, http: httpx2.AsyncClient,
                           metrics: RelayMetrics) -> AvatarProvider | None:
    """The listed avatar providers, each with its own session hooks (the journal's row and the fleet's sessions
    with that provider's base URL, the metrics) and, outside them, its own budget; more than one are handed, in
    order, to a `FailoverProvider` (the conversation's avatar from the first that starts). None for voice only.
    Demo sessions die with the in-process simulators: nothing is journaled, reaped or shared with a fleet."""
    settings = state.settings
    made = providers.make_providers(effective, http)
    if not made:
        return None
    if state.fleet is not None and not settings.demo_mode:
        async def stop_session(entry: SessionEntry) -> None:
            await providers.stop_by_id(effective, http, entry.provider, entry.session_id, entry.base_url)

        state.fleet_sessions = FleetSessions(state.fleet, stop_session)
        metrics.observe_fleet_sessions(state.fleet_sessions)
    if settings.relay_journal and not settings.demo_mode:
        state.journal = await open_journal_now(state_dir(settings))
        metrics.watch_journal(state.journal)
        app.nursery.start_soon(reap_periodically, effective, http, state.journal, state.fleet_sessions)
    if state.fleet_sessions is not None:
        app.nursery.start_soon(state.fleet_sessions.serve)
    chains = [tracing.traced(_chain(provider, state, effective, metrics)) for provider in made]
    if len(chains) == 1:
        return chains[0]

    def moved_on(name: str, reason: UnavailableReason) -> None:
        metrics.avatar_failover(name, reason)
        avatar_failover(name, reason)

    return FailoverProvider(chains, settings.relay_setup_timeout, on_moved_on=moved_on)


def _chain(provider: AvatarProvider, state: RelayState, effective: Settings, metrics: RelayMetrics
           ) -> AvatarProvider:
    """One provider with its hooks (the journal's row, then the fleet's, both with its own base URL, then the
    metrics) and, outside them, its budget (a session refused for want of a seat was never asked of it)."""
    url = providers.base_url(effective, provider.name)
    session_hooks: list[MakeHooks] = []
    if state.journal is not None:
        session_hooks.append(journal_hooks(state.journal, url))
    if state.fleet_sessions is not None:
        # Registered alongside the creation call, right after the journal's row.
        session_hooks.append(state.fleet_sessions.hooks(url))
    session_hooks.append(metrics.session_hooks)
    session_hooks.append(state.roster.session_hooks)  # which session each conversation holds, for how long (admin)
    session_hooks.append(metrics.avatar_time.session_hooks)
    hooked: AvatarProvider = HookedProvider(provider, session_hooks)
    budget = state.avatar_budgets.get(provider.name)
    if budget is not None:
        hooked = BudgetedProvider(hooked, budget, state.settings.relay_avatar_seat_wait,
                                  on_refused=lambda: metrics.admission_refused("avatar_budget"))
    return hooked


async def stop_upstreams(state: RelayState) -> None:
    """The app's `after_serving`: close the shared HTTP client and the journal."""
    if state.upstreams is not None:
        await state.upstreams.http.aclose()
    if state.journal is not None:
        state.journal.close()
