"""A one-off look at the fleet's Redis (RELAY_REDIS_URL), for `avatar-relay doctor` and for `serve --workers`'s
check before it starts any worker: reachable, its version, the round trip, and whether this relay could write its
lease key. Errors come back as FleetUnavailable with the URL redacted (never the password)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import trio

from relay._util import leaves
from relay.config import Settings
from relay.ops.fleet import _REDIS_TROUBLE, CONNECT_TIMEOUT, Fleet, FleetUnavailable, connect

MIN_MAJOR_VERSION = 5  # the admission scripts read Redis's clock (TIME), which needs script effects replication


@dataclass(frozen=True, slots=True)
class RedisProbe:
    where: str  # the redacted URL
    version: str
    round_trip_ms: float  # the best of a few PINGs
    write_problem: str | None  # None: a lease-like key could be written and deleted

    @property
    def version_ok(self) -> bool:
        try:
            return int(self.version.split(".")[0]) >= MIN_MAJOR_VERSION
        except ValueError:
            return True


async def probe(settings: Settings) -> RedisProbe:
    """Connect to RELAY_REDIS_URL once and look. Raises FleetUnavailable (a clear, redacted message) when Redis
    cannot be reached or answers errors; raises nothing about a key it cannot write (`write_problem`)."""
    fleet = Fleet.from_settings(settings)
    assert fleet is not None, "RELAY_REDIS_URL is not set"
    where = fleet.target.redacted
    try:
        with trio.fail_after(CONNECT_TIMEOUT * 2):
            return await _look_unwrapped(fleet, where)
    except trio.TooSlowError:
        raise FleetUnavailable(f"Redis at {where} did not answer within {CONNECT_TIMEOUT * 2:g} s") from None


async def _look_unwrapped(fleet: Fleet, where: str) -> RedisProbe:
    try:
        return await _look(fleet, where)
    except* _REDIS_TROUBLE as group:  # the client's task group wraps what fails to connect
        first = leaves(group)[0]
        raise FleetUnavailable(f"Redis at {where}: {type(first).__name__}: {str(first)[:200]}") from None


async def _look(fleet: Fleet, where: str) -> RedisProbe:
    async with connect(fleet.target) as client:
        info: dict[str, Any] = await client.info("server")
        best = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            await client.ping()
            best = min(best, time.perf_counter() - began)
        key = fleet.key("relay", f"doctor-{uuid.uuid4().hex[:8]}")
        write_problem: str | None = None
        try:
            await client.set(key, "doctor", px=5000)
            await client.delete([key])
        except _REDIS_TROUBLE as exc:
            write_problem = f"{type(exc).__name__}: {str(exc)[:200]}"
        return RedisProbe(where, str(info.get("redis_version", "?")), best * 1000, write_problem)


async def startup_problem(settings: Settings) -> str | None:
    """Why the fleet's Redis cannot be used now (one line for stderr), or None."""
    try:
        found = await probe(settings)
    except FleetUnavailable as exc:
        return f"RELAY_REDIS_URL: cannot use Redis at start-up: {exc}"
    if found.write_problem is not None:
        return f"RELAY_REDIS_URL: cannot write to Redis at {found.where}: {found.write_problem}"
    return None
