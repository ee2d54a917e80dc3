"""The avatar account's concurrent-session budget (RELAY_MAX_AVATAR_SESSIONS): `BudgetedProvider` takes a seat of
the budget before a session is created and gives it back once the session has been stopped (or its creation
failed), so the relay never asks the provider for a session the plan would refuse. A conversation finding no seat
(after waiting up to RELAY_AVATAR_SEAT_WAIT) gets `AvatarUnavailable("capacity")`: it goes voice-only without a
create call. The budget is this process's (`LocalAvatarBudget`) or, with Redis, the fleet's
(relay.server.fleet_admission). The provider's own concurrent-limit answer still degrades as before.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import trio

from relay.avatars import (
    AvatarProvider,
    AvatarSession,
    AvatarUnavailable,
    OnAvatarEvent,
    OnSessionCreated,
    OnStopFailed,
)

RETRY_INTERVAL = 0.25  # seconds between two attempts at a seat while waiting for one


class AvatarBudget(Protocol):
    async def take_avatar(self, seat: str) -> bool:
        """One seat for a session about to be created; False when none is free."""
        ...

    async def give_back_avatar(self, seat: str) -> None:
        """Release a seat taken by `take_avatar` (the session is stopped); must not block for long."""
        ...


@dataclass
class LocalAvatarBudget:
    """The budget counted by this process alone (no Redis)."""

    limit: int
    held: set[str] = field(default_factory=set)

    async def take_avatar(self, seat: str) -> bool:
        if len(self.held) >= self.limit:
            return False
        self.held.add(seat)
        return True

    async def give_back_avatar(self, seat: str) -> None:
        self.held.discard(seat)


_seats = itertools.count(1)


class BudgetedProvider:
    """An `AvatarProvider` whose sessions each hold a seat of `budget` from before their creation until they are
    stopped. `wait`: seconds to wait for a seat before giving up (0: give up at once)."""

    def __init__(self, inner: AvatarProvider, budget: AvatarBudget, wait: float = 0.0, *,
                 on_refused: Callable[[], None] | None = None) -> None:
        self.name = inner.name
        self.inner = inner
        self.budget = budget
        self.wait = wait
        self.on_refused = on_refused  # called for each session refused for want of a seat

    async def _take(self, seat: str) -> bool:
        if await self.budget.take_avatar(seat):
            return True
        with trio.move_on_after(self.wait):
            while True:
                await trio.sleep(RETRY_INTERVAL)
                if await self.budget.take_avatar(seat):
                    return True
        return False

    @asynccontextmanager
    async def open_session(self, on_event: OnAvatarEvent, *, on_created: OnSessionCreated | None = None,
                           on_stop_failed: OnStopFailed | None = None) -> AsyncIterator[AvatarSession]:
        seat = f"a{next(_seats)}"
        if not await self._take(seat):
            if self.on_refused is not None:
                self.on_refused()
            raise AvatarUnavailable("capacity", "All of the avatar account's concurrent sessions are in use; the "
                                    "conversation goes on voice-only.")
        try:
            async with self.inner.open_session(on_event, on_created=on_created,
                                               on_stop_failed=on_stop_failed) as session:
                yield session
        finally:
            with trio.CancelScope(shield=True):
                await self.budget.give_back_avatar(seat)
