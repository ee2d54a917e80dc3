"""The open conversations of this process: admission (global and per-client caps, the start rate), readiness, and
the drain on shutdown. Each admitted conversation gets a cancel scope the registry can cancel; the conversation
turns that cancellation into a `shutdown` ending for its browser.

Who counts the seats is a `SeatKeeper`, chosen once (`relay.server.fleet_admission.seat_keeper`): `LocalSeats` (this
process; under `serve --workers N` a `SharedCap`, relay.server.seats, also holds the whole machine's count, so the
global cap is machine-wide) or, with RELAY_REDIS_URL, `FleetSeats` (the whole fleet's seats in Redis). Plain
bookkeeping here; the Redis keeper does the I/O."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

import trio

from relay.server.limits import StartRateLimiter

RefusalCode = Literal["capacity", "shutdown", "upstream_unavailable", "unauthorized"]
# Why a conversation was refused, finer than the browser's code: the label of the admission refusals metric.
RefusalWhy = Literal["shutdown", "max_conversations", "per_client", "start_rate", "redis_unavailable", "pre_start",
                     "token_used"]


class AdmissionRefused(Exception):
    """No room for another conversation; the message is safe to show the client. `code`: the browser's `error`
    code, `capacity` (a cap), `shutdown` (the relay is shutting down) or `upstream_unavailable` (the fleet's
    shared state cannot be reached and the outage policy refuses). `why`: which limit said no."""

    def __init__(self, message: str, code: RefusalCode = "capacity", why: RefusalWhy = "max_conversations") -> None:
        super().__init__(message)
        self.code: RefusalCode = code
        self.why: RefusalWhy = why


FULL = "the relay is at its maximum number of conversations; try again later"
OVER_RATE = "too many new conversations from your address; try again in a minute"


def over_cap(client: str) -> AdmissionRefused:
    """A client over its cap: a client is a token's `sub` ("sub:…") or an address."""
    who = "for this user" if client.startswith("sub:") else "from your address"
    return AdmissionRefused(f"too many conversations {who}; try again later", why="per_client")


def full() -> AdmissionRefused:
    return AdmissionRefused(FULL, why="max_conversations")


class SharedCap(Protocol):
    """Seats shared with the other worker processes (`relay.server.seats.Seats`)."""

    def take(self) -> bool: ...
    def give_back(self) -> None: ...
    def taken(self) -> int: ...


class SeatKeeper(Protocol):
    """Who counts the seats: one per app. `take`, `move` and `give_back` work on one seat (a conversation's id);
    `taken()` is the global count readiness compares with the cap (the last one known, never I/O)."""

    async def take(self, seat: str, client: str) -> None:
        """Hold one seat for `client`; raises AdmissionRefused over a cap."""
        ...

    async def move(self, seat: str, before: str, after: str) -> None:
        """Count `seat` against `after` from now on; raises AdmissionRefused when `after` is at its cap."""
        ...

    async def give_back(self, seat: str) -> None:
        """Release `seat` (shielded and bounded by the caller's own means: it must never block for long)."""
        ...

    async def allow_start(self, client: str, now: float) -> bool:
        """Take one conversation start for `client` (its address) at `now` (seconds); False over the rate."""
        ...

    def taken(self) -> int: ...


@dataclass
class LocalSeats:
    """The seats of this process (and of this machine's workers through `shared`): no I/O."""

    max_conversations: int
    max_per_client: int
    starts_per_minute: int = 30
    shared: SharedCap | None = None
    held: dict[str, str] = field(default_factory=dict)  # seat -> client
    per_client: Counter[str] = field(default_factory=Counter)
    starts: StartRateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.starts = StartRateLimiter(self.starts_per_minute)

    def check(self, client: str) -> None:
        """Raise AdmissionRefused unless one more seat for `client` fits under this process's caps."""
        if len(self.held) >= self.max_conversations:
            raise full()
        if self.per_client[client] >= self.max_per_client:
            raise over_cap(client)

    def record(self, seat: str, client: str) -> None:
        """Count `seat` for `client` without checking (the fleet already admitted it)."""
        self.held[seat] = client
        self.per_client[client] += 1

    def forget(self, seat: str) -> None:
        client = self.held.pop(seat, None)
        if client is None:
            return
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]

    async def take(self, seat: str, client: str) -> None:
        self.check(client)
        if self.shared is not None and not self.shared.take():
            raise full()
        self.record(seat, client)

    def move_now(self, seat: str, before: str, after: str) -> None:
        if before == after:
            return
        if self.per_client[after] >= self.max_per_client:
            raise over_cap(after)
        self.forget(seat)
        self.record(seat, after)

    async def move(self, seat: str, before: str, after: str) -> None:
        self.move_now(seat, before, after)

    async def give_back(self, seat: str) -> None:
        if seat in self.held and self.shared is not None:
            self.shared.give_back()
        self.forget(seat)

    async def allow_start(self, client: str, now: float) -> bool:
        return self.starts.allow(client, now)

    def taken(self) -> int:
        if self.shared is not None:
            return self.shared.taken()
        return len(self.held)


_seat_numbers = itertools.count(1)


@dataclass
class Registry:
    max_conversations: int
    max_per_client: int
    shutting_down: bool = False
    shared: SharedCap | None = None
    keeper: SeatKeeper | None = None  # None: LocalSeats from the caps (and `shared`)
    close_waiting: Callable[[], None] | None = None  # ends the sockets still waiting to start (PendingPool)
    _scopes: set[trio.CancelScope] = field(default_factory=set)
    _seat_of: dict[trio.CancelScope, tuple[str, str]] = field(default_factory=dict)  # scope -> (seat, client)
    _idle: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        if self.keeper is None:
            self.keeper = LocalSeats(self.max_conversations, self.max_per_client, shared=self.shared)

    @property
    def seats(self) -> SeatKeeper:
        assert self.keeper is not None
        return self.keeper

    @property
    def open_count(self) -> int:
        return len(self._scopes)

    @property
    def under_capacity(self) -> bool:
        """Below the global cap (the whole relay's with several workers, the fleet's with Redis)."""
        return self.seats.taken() < self.max_conversations

    @property
    def ready(self) -> bool:
        """True while new conversations are welcome: not shutting down and below the global cap."""
        return not self.shutting_down and self.under_capacity

    @asynccontextmanager
    async def admit(self, client: str) -> AsyncIterator[trio.CancelScope]:
        """Reserve a seat for one conversation from `client` (its address); yields the scope a shutdown cancels.
        Raises AdmissionRefused when shutting down or over a cap. The seat is released as soon as the block is
        left, whatever ends it."""
        if self.shutting_down:
            raise AdmissionRefused("the relay is shutting down; try again shortly", "shutdown", "shutdown")
        seat = f"c{next(_seat_numbers)}"
        await self.seats.take(seat, client)
        scope = trio.CancelScope()
        self._scopes.add(scope)
        self._seat_of[scope] = (seat, client)
        try:
            yield scope
        finally:
            self._scopes.discard(scope)
            self._seat_of.pop(scope, None)
            with trio.CancelScope(shield=True):
                await self.seats.give_back(seat)
            if not self._scopes:
                self._idle.set()
                self._idle = trio.Event()

    async def reassign(self, scope: trio.CancelScope, client: str) -> None:
        """Count the conversation admitted with `scope` against `client` from now on (its token's `sub`, known only
        once its `start` arrived). Raises AdmissionRefused when that client is at its cap."""
        seat, before = self._seat_of[scope]
        if before == client:
            return
        await self.seats.move(seat, before, client)
        self._seat_of[scope] = (seat, client)

    async def drain(self, grace: float) -> int:
        """Stop admitting, end every open conversation (each tells its browser `shutdown` and stops its avatar
        session) and wait up to `grace` seconds for them to finish. Returns how many were still open then."""
        self.shutting_down = True
        if self.close_waiting is not None:
            self.close_waiting()
        for scope in list(self._scopes):
            scope.cancel()
        with trio.move_on_after(grace):
            while self._scopes:
                await self._idle.wait()
        return self.open_count
