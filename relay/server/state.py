"""What the served app holds (`RelayState`, `app.extensions["relay"]`) and what `/readyz` reads from it. Plain data
and two properties: no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from quart_trio import QuartTrio

from relay.avatars.budget import AvatarBudget
from relay.config import Settings
from relay.nursery import Upstreams
from relay.ops.fleet import Fleet
from relay.ops.fleet_sessions import FleetSessions
from relay.ops.journal import Journal
from relay.ops.metrics import RelayMetrics
from relay.ops.transcripts import TranscriptWriter
from relay.server.admission import Registry
from relay.server.auth import Gate
from relay.server.jwks import JwksCache
from relay.server.resume import HeldTable
from relay.server.roster import Roster
from relay.sim.runner import SimulatorURLs

if TYPE_CHECKING:
    from relay.server.workers import WorkerRole


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
    avatar_budgets: dict[str, AvatarBudget] = field(default_factory=dict)  # RELAY_MAX_AVATAR_SESSIONS, by provider
    fleet_sessions: FleetSessions | None = None  # with a fleet and an avatar: the fleet's session registry
    held: HeldTable | None = None  # with RELAY_RESUME_WINDOW > 0: the conversations a new connection may resume
    roster: Roster = field(default_factory=Roster)  # the live conversations, as the operator sees them (admin)

    @property
    def readiness(self) -> dict[str, bool]:
        """What `/readyz` checks: set up (configuration valid, upstreams ready), not shutting down, under capacity
        (the whole relay's, with several workers)."""
        checks = {"started": self.upstreams is not None, "accepting": not self.registry.shutting_down,
                  "under_capacity": self.registry.under_capacity}
        if self.fleet is not None:
            # Under the `local` outage policy the relay still admits while Redis is away: ready, not degraded.
            checks["redis"] = self.fleet.healthy or self.settings.relay_fleet_outage == "local"
        if self.gate is not None and self.gate.required and isinstance(self.gate.jwks, JwksCache):
            checks["jwks"] = self.gate.jwks.ever_fetched  # RELAY_AUTH_JWKS_URL fetched once (relay.server.jwks)
        return checks

    @property
    def ready(self) -> bool:
        return all(self.readiness.values())


def relay_state(app: QuartTrio) -> RelayState:
    return app.extensions["relay"]  # type: ignore[no-any-return]
