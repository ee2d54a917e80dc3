"""Admission for a fleet of relays sharing one Redis (RELAY_REDIS_URL): the global cap, the per-client caps, the start
rate and the avatar-account budget, each checked and taken in one Lua script (atomic across every relay), and
`seat_keeper`, the one place where the app chooses between this and the embedded `LocalSeats`, and beside it
`choose_seating`, which also chooses the avatar budget.

Seats live in sorted sets scored by their expiry (Redis's own clock, `TIME`): `{prefix}:seats` (every open
conversation of the fleet), `{prefix}:client:<client>` (one client's), `{prefix}:avatars` (the avatar sessions
held against RELAY_MAX_AVATAR_SESSIONS). A member is `<relay id>|<seat>`. Each script first drops the expired
members, so a relay that dies (kill -9, a lost host) frees its seats within RELAY_FLEET_LEASE without anyone
cleaning up; a live relay renews all its members every third of the lease (`FleetSeats.serve`) and registers them
again when Redis comes back after an outage (`Fleet.on_reconnect`: a restarted Redis without persistence is
empty). A seat is removed at once when its conversation ends (also on SIGTERM's drain), an avatar seat when its
session has been stopped. The start rate is a token bucket per client address in a hash (`{prefix}:starts:<client>`).

While Redis is unreachable (`RELAY_FLEET_OUTAGE`): `refuse` (the default) refuses new conversations with
`upstream_unavailable` and gives new avatar sessions no seat (voice-only, `capacity`); `local` admits under this
relay's own caps, as a relay without Redis would. Open conversations are never touched by an outage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import trio
from coredis.commands.script import Script

from relay.avatars.budget import AvatarBudget, LocalAvatarBudget
from relay.config import Settings
from relay.ops.fleet import Fleet, FleetUnavailable
from relay.ops.metrics import RelayMetrics
from relay.server.admission import AdmissionRefused, LocalSeats, Registry, SeatKeeper, SharedCap, full, over_cap
from relay.server.seats import SharedAvatarBudget
from relay.server.token_uses import LocalTokenUses, SharedTokenUses, TokenUses, UseVerdict

if TYPE_CHECKING:
    from relay.server.workers import WorkerRole

log = logging.getLogger("relay.fleet")

OutagePolicy = Literal["refuse", "local"]

_NOW_MS = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: seats, client. ARGV: member, lease ms, max conversations, max per client.
# Returns {'ok'|'full'|'client', seats taken}.
_ADMIT = _NOW_MS + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local taken = redis.call('ZCARD', KEYS[1])
if taken >= tonumber(ARGV[3]) then return {'full', taken} end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return {'client', taken} end
local expiry = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expiry, ARGV[1])
redis.call('ZADD', KEYS[2], expiry, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {'ok', taken + 1}
"""

# KEYS: seats, from client, to client. ARGV: member, lease ms, max per client. Returns 1 (moved) or 0 (refused).
_MOVE = _NOW_MS + """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then return 0 end
local expiry = now + tonumber(ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], expiry, ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[1], expiry, ARGV[1])
return 1
"""

# KEYS: the sets holding the member. ARGV: member.
_RELEASE = """
for _, key in ipairs(KEYS) do redis.call('ZREM', key, ARGV[1]) end
return 1
"""

# KEYS: bucket. ARGV: starts per minute. Returns 1 (allowed) or 0 (over the rate).
_START = """
local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local size = tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or size
local at = tonumber(state[2]) or now
tokens = math.min(size, tokens + math.max(0, now - at) * size / 60)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], 61000)
return allowed
"""

# KEYS: avatars. ARGV: member, lease ms, budget. Returns {1|0, avatar seats taken}.
_AVATAR = _NOW_MS + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local taken = redis.call('ZCARD', KEYS[1])
if taken >= tonumber(ARGV[3]) then return {0, taken} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return {1, taken + 1}
"""

# KEYS: seats, avatars, then one client key per seat. ARGV: lease ms, n seats, the n seat members, the avatar members.
# Renews (or registers again, after Redis lost them) everything this relay holds. Returns {seats, avatar seats}.
_RENEW = _NOW_MS + """
local expiry = now + tonumber(ARGV[1])
local n = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
for i = 1, n do
  redis.call('ZADD', KEYS[1], expiry, ARGV[2 + i])
  redis.call('ZADD', KEYS[2 + i], expiry, ARGV[2 + i])
  redis.call('PEXPIRE', KEYS[2 + i], ARGV[1])
end
for i = 3 + n, #ARGV do redis.call('ZADD', KEYS[2], expiry, ARGV[i]) end
return {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2])}
"""


# KEYS: the token's record (a hash: `opened`), its open conversation (a sorted set scored by lease expiry). ARGV:
# member, lease ms, allowed conversations, the token's expiry (Unix ms). Returns 'ok', 'busy' or 'used'.
_TOKEN_USE = _NOW_MS + """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= 1 then return 'busy' end
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened')) or 0
if opened >= tonumber(ARGV[3]) then return 'used' end
redis.call('HINCRBY', KEYS[1], 'opened', 1)
redis.call('PEXPIREAT', KEYS[1], math.max(tonumber(ARGV[4]), now + tonumber(ARGV[2])))
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 'ok'
"""

# KEYS: the open-conversation sets of the tokens this relay holds. ARGV: lease ms, then one member per key.
_TOKEN_RENEW = _NOW_MS + """
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + tonumber(ARGV[1]), ARGV[1 + i])
  redis.call('PEXPIRE', key, ARGV[1])
end
return #KEYS
"""


@dataclass(frozen=True, slots=True)
class Limits:
    """The admission limits, from the settings."""

    max_conversations: int
    max_per_client: int
    starts_per_minute: int
    avatar_sessions: int | None  # RELAY_MAX_AVATAR_SESSIONS; None: no budget

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.relay_max_conversations, settings.relay_max_conversations_per_client,
                   settings.relay_max_starts_per_minute, settings.relay_max_avatar_sessions)


def _refused_by_outage() -> AdmissionRefused:
    return AdmissionRefused("the relay cannot reach its fleet's shared state right now; try again shortly",
                            "upstream_unavailable", "redis_unavailable")


@dataclass
class FleetSeats:
    """The fleet's seats in Redis, for one relay (a `SeatKeeper` and an avatar budget). `local` always counts what
    this relay holds: it is what the heartbeat renews, and the caps the `local` outage policy enforces."""

    fleet: Fleet
    limits: Limits
    outage: OutagePolicy = "refuse"
    local: LocalSeats = field(init=False)
    avatars: set[str] = field(default_factory=set)  # avatar seats this relay holds
    token_uses: dict[str, str] = field(default_factory=dict)  # use -> token key: the open conversations on tokens
    local_tokens: LocalTokenUses = field(default_factory=LocalTokenUses)  # under the `local` outage policy
    fleet_taken: int = 0  # the fleet's seats, as Redis last said
    fleet_avatars: int = 0  # the fleet's avatar seats, as Redis last said
    _sync: trio.Lock = field(default_factory=trio.Lock)  # a renewal never re-adds a seat released meanwhile
    _scripts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.local = LocalSeats(self.limits.max_conversations, self.limits.max_per_client,
                                self.limits.starts_per_minute)
        for name, lua in (("admit", _ADMIT), ("move", _MOVE), ("release", _RELEASE), ("start", _START),
                          ("avatar", _AVATAR), ("renew", _RENEW), ("token_use", _TOKEN_USE),
                          ("token_renew", _TOKEN_RENEW)):
            self._scripts[name] = Script(None, lua)

    @property
    def held(self) -> dict[str, str]:
        """Seat -> client, for the conversations this relay holds."""
        return self.local.held

    def _member(self, seat: str) -> str:
        return f"{self.fleet.relay_id}|{seat}"

    def _client_key(self, client: str) -> str:
        return self.fleet.key("client", client)

    async def _script(self, name: str, keys: list[str], args: list[str | int]) -> Any:
        script = self._scripts[name]

        async def call(client: Any) -> Any:
            return await script(keys=keys, args=args, client=client)

        return await self.fleet.run(call)

    async def _shielded(self, name: str, keys: list[str], args: list[str | int]) -> Any:
        """A script whose effect this relay must know even if its caller is cancelled meanwhile (bounded)."""
        with trio.CancelScope(shield=True):
            return await self._script(name, keys, args)

    # -- conversations ---------------------------------------------------------------------------------------------

    async def take(self, seat: str, client: str) -> None:
        if self.fleet.healthy:
            try:
                verdict, taken = await self._shielded(
                    "admit", [self.fleet.key("seats"), self._client_key(client)],
                    [self._member(seat), self.fleet.lease_ms, self.limits.max_conversations,
                     self.limits.max_per_client])
            except FleetUnavailable:
                pass
            else:
                self.fleet_taken = int(taken)
                if verdict == "full":
                    raise full()
                if verdict == "client":
                    raise over_cap(client)
                self.local.record(seat, client)
                return
        if self.outage == "refuse":
            raise _refused_by_outage()
        await self.local.take(seat, client)

    async def move(self, seat: str, before: str, after: str) -> None:
        if before == after:
            return
        async with self._sync:
            if self.fleet.healthy:
                try:
                    moved = await self._shielded(
                        "move", [self.fleet.key("seats"), self._client_key(before), self._client_key(after)],
                        [self._member(seat), self.fleet.lease_ms, self.limits.max_per_client])
                except FleetUnavailable:
                    pass
                else:
                    if not moved:
                        raise over_cap(after)
                    self.local.forget(seat)
                    self.local.record(seat, after)
                    return
            if self.outage == "refuse":
                raise _refused_by_outage()
            self.local.move_now(seat, before, after)

    async def give_back(self, seat: str) -> None:
        async with self._sync:
            client = self.local.held.get(seat)
            self.local.forget(seat)
            if client is None or not self.fleet.healthy:
                return  # Redis away: not renewed any more, the seat expires with the lease (or is gone with Redis)
            try:
                await self._script("release", [self.fleet.key("seats"), self._client_key(client)],
                                   [self._member(seat)])
            except FleetUnavailable:
                return
            self.fleet_taken = max(0, self.fleet_taken - 1)  # readiness sees the free seat before the heartbeat

    async def allow_start(self, client: str, now: float) -> bool:
        if self.fleet.healthy:
            try:
                allowed = await self._script("start", [self.fleet.key("starts", client)],
                                             [self.limits.starts_per_minute])
            except FleetUnavailable:
                pass
            else:
                return bool(allowed)
        if self.outage == "refuse":
            return True  # admission refuses it right after, with its own clear reason
        return self.local.starts.allow(client, now)

    def taken(self) -> int:
        if not self.fleet.healthy and self.outage == "local":
            return len(self.local.held)
        return max(self.fleet_taken, len(self.local.held))

    # -- the avatar budget -----------------------------------------------------------------------------------------

    async def take_avatar(self, seat: str) -> bool:
        """One seat of the avatar-account budget for a session about to be created; False when it is used up (or
        cannot be counted while Redis is away under the `refuse` policy)."""
        budget = self.limits.avatar_sessions
        if budget is None:
            return True
        if self.fleet.healthy:
            try:
                got, taken = await self._shielded("avatar", [self.fleet.key("avatars")],
                                                  [self._member(seat), self.fleet.lease_ms, budget])
            except FleetUnavailable:
                pass
            else:
                self.fleet_avatars = int(taken)
                if got:
                    self.avatars.add(seat)
                return bool(got)
        if self.outage == "refuse" or len(self.avatars) >= budget:
            return False
        self.avatars.add(seat)
        return True

    async def give_back_avatar(self, seat: str) -> None:
        async with self._sync:
            if seat not in self.avatars:
                return
            self.avatars.discard(seat)
            if not self.fleet.healthy:
                return
            try:
                await self._script("release", [self.fleet.key("avatars")], [self._member(seat)])
            except FleetUnavailable:
                return
            self.fleet_avatars = max(0, self.fleet_avatars - 1)

    # -- client tokens (relay.server.token_uses) ---------------------------------------------------------------

    def _token_keys(self, key: str) -> list[str]:
        return [self.fleet.key("token", key), self.fleet.key("token-open", key)]

    async def begin_use(self, use: str, key: str, expires: float, allowed: int) -> UseVerdict:
        """One conversation on the token `key`, counted by the whole fleet."""
        if self.fleet.healthy:
            try:
                verdict = await self._shielded("token_use", self._token_keys(key),
                                               [self._member(use), self.fleet.lease_ms, allowed, int(expires * 1000)])
            except FleetUnavailable:
                pass
            else:
                if verdict == "ok":
                    self.token_uses[use] = key
                return verdict  # type: ignore[no-any-return]
        if self.outage == "refuse":
            raise _refused_by_outage()
        return await self.local_tokens.begin_use(use, key, expires, allowed)

    async def end_use(self, use: str) -> None:
        await self.local_tokens.end_use(use)
        async with self._sync:
            key = self.token_uses.pop(use, None)
            if key is None or not self.fleet.healthy:
                return  # not renewed any more: the open mark expires with the lease
            try:
                await self._script("release", [self.fleet.key("token-open", key)], [self._member(use)])
            except FleetUnavailable:
                return

    # -- leases ----------------------------------------------------------------------------------------------------

    async def renew(self) -> None:
        """Renew every seat this relay holds (registering again those Redis lost). Raises FleetUnavailable."""
        async with self._sync:
            seats = list(self.local.held.items())
            keys = [self.fleet.key("seats"), self.fleet.key("avatars")]
            keys += [self._client_key(client) for _, client in seats]
            args: list[str | int] = [self.fleet.lease_ms, len(seats)]
            args += [self._member(seat) for seat, _ in seats]
            args += [self._member(seat) for seat in self.avatars]
            taken, avatars = await self._script("renew", keys, args)
            if self.token_uses:
                uses = list(self.token_uses.items())
                await self._script("token_renew", [self.fleet.key("token-open", key) for _, key in uses],
                                   [self.fleet.lease_ms, *(self._member(use) for use, _ in uses)])
        self.fleet_taken, self.fleet_avatars = int(taken), int(avatars)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew this relay's seats every third of the lease, and all of them at once when Redis is back after an
        outage, until cancelled."""
        self.fleet.on_reconnect(self.renew)
        task_status.started()
        while True:
            await trio.sleep(self.fleet.lease / 3)
            if self.fleet.healthy:
                try:
                    await self.renew()
                except FleetUnavailable:
                    pass


def seat_keeper(settings: Settings, fleet: Fleet | None, shared: SharedCap | None = None
                ) -> LocalSeats | FleetSeats:
    """The one place where admission is chosen: the fleet's seats in Redis with RELAY_REDIS_URL, else this
    process's (and this machine's workers', through `shared`)."""
    if fleet is not None:
        return FleetSeats(fleet, Limits.from_settings(settings), settings.relay_fleet_outage)
    return LocalSeats(settings.relay_max_conversations, settings.relay_max_conversations_per_client,
                      settings.relay_max_starts_per_minute, shared=shared)


@dataclass(frozen=True)
class Seating:
    """Who gets in, as chosen for one app: the `keeper` of the conversations' seats, the `registry` of the open
    conversations that asks it, the avatar budget (RELAY_MAX_AVATAR_SESSIONS; None without one) and who counts the
    client tokens' conversations (`uses`, beside the seats)."""

    keeper: LocalSeats | FleetSeats
    registry: Registry
    avatar_budget: AvatarBudget | None
    uses: TokenUses


def choose_seating(settings: Settings, fleet: Fleet | None, worker: WorkerRole | None) -> Seating:
    """The seats, the avatar budget and the token uses for these settings: the fleet's in Redis with
    RELAY_REDIS_URL, else this machine's shared by `serve --workers N`'s workers (`worker`), else this process's."""
    keeper = seat_keeper(settings, fleet, None if fleet is not None or worker is None
                         else worker.seats(settings.relay_max_conversations))
    registry = Registry(settings.relay_max_conversations, settings.relay_max_conversations_per_client, keeper=keeper)
    budget: AvatarBudget | None = None
    if (size := settings.relay_max_avatar_sessions) is not None:
        budget = keeper if isinstance(keeper, FleetSeats) else \
            LocalAvatarBudget(size) if worker is None else SharedAvatarBudget(worker.avatar_seats(size))
    return Seating(keeper, registry, budget, token_uses(keeper, worker))


def watch_seating(metrics: RelayMetrics, seating: Seating) -> None:
    """Gauges of the seats and the avatar budget (read at scrape time): the fleet's, or this relay's budget."""
    keeper, budget = seating.keeper, seating.avatar_budget
    if isinstance(keeper, FleetSeats):
        fleet_seats = keeper
        metrics.watch_fleet(healthy=lambda: fleet_seats.fleet.healthy, seats=lambda: fleet_seats.fleet_taken,
                            seats_held=lambda: len(fleet_seats.held), avatars=lambda: fleet_seats.fleet_avatars,
                            avatars_held=lambda: len(fleet_seats.avatars))
    elif isinstance(budget, LocalAvatarBudget | SharedAvatarBudget):
        local_budget = budget
        metrics.watch_fleet(avatars_held=lambda: len(local_budget.held))


def token_uses(keeper: LocalSeats | FleetSeats, worker: WorkerRole | None) -> TokenUses:
    """Who counts the client tokens' conversations, beside the seats: the fleet's keeper in Redis, else this
    machine's workers' shared table, else this process."""
    if isinstance(keeper, FleetSeats):
        return keeper
    if worker is not None:
        return SharedTokenUses(worker.seats(0))
    return LocalTokenUses()


__all__ = ["FleetSeats", "Limits", "OutagePolicy", "SeatKeeper", "Seating", "choose_seating", "seat_keeper",
           "token_uses", "watch_seating"]
