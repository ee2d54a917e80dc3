"""The fleet's session registry (with RELAY_REDIS_URL): every avatar session a relay of the fleet has open, in Redis,
so that a relay that dies (kill -9, a lost container, a lost machine, its journal with it) does not leave billed
sessions running: another relay takes them over and stops them.

One hash, `{prefix}:sessions`, member `provider:session_id`, value a JSON entry: provider, session id, base URL (where
it was opened), owner (the relay id holding it), opened at (Unix time) and state:
- `open`: a conversation of the owner holds it;
- `orphan`: nobody holds it and it must be stopped (its stop failed, or it was taken over from a dead relay);
  the owner's sweep stops it;
- `stopping`: the owner is stopping it now (it claimed it; see `claim`).
An entry is alive as long as its owner's lease key (`relay.ops.fleet`, renewed every third of RELAY_FLEET_LEASE)
exists: no per-session heartbeat, the relay's lease is every one of its sessions' heartbeat. A stopped session leaves
a tombstone, `{prefix}:stopped:provider:session_id`, for TOMBSTONE_SECONDS, so that no later claim (a journal reaper,
`avatar-relay reap`, a relay re-registering after an outage) stops or resurrects it again. Nothing here holds a
secret: no API key, token or URL password ever reaches Redis.

Written through `SessionHooks` (`hooks`) exactly where the journal writes: `on_created` (alongside the provider's
start call) registers, `on_closed` forgets (or marks `orphan` when the stop failed).

Takeover (`sweep`, every `sweep_interval` = RELAY_FLEET_LEASE / 3 by `serve`): one Lua script moves every entry
whose owner's lease is gone to this relay as `orphan` (atomic: of many relays sweeping at once, exactly one gets
each entry), then this relay stops each `orphan` it owns: `claim` (orphan -> stopping, atomically), the provider's
stop-by-id at the recorded base URL, `finish` (entry deleted, tombstone set); a failed stop is `release`d (back to
orphan, still owned by this relay: its next sweep retries it, and if it dies meanwhile the next takeover moves it on).
A dead relay's sessions are stopped within RELAY_FLEET_LEASE + one sweep interval of its death (20 s by default).
A relay takes nothing over during its first lease after start-up or after Redis comes back (`takeover_grace`): every
live relay renews its lease within a third of it, so a Redis restored with stale leases does not look like a fleet
of dead relays.

The same `claim` is the one gate for every stopper of a session that is not a live conversation's: the fleet's
sweep, the journal's reaper (relay.ops.reaper) and `avatar-relay reap` (docs/decisions.md).

Redis trouble: a session opened, stopped or failed to stop while Redis is unreachable is kept in memory and written
when Redis answers again (`rebuild`, run by `Fleet.on_reconnect`), together with every session this relay holds
(Redis may have come back empty). Conversations never wait for Redis: with the fleet unhealthy nothing is tried;
otherwise a write is bounded (OP_TIMEOUT) and shielded, and its failure is logged, kept for later, never raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson
import trio

from relay.avatars.hooks import MakeHooks, SessionHooks, SessionOutcome
from relay.ops.fleet import OP_TIMEOUT, Fleet, FleetUnavailable

log = logging.getLogger("relay.fleet")

TOMBSTONE_SECONDS = 7 * 24 * 3600  # how long a stopped session's tombstone keeps later claims from stopping it again
STOP_CONCURRENCY = 8  # stops one sweep runs at once

Verdict = Literal["claimed", "held", "busy", "done"]

# Register (or re-register after an outage) an entry owned by this relay, unless it was stopped already (tombstone)
# or another relay owns it now (taken over while this relay was cut off).
# KEYS[1] sessions; ARGV member, entry JSON, tombstone key, this relay's id.
_REGISTER = """
if redis.call('EXISTS', ARGV[3]) == 1 then return 'done' end
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and cjson.decode(current).owner ~= ARGV[4] then return 'taken' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 'ok'
"""

# The stop gate. 'done': stopped already. 'held'/'busy': a live relay holds it open / is stopping it. 'claimed': the
# caller owns it as `stopping` and must stop it, then `finish` or `release`. A live owner's `orphan` is claimable by
# that owner only; a dead owner's entry by anyone; an unknown session is created owned by the caller.
# KEYS[1] sessions; ARGV member, tombstone key, caller's id, lease key prefix, entry JSON for an unknown session.
_CLAIM = """
if redis.call('EXISTS', ARGV[2]) == 1 then return 'done' end
local current = redis.call('HGET', KEYS[1], ARGV[1])
local entry
if current then
  entry = cjson.decode(current)
  local mine = entry.owner == ARGV[3]
  if mine or redis.call('EXISTS', ARGV[4] .. entry.owner) == 1 then
    if not (mine and entry.state == 'orphan') then
      if entry.state == 'open' then return 'held' end
      return 'busy'
    end
  end
else
  entry = cjson.decode(ARGV[5])
end
entry.owner = ARGV[3]
entry.state = 'stopping'
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry))
return 'claimed'
"""

# Forget a stopped session and leave its tombstone. KEYS[1] sessions; ARGV member, tombstone key, its lifetime (s).
_FINISH = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SET', ARGV[2], '1', 'EX', ARGV[3])
return 1
"""

# A claimed stop failed: back to `orphan`, still the caller's (its sweep retries). KEYS[1]; ARGV member, caller.
_RELEASE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
local entry = cjson.decode(current)
if entry.owner ~= ARGV[2] then return 0 end
entry.state = 'orphan'
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry))
return 1
"""

# Takeover: every entry whose owner's lease is gone becomes the caller's `orphan`. Returns the number of dead relays
# found, then every `orphan` the caller owns (taken over now, earlier, or its own failed stops) as JSON, then how
# many of those were taken over now. KEYS[1] sessions; ARGV caller's id, lease key prefix, 1 to take over (0: only
# list the caller's orphans).
_TAKEOVER = """
local dead = {}
local dead_count = 0
local moved = 0
local orphans = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local entry = cjson.decode(all[i + 1])
  local owner = entry.owner
  if owner ~= ARGV[1] and ARGV[3] == '1' then
    local gone = dead[owner]
    if gone == nil then
      gone = redis.call('EXISTS', ARGV[2] .. owner) == 0
      dead[owner] = gone
      if gone then dead_count = dead_count + 1 end
    end
    if gone then
      entry.owner = ARGV[1]
      entry.state = 'orphan'
      redis.call('HSET', KEYS[1], all[i], cjson.encode(entry))
      moved = moved + 1
    end
  end
  if entry.owner == ARGV[1] and entry.state == 'orphan' then
    orphans[#orphans + 1] = cjson.encode(entry)
  end
end
table.insert(orphans, 1, moved)
table.insert(orphans, 1, dead_count)
return orphans
"""

# Every entry and whether its owner's lease is alive (for `avatar-relay reap`). KEYS[1]; ARGV lease key prefix.
_LIST = """
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local entry = cjson.decode(all[i + 1])
  out[#out + 1] = all[i + 1]
  out[#out + 1] = redis.call('EXISTS', ARGV[1] .. entry.owner)
end
return out
"""


@dataclass(frozen=True, slots=True)
class SessionEntry:
    """One session as the registry holds it (never a secret)."""

    provider: str
    session_id: str
    base_url: str
    owner: str
    opened_at: float
    state: str = "open"

    @property
    def member(self) -> str:
        return member_of(self.provider, self.session_id)

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, raw: str) -> SessionEntry:
        data = orjson.loads(raw)
        return cls(str(data["provider"]), str(data["session_id"]), str(data["base_url"]), str(data["owner"]),
                   float(data["opened_at"]), str(data.get("state", "open")))


def member_of(provider: str, session_id: str) -> str:
    return f"{provider}:{session_id}"


@dataclass
class FleetSessionStats:
    """What `/metrics` shows of the registry (relay.ops.metrics)."""

    lease_expiries: int = 0  # dead relays found by this relay's takeover (each counted by exactly one relay)
    taken_over: int = 0  # sessions taken over from dead relays
    takeover_stopped: int = 0  # orphans this relay's sweep stopped (taken over, or its own failed stops)
    takeover_failed: int = 0  # stop attempts of the sweep that failed (retried by the next sweep)


@dataclass(frozen=True, slots=True)
class FleetSession:
    """A fleet entry as `avatar-relay reap` sees it: the entry and whether its owner's lease is alive."""

    entry: SessionEntry
    owner_alive: bool

    @property
    def live(self) -> bool:
        """Held by a live relay (open in one of its conversations, being stopped by it, or in its retry list)."""
        return self.owner_alive


@dataclass
class FleetSessions:
    """This relay's side of the registry. `stop(entry)` stops a session through its provider (raising on failure);
    `hooks` registers this relay's sessions; `serve` runs the takeover sweep; `claim`/`finish`/`release` are the stop
    gate for the journal's reaper and `avatar-relay reap`."""

    fleet: Fleet
    stop: Callable[[SessionEntry], Awaitable[None]]
    stats: FleetSessionStats = field(default_factory=FleetSessionStats)
    takeover_grace: float | None = None  # seconds of health before taking over (None: one lease)
    _open: dict[str, SessionEntry] = field(default_factory=dict)  # held by this relay's conversations now
    _orphans: dict[str, SessionEntry] = field(default_factory=dict)  # failed stops Redis has not heard of yet
    _stopped: set[str] = field(default_factory=set)  # stopped while Redis was unreachable
    _unregistered: set[str] = field(default_factory=set)  # open sessions Redis has not heard of yet
    _healthy_since: float | None = None
    _scripts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fleet.on_reconnect(self.rebuild)

    @property
    def sweep_interval(self) -> float:
        return self.fleet.lease / 3

    @property
    def held(self) -> int:
        """Sessions this relay's conversations hold now (the registry's entries it owns as `open`)."""
        return len(self._open)

    @property
    def unsynced(self) -> int:
        """Changes Redis has not heard of yet (kept in memory while it is unreachable, written when it is back):
        sessions opened, stopped, or failed to stop meanwhile."""
        return len(self._unregistered) + len(self._orphans) + len(self._stopped)

    @property
    def _sessions_key(self) -> str:
        return self.fleet.key("sessions")

    @property
    def _lease_prefix(self) -> str:
        return self.fleet.key("relay") + ":"

    def _tombstone(self, member: str) -> str:
        return self.fleet.key("stopped", member)

    async def _script(self, name: str, source: str, args: list[Any]) -> Any:
        async def call(client: Any) -> Any:
            script = self._scripts.get(name)
            if script is None:
                script = self._scripts[name] = client.register_script(source)
            return await script(keys=[self._sessions_key], args=args)

        return await self.fleet.run(call)

    # ------------------------------------------------------------------------------------------------------------------
    # This relay's sessions (the hooks)

    def hooks(self, base_url: str) -> MakeHooks:
        """Session hooks registering each session of the provider reached at `base_url` from the moment its upstream
        id exists until it has been stopped (or marked `orphan` when its stop failed). Never raise; never make a
        conversation wait longer than OP_TIMEOUT (nothing at all while Redis is known to be unreachable)."""

        def make(provider: str) -> SessionHooks:
            entry: SessionEntry | None = None

            async def created(session_id: str) -> None:
                nonlocal entry
                entry = SessionEntry(provider, session_id, base_url, self.fleet.relay_id, time.time())
                await self.opened(entry)

            async def closed(outcome: SessionOutcome) -> None:
                if entry is not None:
                    await self.closed(entry, stop_failed=outcome.stop_failed)

            return SessionHooks(on_created=created, on_closed=closed)

        return make

    async def opened(self, entry: SessionEntry) -> None:
        self._open[entry.member] = entry
        with trio.move_on_after(OP_TIMEOUT + 0.5, shield=True):
            if await self._quietly(self._register(entry), "register"):
                return
        if entry.member in self._open:
            self._unregistered.add(entry.member)

    async def closed(self, entry: SessionEntry, *, stop_failed: bool) -> None:
        self._open.pop(entry.member, None)
        self._unregistered.discard(entry.member)
        if stop_failed:
            orphan = SessionEntry(entry.provider, entry.session_id, entry.base_url, entry.owner, entry.opened_at,
                                  "orphan")
            with trio.move_on_after(OP_TIMEOUT + 0.5, shield=True):
                if await self._quietly(self._register(orphan), "mark as orphan"):
                    return
            self._orphans[entry.member] = orphan
        else:
            await self.finish(entry.provider, entry.session_id)

    async def _quietly(self, write: Awaitable[Any], what: str) -> bool:
        """Await one registry write; False (logged once) if Redis is unreachable: `rebuild` writes it later."""
        if not self.fleet.healthy:
            close = getattr(write, "close", None)
            if close is not None:
                close()  # never awaited: no "coroutine was never awaited" warning
            return False
        try:
            await write
        except FleetUnavailable as exc:
            log.warning("fleet: cannot %s a session in Redis now (%s); kept in memory until Redis is back", what,
                        exc)
            return False
        return True

    async def _register(self, entry: SessionEntry) -> str:
        answer = str(await self._script("register", _REGISTER, [entry.member, entry.to_json(),
                                                                 self._tombstone(entry.member),
                                                                 self.fleet.relay_id]))
        if answer == "taken":
            log.warning("fleet: %s session %s was taken over by another relay while this one was cut off from "
                        "Redis (longer than RELAY_FLEET_LEASE); that relay stops it", entry.provider,
                        entry.session_id)
        return answer

    async def _finish(self, member: str) -> None:
        await self._script("finish", _FINISH, [member, self._tombstone(member), TOMBSTONE_SECONDS])

    async def rebuild(self) -> None:
        """Redis answers again (maybe empty, maybe with stale leases): write what happened meanwhile and everything
        this relay holds. Raises FleetUnavailable if Redis is lost again (the next recovery runs it again)."""
        self._healthy_since = trio.current_time()
        for member in list(self._stopped):
            await self._finish(member)
            self._stopped.discard(member)
        for member, entry in list(self._orphans.items()):
            await self._register(entry)
            self._orphans.pop(member, None)
        for entry in list(self._open.values()):
            await self._register(entry)
            self._unregistered.discard(entry.member)
        log.info("fleet: session registry rebuilt (%d open sessions held by this relay)", len(self._open))

    # ------------------------------------------------------------------------------------------------------------------
    # The stop gate

    async def claim(self, provider: str, session_id: str, base_url: str) -> Verdict:
        """May the caller stop this session now? 'claimed' (it must then `finish` or `release`), 'held' (a live
        relay's conversation holds it), 'busy' (a live relay is stopping it or will retry it), 'done' (stopped
        already). Raises FleetUnavailable."""
        member = member_of(provider, session_id)
        unknown = SessionEntry(provider, session_id, base_url, self.fleet.relay_id, time.time(), "stopping")
        answer = await self._script("claim", _CLAIM, [member, self._tombstone(member), self.fleet.relay_id,
                                                       self._lease_prefix, unknown.to_json()])
        return str(answer)  # type: ignore[return-value]

    async def finish(self, provider: str, session_id: str) -> None:
        """The claimed session has been stopped: forget it, for good (its tombstone keeps it from being stopped
        again). Never raises: while Redis is unreachable it is kept in memory and written once Redis is back."""
        member = member_of(provider, session_id)
        with trio.move_on_after(OP_TIMEOUT + 0.5, shield=True):
            if await self._quietly(self._finish(member), "forget"):
                return
        self._stopped.add(member)

    async def release(self, provider: str, session_id: str, base_url: str) -> None:
        """The claimed session could not be stopped: it goes back to `orphan`, this relay's, and its sweep retries
        it. Never raises: while Redis is unreachable it is kept in memory and written once Redis is back."""
        member = member_of(provider, session_id)
        with trio.move_on_after(OP_TIMEOUT + 0.5, shield=True):
            if await self._quietly(self._script("release", _RELEASE, [member, self.fleet.relay_id]), "release"):
                return
        self._orphans[member] = SessionEntry(provider, session_id, base_url, self.fleet.relay_id, time.time(),
                                             "orphan")

    async def listing(self) -> list[FleetSession]:
        """Every registered session with whether its owner is alive. Raises FleetUnavailable."""
        raw = await self._script("list", _LIST, [self._lease_prefix])
        return [FleetSession(SessionEntry.from_json(str(raw[i])), int(raw[i + 1]) == 1) for i in range(0, len(raw), 2)]

    # ------------------------------------------------------------------------------------------------------------------
    # Takeover

    def _may_take_over(self) -> bool:
        if not self.fleet.healthy:
            self._healthy_since = None
            return False
        now = trio.current_time()
        if self._healthy_since is None:
            self._healthy_since = now
        grace = self.fleet.lease if self.takeover_grace is None else self.takeover_grace
        return now - self._healthy_since >= grace

    async def sweep(self) -> None:
        """Take over the sessions of relays whose lease is gone (after the grace), then stop every orphan this relay
        owns, a few at once. Never raises FleetUnavailable (the next sweep tries again)."""
        take_over = self._may_take_over()
        try:
            answer = await self._script("takeover", _TAKEOVER, [self.fleet.relay_id, self._lease_prefix,
                                                                 "1" if take_over else "0"])
        except FleetUnavailable:
            return
        dead, moved, orphans = int(answer[0]), int(answer[1]), [SessionEntry.from_json(str(r)) for r in answer[2:]]
        if moved:
            self.stats.lease_expiries += dead
            self.stats.taken_over += moved
            log.warning("fleet: took over %d avatar session(s) of %d relay(s) whose lease expired; stopping them",
                        moved, dead)
        limiter = trio.CapacityLimiter(STOP_CONCURRENCY)
        async with trio.open_nursery() as nursery:
            for entry in orphans:
                nursery.start_soon(self._stop_orphan, entry, limiter)

    async def _stop_orphan(self, entry: SessionEntry, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            try:
                if await self.claim(entry.provider, entry.session_id, entry.base_url) != "claimed":
                    return
            except FleetUnavailable:
                return
            try:
                await self.stop(entry)
            except Exception as exc:  # the provider's errors and timeouts: retried by the next sweep
                self.stats.takeover_failed += 1
                log.warning("fleet: could not stop orphaned %s session %s (%s); retrying at the next sweep",
                            entry.provider, entry.session_id, getattr(exc, "message", type(exc).__name__))
                await self.release(entry.provider, entry.session_id, entry.base_url)
                return
            self.stats.takeover_stopped += 1
            log.info("fleet: stopped orphaned %s session %s", entry.provider, entry.session_id)
            await self.finish(entry.provider, entry.session_id)

    async def serve(self) -> None:
        """`sweep` every `sweep_interval` seconds until cancelled. Never raises."""
        if self.fleet.healthy and self._healthy_since is None:
            self._healthy_since = trio.current_time()  # the grace runs from the start, not from the first sweep
        while True:
            await trio.sleep(self.sweep_interval)
            await self.sweep()
