"""The fleet's live conversations (with RELAY_REDIS_URL), for the operator's endpoints: one relay's answer lists
every relay's conversations, and ends one whichever relay holds it.

Every relay publishes its conversations' summaries (`relay.server.roster`: ids, start, subject, client address,
provider, avatar session, state, seconds; never a key, a token or what was said) in one hash,
`{prefix}:conversations`, field = its relay id, value `{"as_of": unix time, "conversations": [...]}`: when the set of
its conversations or their states change (checked every TICK, written at most every MIN_REPUBLISH), else every third
of RELAY_FLEET_LEASE. A reader counts the seconds on from `as_of` and reads only the relays whose lease is alive (a
dead relay's field is deleted by the same script).

An end asked of a conversation another relay holds is pushed onto that relay's list, `{prefix}:end:<relay id>`
(expiring after END_REQUEST_TTL); the relay reads its list every TICK and ends what it names (reason `admin`), then
publishes its conversations again, which is how the asker learns it ended.

Redis trouble never reaches a conversation: `serve` logs and goes on; `listing` and `ask_end` raise FleetUnavailable
to the operator's request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

from relay.ops.fleet import OP_TIMEOUT, Fleet, FleetUnavailable

log = logging.getLogger("relay.fleet")

TICK = 0.5  # seconds between two looks at this relay's conversations and at its end requests
END_REQUEST_TTL = 60  # seconds an end request waits for a relay that does not read it
MAX_ENDS = 100  # end requests read at once
MIN_REPUBLISH = 1.0  # seconds between two publications on changes (a busy relay's conversations change all the time)

# Every live relay's published conversations, deleting the fields of relays whose lease is gone.
# KEYS[1] the hash; ARGV[1] the lease key prefix.
_LIST = """
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if redis.call('EXISTS', ARGV[1] .. all[i]) == 1 then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class Published:
    """One relay's conversations as it last published them."""

    relay_id: str
    as_of: float
    conversations: list[dict[str, Any]]

    def now(self, wall: float) -> list[dict[str, Any]]:
        """Its conversations with their seconds counted on to `wall` (avatar seconds while a session is open)."""
        later = max(0.0, wall - self.as_of)
        return [{**c, "relay": self.relay_id, "seconds": round(c.get("seconds", 0) + later, 1),
                 "avatar_seconds": round(c.get("avatar_seconds", 0) + (later if c.get("avatar_session_id") else 0),
                                         1)} for c in self.conversations]


@dataclass
class FleetRoster:
    """This relay's side: `serve` publishes `summaries()` and ends what other relays ask of it (`end_here(id)`:
    asks the conversation to end, without waiting; True when this relay holds it); `listing` and `ask_end` are the
    operator's."""

    fleet: Fleet
    summaries: Callable[[], list[dict[str, Any]]]
    end_here: Callable[[str], bool]
    signature: Callable[[], object]  # changes when the conversations or their states do (not with the clock)
    _script: Any = None
    _published: object = None
    _published_at: float = field(default=-1e9)

    @property
    def _hash(self) -> str:
        return self.fleet.key("conversations")

    def _ends(self, relay_id: str) -> str:
        return self.fleet.key("end", relay_id)

    async def publish(self) -> None:
        """Write this relay's conversations now. Raises FleetUnavailable."""
        changed = self.signature()
        value = orjson.dumps({"as_of": time.time(), "conversations": self.summaries()})
        await self.fleet.run(lambda r: r.hset(self._hash, {self.fleet.relay_id: value}))
        self._published, self._published_at = changed, trio.current_time()

    async def _tick(self) -> None:
        if not self.fleet.healthy:
            return
        requests = await self.fleet.run(lambda r: r.lpop(self._ends(self.fleet.relay_id), MAX_ENDS))
        for wanted in requests or []:
            name = wanted.decode() if isinstance(wanted, bytes) else str(wanted)
            if self.end_here(name):
                log.info("conversation %s ended as another relay's operator asked", name)
        since = trio.current_time() - self._published_at
        if since >= self.fleet.lease / 3 or (since >= MIN_REPUBLISH and self.signature() != self._published):
            await self.publish()

    async def serve(self) -> None:
        """Publish and read end requests every TICK until cancelled; then delete this relay's field (shielded,
        bounded). Never raises: Redis trouble is logged, and the next tick tries again."""
        try:
            while True:
                try:
                    await self._tick()
                except FleetUnavailable as exc:
                    log.debug("fleet: conversations not published now (%s)", exc)
                except Exception:  # never out into the app's nursery (it would end the relay)
                    log.exception("fleet: publishing this relay's conversations failed")
                await trio.sleep(TICK)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(OP_TIMEOUT):
                try:
                    await self.fleet.run(lambda r: r.hdel(self._hash, [self.fleet.relay_id]))
                except FleetUnavailable:
                    pass

    async def listing(self) -> list[Published]:
        """Every live relay's published conversations. Raises FleetUnavailable."""
        async def call(client: Any) -> Any:
            if self._script is None:
                self._script = client.register_script(_LIST)
            return await self._script(keys=[self._hash], args=[self.fleet.key("relay") + ":"])

        raw = await self.fleet.run(call)
        found = []
        for i in range(0, len(raw), 2):
            relay_id = raw[i].decode() if isinstance(raw[i], bytes) else str(raw[i])
            data = orjson.loads(raw[i + 1])
            found.append(Published(relay_id, float(data["as_of"]), list(data["conversations"])))
        return found

    async def ask_end(self, relay_id: str, wanted: str) -> None:
        """Ask relay `relay_id` to end conversation `wanted`. Raises FleetUnavailable."""
        key = self._ends(relay_id)

        async def call(client: Any) -> None:
            await client.rpush(key, [wanted])
            await client.expire(key, END_REQUEST_TTL)

        await self.fleet.run(call)
