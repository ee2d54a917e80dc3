"""A fleet of relays sharing one state in Redis (RELAY_REDIS_URL): the connection, this relay's identity and its
lease. Fleet-wide admission (relay.server.fleet_admission) and the fleet's session registry
(relay.ops.fleet_sessions) build on it; without RELAY_REDIS_URL none of this exists and the relay is on its own.

Every relay process has an id (`relay_id`: host, pid and a random part) and a lease: the key `…:relay:<id>`, set
with an expiry of RELAY_FLEET_LEASE seconds and renewed every third of it by `Fleet.serve`. A relay whose lease key
is gone is dead to the fleet: its seats stop counting and its avatar sessions are taken over by another relay.

All keys share one hash tag (`{prefix}`), so they live in one Redis Cluster slot and every Lua script may touch any
of them. Every Redis call goes through `Fleet.run`, bounded by `OP_TIMEOUT`; a failure raises `FleetUnavailable`
and marks the fleet unhealthy until the next successful heartbeat (`healthy`, `/readyz`, the metrics). Nothing here
logs the URL's password: `RedisTarget.redacted` is what log lines and errors show.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import coredis
import coredis.exceptions
import orjson
import trio
from coredis.connection import TCPLocation

from relay._util import single
from relay.config import ConfigError, Settings

log = logging.getLogger("relay.fleet")

T = TypeVar("T")
OP_TIMEOUT = 2.0  # seconds any one Redis call may take before it counts as Redis being unreachable
CONNECT_TIMEOUT = 5.0  # seconds the first contact at start-up may take


# What a call raises when Redis is down, restarting or answering errors (coredis runs on anyio streams).
_REDIS_TROUBLE = (coredis.exceptions.RedisError, OSError, anyio.ClosedResourceError, anyio.BrokenResourceError,
                  anyio.EndOfStream)


class FleetUnavailable(Exception):
    """Redis could not be reached or answered with an error; the message is safe to log (no password)."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where the fleet's Redis is, parsed from RELAY_REDIS_URL (pure: no I/O)."""

    kind: Literal["standalone", "sentinel", "cluster"]
    url: str  # for standalone and cluster: the URL coredis connects to (scheme normalised)
    redacted: str  # the URL with its password replaced by ***, for logs and errors
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""  # sentinel: the monitored primary's name
    db: int = 0
    password: str | None = None
    username: str | None = None
    tls: bool = False


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def parse_redis_url(url: str) -> RedisTarget:
    """Read RELAY_REDIS_URL: `redis://`, `rediss://` (TLS), `unix://` (one server), `redis+sentinel://` /
    `rediss+sentinel://` `[user:pass@]host:port[,host:port…]/service[/db]`, `redis+cluster://` / `rediss+cluster://`
    `host:port` (any node). Raises ValueError naming what is wrong (never the password)."""
    redacted = _redact(url)
    scheme, _, rest = url.partition("://")
    if not rest:
        raise ValueError(f"RELAY_REDIS_URL must look like redis://host:port/0, not {redacted[:80]!r}")
    scheme = scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget("standalone", url, redacted, tls=scheme == "rediss")
    if scheme in ("redis+cluster", "rediss+cluster"):
        plain = scheme.split("+")[0]
        return RedisTarget("cluster", f"{plain}://{rest}", redacted, tls=plain == "rediss")
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        credentials, _, hosts_and_path = rest.rpartition("@")
        hosts, _, path = hosts_and_path.partition("/")
        segments = [s for s in path.split("/") if s]
        if not segments:
            raise ValueError("RELAY_REDIS_URL: a sentinel URL names the service: "
                             "redis+sentinel://host:26379[,host:26379]/mymaster[/db]")
        sentinels: list[tuple[str, int]] = []
        for item in hosts.split(","):
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"RELAY_REDIS_URL: sentinel address {item[:40]!r} is not host:port")
            sentinels.append((host.strip("[]"), int(port)))
        user, _, password = credentials.partition(":") if credentials else ("", "", "")
        try:
            db = int(segments[1]) if len(segments) > 1 else 0
        except ValueError:
            raise ValueError(f"RELAY_REDIS_URL: the database {segments[1][:10]!r} is not a number") from None
        return RedisTarget("sentinel", "", redacted, sentinels=tuple(sentinels), service=segments[0], db=db,
                           password=password or None, username=user or None, tls=scheme.startswith("rediss"))
    raise ValueError(f"RELAY_REDIS_URL: unknown scheme {scheme[:20]!r} (redis, rediss, unix, redis+sentinel, "
                     "redis+cluster)")


def connect(target: RedisTarget) -> AbstractAsyncContextManager[Any]:
    """A coredis client for `target`, connected while its `async with` lasts. Responses are decoded str. Through
    Sentinel, the sentinels are asked for the primary (and again after a failover, by coredis's sentinel pool)."""
    if target.kind == "cluster":
        return coredis.RedisCluster.from_url(target.url, decode_responses=True)
    if target.kind == "sentinel":
        return _sentinel_primary(target)
    return coredis.Redis.from_url(target.url, decode_responses=True)


@asynccontextmanager
async def _sentinel_primary(target: RedisTarget) -> AsyncIterator[Any]:
    """The primary Sentinel names for `target.service`: the sentinels' own clients and the primary's each need
    their connection pool entered (coredis), the sentinels' first."""
    credentials: dict[str, Any] = {}
    if target.password is not None:
        credentials["password"] = target.password
    if target.username is not None:
        credentials["username"] = target.username
    if target.tls:  # rediss+sentinel: TLS to the sentinels and to the primary, certificates checked
        credentials["ssl_context"] = ssl.create_default_context()
    sentinel = coredis.Sentinel([TCPLocation(host, port) for host, port in target.sentinels],
                                decode_responses=True, sentinel_kwargs=dict(credentials), **credentials)
    async with sentinel, sentinel.primary_for(target.service, db=target.db) as primary:
        yield primary


def new_relay_id() -> str:
    """This process's name in the fleet: host, pid and a random part (a restarted process is a new relay)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class Fleet:
    """This relay's membership of the fleet. `serve` (run in the app's nursery) connects, keeps the lease alive and
    tells listeners when Redis comes back after an outage; `run` is how every module talks to Redis."""

    target: RedisTarget
    prefix: str
    lease: float
    relay_id: str = field(default_factory=new_relay_id)
    client: Any = None
    healthy: bool = False
    last_error: str | None = None
    _on_reconnect: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _connected: trio.Event = field(default_factory=trio.Event)

    @classmethod
    def from_settings(cls, settings: Settings) -> Fleet | None:
        """The fleet RELAY_REDIS_URL asks for, or None without it."""
        if settings.relay_redis_url is None:
            return None
        try:
            target = parse_redis_url(settings.relay_redis_url.get_secret_value())
        except ValueError as exc:
            raise ConfigError(f"invalid configuration: {exc}") from None
        return cls(target, settings.relay_redis_prefix, settings.relay_fleet_lease)

    def key(self, *parts: str) -> str:
        """A key of this fleet: `{prefix}:part:part` (one hash tag: one Cluster slot)."""
        return ":".join((f"{{{self.prefix}}}", *parts))

    @property
    def relay_key(self) -> str:
        return self.key("relay", self.relay_id)

    @property
    def lease_ms(self) -> int:
        return int(self.lease * 1000)

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await `callback` each time Redis answers again after an outage (to rebuild what this relay holds)."""
        self._on_reconnect.append(callback)

    async def run(self, call: Callable[[Any], Awaitable[T]], *, limit: float = OP_TIMEOUT) -> T:
        """Await `call(client)` bounded by `limit` seconds. Raises FleetUnavailable (and marks the fleet unhealthy) when
        Redis is unreachable, too slow, or answers with an error. Cancellation from the caller passes through."""
        if self.client is None:
            raise FleetUnavailable("not connected to Redis")
        try:
            with trio.fail_after(limit):
                return await call(self.client)
        except trio.TooSlowError:
            raise self._lost(f"Redis at {self.target.redacted} did not answer within {limit:g} s") from None
        except _REDIS_TROUBLE as exc:
            raise self._lost(f"Redis at {self.target.redacted}: {type(exc).__name__}: {str(exc)[:200]}") from None

    def _lost(self, why: str) -> FleetUnavailable:
        """Mark the fleet unhealthy (logging the first loss) and return the error to raise."""
        if self.healthy:
            log.warning("fleet: lost Redis (%s); open conversations go on, their sessions are stopped locally",
                        why)
        self.healthy = False
        self.last_error = why
        return FleetUnavailable(why)

    async def _renew(self) -> None:
        value = orjson.dumps({"host": socket.gethostname()[:64], "pid": os.getpid()}).decode()
        await self.run(lambda r: r.set(self.relay_key, value, px=self.lease_ms))

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, take this relay's lease and report started; then renew the lease every third of it until
        cancelled, noticing outages and recoveries. Raises FleetUnavailable when Redis cannot be reached at
        start-up (a clear error instead of a relay that would admit without the fleet's limits). On the way out
        (cancellation) the lease is deleted, so the fleet forgets this relay at once."""
        try:
            await self._serve(task_status)
        except BaseExceptionGroup as group:  # coredis's own task group wraps what ends the client
            problem = single(group)
            if isinstance(problem, FleetUnavailable):
                raise problem from None
            raise

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        async with connect(self.target) as client:
            self.client = client
            try:
                await self.run(lambda r: r.ping(), limit=CONNECT_TIMEOUT)
                await self._renew()
            except FleetUnavailable as exc:
                raise FleetUnavailable(f"RELAY_REDIS_URL: cannot use Redis at start-up: {exc}") from None
            self.healthy = True
            self.last_error = None
            log.info("fleet: joined as %s on %s (lease %g s)", self.relay_id, self.target.redacted, self.lease)
            task_status.started()
            try:
                while True:
                    await trio.sleep(self.lease / 3)
                    was_healthy = self.healthy
                    try:
                        await self._renew()
                    except FleetUnavailable:
                        continue
                    self.healthy = True
                    self.last_error = None
                    if not was_healthy:
                        log.info("fleet: Redis is back; rebuilding this relay's state")
                        for callback in self._on_reconnect:
                            try:
                                await callback()
                            except FleetUnavailable:
                                break  # lost again: marked unhealthy, so the next renewal rebuilds once more
            finally:
                self.client = None
                self.healthy = False
                await self._give_up_lease()

    async def _give_up_lease(self) -> None:
        """Delete this relay's lease key, shielded and bounded, on a connection of its own (the serving client's
        connections belong to a task group that is being cancelled)."""
        with trio.CancelScope(shield=True), trio.move_on_after(OP_TIMEOUT):
            try:
                async with connect(self.target) as client:
                    await client.delete([self.relay_key])
            except* _REDIS_TROUBLE:  # the client's task group wraps what fails to connect
                log.info("fleet: could not delete this relay's lease; it expires within %g s", self.lease)
