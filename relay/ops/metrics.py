"""Prometheus metrics for one relay app: what operators put on a dashboard.

`RelayMetrics` owns a private `CollectorRegistry` (so each app — and each test — has its own numbers) and is fed
from four places, none of them per audio frame:
- the conversation's hooks (`ConversationHooks.on_start` / `on_ready` / `on_end`): counts, setup time, duration,
  endings;
- `observe_agent(open_agent)`: wraps the agent connection; sees each agent event (pings, errors, the first audio
  of each turn) and counts agent audio in the conversation's plain-int `Traffic`;
- `session_hooks` (relay.avatars.hooks, run by the one `HookedProvider`; the providers stay untouched): counts
  sessions created, stopped, failed to stop, refused, and times how long the agent's words take to reach the avatar;
- the hot path (`pump_browser_to_agent`) only adds to two ints in `ConversationRecord.traffic`: the byte and frame
  counters are summed at scrape time from the ended conversations' totals plus the live ones, so they are exact
  and current without a metrics call per frame.

The wrappers and hooks find their conversation through `relay.conversation.record.current_conversation`, set once
per conversation. This module must never see audio payloads or secrets, never block, and never raise into a
conversation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from relay import __version__
from relay._util import leaves
from relay.avatars import (
    AudioTaker,
    AvatarError,
    AvatarInfo,
    AvatarSession,
    AvatarSessionEnded,
    SessionRotated,
)
from relay.avatars.hooks import SessionHooks, SessionOutcome
from relay.conversation.record import ConversationRecord, Traffic, current_conversation
from relay.elevenlabs import AgentConnection
from relay.ops.fleet_sessions import FleetSessions
from relay.ops.journal import Journal
from relay.protocol import elevenlabs as el
from relay.protocol.audio import AudioFormat
from relay.protocol.client_metrics import ClientMetrics, DroppedClientMetrics

log = logging.getLogger("relay.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

SETUP_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0)
PING_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)

# Turns whose speech has not reached the avatar yet (interrupted turns never do); bounded per conversation.
_MAX_PENDING_TURNS = 16


# ----------------------------------------------------------------------------------------------------------------------
# Per-conversation state the wrappers share


@dataclass
class _Live:
    """One open conversation, as the metrics see it."""

    record: ConversationRecord
    text_heard: dict[int, float] = field(default_factory=dict)  # turn -> when the agent's text arrived
    audio_heard: dict[int, float] = field(default_factory=dict)  # turn -> when its first audio arrived
    last_audio_turn: int | None = None

    def hear(self, pending: dict[int, float], turn: int) -> None:
        pending[turn] = time.monotonic()
        if len(pending) > _MAX_PENDING_TURNS:
            del pending[min(pending)]


# ----------------------------------------------------------------------------------------------------------------------
# The metrics


class RelayMetrics:
    """Every metric of one relay app, in its own registry. `render()` is the `/metrics` body."""

    def __init__(self, *, ready: Callable[[], bool] | None = None, avatar: str = "none",
                 demo_mode: bool = False, subjects: int = 0) -> None:
        self.registry = CollectorRegistry()
        self._live: dict[str, _Live] = {}
        self._ended_traffic = Traffic()
        r = self.registry
        info = Gauge("avatar_relay_info", "Constant 1, labelled with the relay's version and configuration.",
                     ["version", "avatar", "demo_mode"], registry=r)
        info.labels(__version__, avatar, str(demo_mode).lower()).set(1)
        ready_gauge = Gauge("avatar_relay_ready", "1 while /readyz says ready, else 0.", registry=r)
        ready_gauge.set_function(lambda: 1.0 if ready is None or ready() else 0.0)
        open_gauge = Gauge("avatar_relay_conversations_open", "Conversations open now.", registry=r)
        open_gauge.set_function(lambda: float(len(self._live)))
        self.started = Counter("avatar_relay_conversations_started", "Conversations opened (WebSocket accepted "
                               "and admitted).", registry=r)
        self.ended = Counter("avatar_relay_conversations_ended", "Conversations ended, by reason (the `ended` "
                             "reason the browser was sent; client_gone when it left first).", ["reason"], registry=r)
        self.refused = Counter("avatar_relay_conversations_refused", "Conversations refused before they started, "
                               "by reason.", ["reason"], registry=r)
        self.degraded = Counter("avatar_relay_conversations_degraded", "Conversations that went on voice-only "
                                "because the avatar was unavailable or its session ended.", registry=r)
        self.setup = Histogram("avatar_relay_setup_seconds", "From the browser's socket opening to `ready` (agent "
                               "and avatar both up).", buckets=SETUP_BUCKETS, registry=r)
        self.duration = Histogram("avatar_relay_conversation_duration_seconds", "Conversation lifetime, socket "
                                  "open to close.", buckets=DURATION_BUCKETS, registry=r)
        self.text_to_avatar = Histogram("avatar_relay_text_to_avatar_seconds", "Text mode: from the agent's reply "
                                        "text arriving to the avatar accepting it (speak task answered).",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.audio_to_avatar = Histogram("avatar_relay_audio_to_avatar_seconds", "Audio mode: from a reply's first "
                                         "audio chunk arriving from the agent to it being handed to the avatar.",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.agent_ping = Histogram("avatar_relay_agent_ping_seconds", "Round trip ElevenLabs reports in its pings "
                                    "(ping_ms / 1000).", buckets=PING_BUCKETS, registry=r)
        self.sessions_created = Counter("avatar_relay_avatar_sessions_created", "Avatar sessions opened.",
                                        ["provider"], registry=r)
        self.sessions_stopped = Counter("avatar_relay_avatar_sessions_stopped", "Avatar sessions stopped "
                                        "(confirmed by the provider, or already gone).", ["provider"], registry=r)
        self.sessions_stop_failed = Counter("avatar_relay_avatar_sessions_stop_failed", "Avatar sessions whose "
                                            "stop failed or timed out: they may run (and bill) until the "
                                            "provider's idle timeout.", ["provider"], registry=r)
        self.upstream_errors = Counter("avatar_relay_upstream_errors", "Errors from ElevenLabs and the avatar "
                                       "providers, by upstream, kind (reason) and code (HTTP status, close code "
                                       "or provider code; empty when none).", ["upstream", "kind", "code"],
                                       registry=r)
        self.admission_refusals = Counter("avatar_relay_admission_refusals", "Conversations refused, and avatar "
                                          "sessions not asked for, by the limit that said no: max_conversations, "
                                          "per_client, start_rate, shutdown, redis_unavailable (the fleet's outage "
                                          "policy), avatar_budget (RELAY_MAX_AVATAR_SESSIONS: voice-only).",
                                          ["reason"], registry=r)
        self.failovers = Counter("avatar_relay_avatar_failovers", "Avatar set-ups moved on to the next provider of "
                                 "RELAY_AVATAR's list, by the provider that refused and why (capacity: the relay's "
                                 "own budget, RELAY_MAX_AVATAR_SESSIONS; concurrent_limit, no_credits, rate_limited, "
                                 "upstream_error, timeout; unauthorized and bad_config: its configuration).",
                                 ["provider", "reason"], registry=r)
        r.register(_TrafficCollector(self))
        self.experience = ClientExperience(r)  # the page's timings (`client_metrics`); `subjects`: AvatarTime's
        self.avatar_time = AvatarTime(r, subjects)

    # ------------------------------------------------------------------------------------------------------------------
    # Scrape

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (the `/metrics` body)."""
        return generate_latest(self.registry)

    def traffic_totals(self) -> Traffic:
        """Audio relayed so far: ended conversations plus the live ones, read now."""
        total = Traffic(**{name: getattr(self._ended_traffic, name) for name in Traffic.__slots__})
        for live in self._live.values():
            _add(total, live.record.traffic)
        return total

    # ------------------------------------------------------------------------------------------------------------------
    # Conversation hooks (`ConversationHooks.on_start` / `on_ready` / `on_end`)

    def conversation_started(self, record: ConversationRecord) -> None:
        self._live[record.relay_id] = _Live(record)
        self.started.inc()

    def conversation_ready(self, record: ConversationRecord) -> None:
        if record.ready_at is not None:
            self.setup.observe(record.ready_at - record.started_at)

    def conversation_ended(self, record: ConversationRecord) -> None:
        # Moving the traffic from live to ended happens in one step: scrapes never see a counter go down.
        if self._live.pop(record.relay_id, None) is not None:
            _add(self._ended_traffic, record.traffic)
        self.ended.labels(record.reason).inc()
        self.duration.observe(time.monotonic() - record.started_at)
        if record.degraded:
            self.degraded.inc()

    def observe_fleet_sessions(self, sessions: FleetSessions) -> None:
        """Show the fleet session registry's counters (lease expiries, takeovers, their stops) and what this relay
        holds in it, read at scrape time."""
        self.registry.register(_FleetSessionsCollector(sessions))

    def conversation_refused(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def avatar_failover(self, provider: str, reason: str) -> None:
        """`provider` refused an avatar session for `reason` and the next of the list is tried."""
        self.failovers.labels(provider, reason).inc()

    def admission_refused(self, reason: str) -> None:
        self.admission_refusals.labels(reason).inc()

    def watch_fleet(self, *, healthy: Callable[[], bool] | None = None, seats: Callable[[], float] | None = None,
                    seats_held: Callable[[], float] | None = None, avatars: Callable[[], float] | None = None,
                    avatars_held: Callable[[], float] | None = None) -> None:
        """Gauges of the fleet's shared state (read at scrape time, never I/O): Redis healthy, the fleet's seats
        and avatar seats as Redis last said, and those this relay holds. Only those given are exposed."""
        r = self.registry
        for name, doc, read in (
                ("avatar_relay_fleet_redis_healthy", "1 while the fleet's Redis answers, else 0.",
                 None if healthy is None else (lambda: 1.0 if healthy() else 0.0)),
                ("avatar_relay_fleet_seats_taken", "Conversations open in the whole fleet (as Redis last said).",
                 seats),
                ("avatar_relay_fleet_seats_held", "Conversation seats this relay holds in the fleet.", seats_held),
                ("avatar_relay_fleet_avatar_sessions", "Avatar-budget seats taken in the whole fleet (as Redis "
                 "last said).", avatars),
                ("avatar_relay_avatar_sessions_held", "Avatar-budget seats (RELAY_MAX_AVATAR_SESSIONS) this relay "
                 "holds: its avatar sessions being created, running or stopping.", avatars_held)):
            if read is not None:
                Gauge(name, doc, registry=r).set_function(read)

    def watch_held(self, held: Callable[[], int]) -> None:
        """The conversations held for a resume now (their browser's connection dropped; each keeps its seats)."""
        Gauge("avatar_relay_conversations_held", "Conversations held for a resume now: open, their browser's "
              "connection dropped (RELAY_RESUME_WINDOW).", registry=self.registry).set_function(lambda: float(held()))
        self.resume_handovers = Counter(
            "avatar_relay_resume_handovers_total", "Resumes this worker took and relayed to the worker of `serve "
            "--workers N` that holds their conversation (relay.server.handover).", registry=self.registry)

    def watch_journal(self, journal: Journal) -> None:
        """`avatar_relay_journals_moved_aside`: damaged session journals lying in the state directory, as last
        counted (at start-up and at every sweep of the reaper; never I/O at scrape time)."""
        Gauge("avatar_relay_journals_moved_aside", "Damaged session journals moved aside in the state directory "
              "(sessions.sqlite3.damaged-*): sessions they listed may still run. Run `avatar-relay reap`, then "
              "delete them.", registry=self.registry).set_function(lambda: float(journal.moved_aside_count))

    def upstream_error(self, upstream: str, kind: str, code: object = None, message: str = "") -> None:
        """Count one upstream error and log it (with the conversation's ids, from the logging context)."""
        code_text = "" if code is None else str(code)
        self.upstream_errors.labels(upstream, kind, code_text).inc()
        log.warning("upstream error upstream=%s kind=%s code=%s message=%s", upstream, kind, code_text or "-",
                    message or "-")

    def _current(self) -> _Live:
        record = current_conversation.get()
        if isinstance(record, ConversationRecord):
            live = self._live.get(record.relay_id)
            if live is not None:
                return live
            return _Live(record)
        return _Live(ConversationRecord(relay_id="-"))

    # ------------------------------------------------------------------------------------------------------------------
    # The agent wrapper and the avatar session hooks

    def observe_agent(self, open_agent: Callable[..., AbstractAsyncContextManager[AgentConnection]]
                      ) -> Callable[..., AbstractAsyncContextManager[AgentConnection]]:
        """`open_agent` (same signature) whose failures to open are counted and whose connection is observed."""

        @asynccontextmanager
        async def observed_open_agent(*args: Any, **kwargs: Any) -> AsyncIterator[AgentConnection]:
            live = self._current()
            opened = False
            try:
                async with open_agent(*args, **kwargs) as agent:
                    opened = True
                    yield cast(AgentConnection, _ObservedAgent(agent, live, self))
            except el.AgentUnavailable as exc:
                if not opened:
                    self.upstream_error("elevenlabs", exc.reason, exc.status_code, str(exc))
                raise
            except el.AgentRefused as exc:
                if not opened:
                    self.upstream_error("elevenlabs", exc.ending.kind, exc.close_code, exc.message)
                raise
            except el.AgentClosed as exc:
                if not opened:
                    self.upstream_error("elevenlabs", "closed", exc.code, exc.reason)
                raise
            except el.AgentProtocolError as exc:
                if not opened:
                    self.upstream_error("elevenlabs", "protocol", None, str(exc))
                raise

        return observed_open_agent

    def session_hooks(self, provider: str) -> SessionHooks:
        """Hooks for one avatar session: counted created, stopped, failed to stop, refused and ended (with their
        upstream codes), and observed (`_ObservedSession`) to time the agent's words reaching the avatar."""
        live = self._current()

        def opened(session: AvatarSession) -> AvatarSession:
            self.sessions_created.labels(provider).inc()
            live.record.avatar_provider = session.info.provider
            live.record.avatar_session_id = session.info.session_id
            return cast(AvatarSession, _ObservedSession(session, live, self))

        async def closed(outcome: SessionOutcome) -> None:
            if outcome.error is not None:
                for leaf in leaves(outcome.error):
                    if isinstance(leaf, SessionRotated):  # replaced before its limit: not an error
                        break
                    if isinstance(leaf, AvatarError):
                        kind = "session_ended" if isinstance(leaf, AvatarSessionEnded) else leaf.reason
                        self.upstream_error(provider, kind, leaf.upstream_code, leaf.message)
                        break
            if not outcome.opened:
                return
            if outcome.stop_failed:  # the provider reported its last stop attempt as failed (on_stop_failed)
                self.sessions_stop_failed.labels(provider).inc()
            else:
                self.sessions_stopped.labels(provider).inc()

        return SessionHooks(on_opened=opened, on_closed=closed)


def _add(total: Traffic, more: Traffic) -> None:
    total.audio_in_frames += more.audio_in_frames
    total.audio_in_bytes += more.audio_in_bytes
    total.audio_out_frames += more.audio_out_frames
    total.audio_out_bytes += more.audio_out_bytes


class _TrafficCollector:
    """Audio frame and byte counters, read from the conversations' plain ints at scrape time."""

    def __init__(self, metrics: RelayMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        total = self._metrics.traffic_totals()
        frames = CounterMetricFamily("avatar_relay_audio_frames", "Audio frames relayed: upstream = browser to "
                                     "agent, downstream = agent to relay (then browser and/or avatar).",
                                     labels=["direction"])
        frames.add_metric(["upstream"], total.audio_in_frames)
        frames.add_metric(["downstream"], total.audio_out_frames)
        size = CounterMetricFamily("avatar_relay_audio_bytes", "Audio bytes relayed (raw audio, before any "
                                   "encoding), by direction as for avatar_relay_audio_frames_total.",
                                   labels=["direction"])
        size.add_metric(["upstream"], total.audio_in_bytes)
        size.add_metric(["downstream"], total.audio_out_bytes)
        return [frames, size]


class _FleetSessionsCollector:
    """The fleet session registry's numbers (relay.ops.fleet_sessions), read at scrape time."""

    def __init__(self, sessions: FleetSessions) -> None:
        self._sessions = sessions

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        stats = self._sessions.stats
        expiries = CounterMetricFamily("avatar_relay_fleet_lease_expiries", "Relays of the fleet found dead (lease "
                                       "expired with avatar sessions registered) by this relay, which took their "
                                       "sessions over; each dead relay is counted by one relay only.",
                                       value=stats.lease_expiries)
        taken = CounterMetricFamily("avatar_relay_fleet_sessions_taken_over", "Avatar sessions this relay took over "
                                    "from dead relays of the fleet.", value=stats.taken_over)
        stops = CounterMetricFamily("avatar_relay_fleet_orphan_stops", "Stops of orphaned fleet sessions (taken "
                                    "over, or this relay's own failed stops) by this relay's sweep, by result; a "
                                    "failed one is retried at the next sweep.", labels=["result"])
        stops.add_metric(["stopped"], stats.takeover_stopped)
        stops.add_metric(["failed"], stats.takeover_failed)
        held = GaugeMetricFamily("avatar_relay_fleet_sessions_held", "Avatar sessions this relay's conversations "
                                 "hold in the fleet registry now.", value=self._sessions.held)
        unsynced = GaugeMetricFamily("avatar_relay_fleet_sessions_unsynced", "Session changes (opened, stopped, "
                                     "failed to stop) this relay keeps in memory because Redis was unreachable; "
                                     "written when it is back.", value=self._sessions.unsynced)
        return [expiries, taken, stops, held, unsynced]


# ----------------------------------------------------------------------------------------------------------------------
# The agent, observed


class _ObservedAgent:
    """An `AgentConnection` whose events are observed on the way to the pump. `send` is the connection's own
    bound method (no extra call on the audio path)."""

    def __init__(self, agent: AgentConnection, live: _Live, metrics: RelayMetrics) -> None:
        self._agent = agent
        self._live = live
        self._metrics = metrics
        self._traffic = live.record.traffic
        self._closed_counted = False
        self.metadata = agent.metadata
        self.aclose = agent.aclose
        self.send: Callable[[str], Any] = agent.send

    async def receive(self) -> el.ServerEvent:
        """The agent's next event, observed. Same blocking, cancellation and errors as `AgentConnection`."""
        try:
            event = await self._agent.receive()
        except el.AgentClosed as exc:
            if not self._closed_counted and exc.code != 1000:
                self._closed_counted = True
                self._metrics.upstream_error("elevenlabs", "closed", exc.code, exc.reason)
            raise
        except el.AgentProtocolError as exc:
            self._metrics.upstream_error("elevenlabs", "protocol", None, str(exc))
            raise
        kind = type(event)
        live = self._live
        if kind is el.AgentAudio:
            audio = cast(el.AgentAudio, event)
            self._traffic.audio_out_frames += 1
            self._traffic.audio_out_bytes += len(audio.audio)
            if audio.event_id != live.last_audio_turn:
                live.last_audio_turn = audio.event_id
                live.hear(live.audio_heard, audio.event_id)
        elif kind is el.Ping:
            ping_ms = cast(el.Ping, event).ping_ms
            if ping_ms is not None:
                self._metrics.agent_ping.observe(ping_ms / 1000.0)
        elif kind is el.AgentResponse:
            live.hear(live.text_heard, cast(el.AgentResponse, event).event_id)
        elif kind is el.AgentErrorEvent:
            error = cast(el.AgentErrorEvent, event)
            if not el.is_normal_end(error):  # max duration is a normal end, not an upstream error
                self._metrics.upstream_error("elevenlabs", "error_event", error.code, error.message)
        return event


# ----------------------------------------------------------------------------------------------------------------------
# The avatar session, observed


class _ObservedSession:
    """An `AvatarSession` that times the agent's words reaching the avatar (first chunk of each turn)."""

    def __init__(self, session: AvatarSession, live: _Live, metrics: RelayMetrics) -> None:
        self._session = session
        self._live = live
        self._metrics = metrics
        self.info: AvatarInfo = session.info
        self.takes_audio: bool = session.takes_audio
        self.keep_alive_interval: float = session.keep_alive_interval
        self.end_turn = session.end_turn
        self.interrupt = session.interrupt
        self.keep_alive = session.keep_alive
        self.wait_connected = session.wait_connected
        self.set_listening = session.set_listening
        taker: AudioTaker | None = getattr(session, "audio_taker", None)
        self.audio_taker: AudioTaker | None = None if taker is None else _ObservedTaker(taker, live, metrics)

    async def speak_text(self, text: str, turn: int) -> None:
        await self._session.speak_text(text, turn)
        heard = self._live.text_heard.pop(turn, None)
        if heard is not None:
            self._metrics.text_to_avatar.observe(time.monotonic() - heard)

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None:
        await self._session.speak_audio(audio, audio_format, turn)
        _observe_first_audio(self._live, self._metrics, turn)


def _observe_first_audio(live: _Live, metrics: RelayMetrics, turn: int) -> None:
    """Audio of `turn` reached the avatar: the time from its first chunk's arrival, once per turn."""
    if live.audio_heard:
        heard = live.audio_heard.pop(turn, None)
        if heard is not None:
            metrics.audio_to_avatar.observe(time.monotonic() - heard)


class _ObservedTaker:
    """An `AudioTaker` (the inline audio path) that times a turn's first chunk reaching the avatar, as
    `_ObservedSession.speak_audio` does for the queued path."""

    def __init__(self, taker: AudioTaker, live: _Live, metrics: RelayMetrics) -> None:
        self._take = taker.take_audio
        self._live = live
        self._metrics = metrics
        self.send_packets = taker.send_packets

    def take_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> tuple[str, list[memoryview]]:
        taken = self._take(audio, audio_format, turn)
        _observe_first_audio(self._live, self._metrics, turn)
        return taken


# ----------------------------------------------------------------------------------------------------------------------
# Where the user is (issue 25 §2) and avatar time (§3): the page's own timings, and the seconds avatar sessions run

# The page's turn timings: a reply heard within a second feels live, beyond three it feels broken.
CLIENT_TURN_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0)
CAPTION_OFFSET_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 5.0)
FREEZE_BUCKETS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
OTHER_SUBJECTS = "~other"  # the subject label of the subjects beyond RELAY_METRICS_SUBJECTS ("~" is in no subject)


class ClientExperience:
    """The page's `client_metrics` reports as histograms per avatar provider (the conversation's, as the relay
    knows it: "none" for voice only), and the reports dropped, by reason. Never sees anything of a report but its
    bounded numbers (relay.protocol.client_metrics)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.speech_to_audio = Histogram(
            "avatar_relay_client_speech_to_audio_seconds", "Measured by the page: from the end of the user's speech "
            "(final user_transcript, or a typed message sent) to the agent's first audio heard.", ["provider"],
            buckets=CLIENT_TURN_BUCKETS, registry=r)
        self.speech_to_mouth = Histogram(
            "avatar_relay_client_speech_to_mouth_seconds", "Measured by the page: from the end of the user's speech "
            "to the first avatar video frame after the avatar's speaking signal (its mouth moving).", ["provider"],
            buckets=CLIENT_TURN_BUCKETS, registry=r)
        self.caption_offset = Histogram(
            "avatar_relay_client_caption_offset_seconds", "Measured by the page: how late a turn's captions are "
            "shown after the words are said (mean over the turn's words).", ["provider"],
            buckets=CAPTION_OFFSET_BUCKETS, registry=r)
        self.freezes = Histogram(
            "avatar_relay_client_video_freeze_seconds", "Measured by the page: each stall of the avatar's video "
            "(no new frame for 500 ms or more while it plays), by its length.", ["provider"],
            buckets=FREEZE_BUCKETS, registry=r)
        self.reports = Counter("avatar_relay_client_metrics_reports", "client_metrics reports taken from pages.",
                               registry=r)
        self.dropped = Counter("avatar_relay_client_metrics_dropped", "client_metrics reports dropped, by reason: "
                               "oversized, malformed, too_frequent (the relay's rate limit).", ["reason"], registry=r)

    def report(self, record: ConversationRecord, report: ClientMetrics | DroppedClientMetrics) -> None:
        """`ConversationHooks.on_client_metrics`: observe a taken report's figures, count a dropped one."""
        if isinstance(report, DroppedClientMetrics):
            self.dropped.labels(report.reason).inc()
            return
        self.reports.inc()
        provider = record.avatar_provider or "none"
        for turn in report.turns:
            for histogram, value in ((self.speech_to_audio, turn.speech_to_audio_ms),
                                     (self.speech_to_mouth, turn.speech_to_mouth_ms),
                                     (self.caption_offset, turn.caption_offset_ms)):
                if value is not None:
                    histogram.labels(provider).observe(value / 1000.0)
        for freeze_ms in report.freezes_ms:
            self.freezes.labels(provider).observe(freeze_ms / 1000.0)


@dataclass
class _RunningSession:
    provider: str
    subject: str
    since: float


class AvatarTime:
    """Seconds of avatar sessions, per provider — what the providers bill — counted from the session's creation
    upstream (or its hand-over, for a provider that does not say) to its close, and read at scrape time (running
    sessions included, so the counter is current and exact). With `subjects` > 0 (RELAY_METRICS_SUBJECTS) also per
    client subject (the token's verified `sub`; "" without one): the first `subjects` subjects seen get their own
    label, the rest share OTHER_SUBJECTS, so the label set stays bounded whatever the clients."""

    def __init__(self, registry: CollectorRegistry, subjects: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.subjects = subjects
        self._clock = clock
        self._running: dict[int, _RunningSession] = {}
        self._ended: dict[tuple[str, str], float] = {}
        self._labelled: set[str] = set()
        self._next = 0
        registry.register(_AvatarTimeCollector(self))

    def _subject_label(self, subject: str | None) -> str:
        if self.subjects <= 0:
            return ""
        label = subject or ""
        if label in self._labelled:
            return label
        if len(self._labelled) < self.subjects:
            self._labelled.add(label)
            return label
        return OTHER_SUBJECTS

    def session_hooks(self, provider: str) -> SessionHooks:
        """Hooks for one avatar session (`MakeHooks`): its clock runs from creation (or hand-over) to close."""
        record = current_conversation.get()
        subject = self._subject_label(record.subject if isinstance(record, ConversationRecord) else None)
        key = self._next
        self._next += 1

        def begin() -> None:
            if key not in self._running:
                self._running[key] = _RunningSession(provider, subject, self._clock())

        async def created(session_id: str) -> None:
            begin()

        def opened(session: AvatarSession) -> AvatarSession:
            begin()
            return session

        async def closed(outcome: SessionOutcome) -> None:
            running = self._running.pop(key, None)
            if running is not None:
                ended = (running.provider, running.subject)
                self._ended[ended] = self._ended.get(ended, 0.0) + self._clock() - running.since

        return SessionHooks(on_created=created, on_opened=opened, on_closed=closed)

    def totals(self) -> dict[tuple[str, str], float]:
        """Seconds so far by (provider, subject label): ended sessions plus the running ones, read now."""
        totals = dict(self._ended)
        now = self._clock()
        for running in self._running.values():
            key = (running.provider, running.subject)
            totals[key] = totals.get(key, 0.0) + now - running.since
        return totals


class _AvatarTimeCollector:
    def __init__(self, time_: AvatarTime) -> None:
        self._time = time_

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        totals = self._time.totals()
        by_provider: dict[str, float] = {}
        for (provider, _), ran in totals.items():
            by_provider[provider] = by_provider.get(provider, 0.0) + ran
        seconds = CounterMetricFamily("avatar_relay_avatar_session_seconds", "Seconds avatar sessions ran (what "
                                      "the providers bill), by provider: from creation upstream to stop, running "
                                      "sessions included.", labels=["provider"])
        for provider, value in sorted(by_provider.items()):
            seconds.add_metric([provider], value)
        families: list[Metric] = [seconds]
        if self._time.subjects > 0:
            per_subject = CounterMetricFamily("avatar_relay_avatar_session_seconds_by_subject", "Seconds avatar "
                                              "sessions ran, by provider and client subject (RELAY_METRICS_SUBJECTS "
                                              f"subjects, then {OTHER_SUBJECTS!r}; \"\": no subject).",
                                              labels=["provider", "subject"])
            for (provider, subject), value in sorted(totals.items()):
                per_subject.add_metric([provider, subject], value)
            families.append(per_subject)
        return families
