"""`relay.avatars.budget`: the avatar-account budget around a provider (a fake one: no sockets). A session over the
budget is refused with `capacity` before any create call; a seat is held from before the creation until the session
is stopped (not when the conversation's other parts end); a refused creation or a cancellation gives it back; a
bounded wait takes a seat that frees in time. The autojump clock makes waits virtual."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from relay.avatars import AvatarUnavailable
from relay.avatars.budget import BudgetedProvider, LocalAvatarBudget


class FakeProvider:
    """Counts create calls; a session 'stops' when its context exits (after `stop_seconds`)."""

    name = "fake"

    def __init__(self, *, refuse: bool = False, stop_seconds: float = 0.0) -> None:
        self.created = 0
        self.stopped = 0
        self.refuse = refuse
        self.stop_seconds = stop_seconds

    @asynccontextmanager
    async def open_session(self, on_event: Any, *, on_created: Any = None,
                           on_stop_failed: Any = None) -> AsyncIterator[Any]:
        self.created += 1
        if self.refuse:
            raise AvatarUnavailable("concurrent_limit", "the provider's own limit")
        try:
            yield object()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(self.stop_seconds)
            self.stopped += 1


async def test_over_the_budget_is_capacity_without_a_create_call(autojump_clock: trio.testing.MockClock) -> None:
    inner = FakeProvider()
    refused: list[int] = []
    provider = BudgetedProvider(inner, LocalAvatarBudget(1), on_refused=lambda: refused.append(1))
    assert provider.name == "fake"  # metrics and logs name the provider, not the wrapper
    async with provider.open_session(lambda event: None):
        t0 = trio.current_time()
        with pytest.raises(AvatarUnavailable) as caught:
            async with provider.open_session(lambda event: None):
                raise AssertionError("opened over the budget")
        assert caught.value.reason == "capacity"
        assert trio.current_time() == t0  # no wait unless one is configured
    assert inner.created == 1 and refused == [1]
    async with provider.open_session(lambda event: None):  # the seat came back with the stop
        pass
    assert inner.created == 2


async def test_the_seat_is_held_until_the_session_is_stopped(autojump_clock: trio.testing.MockClock) -> None:
    budget = LocalAvatarBudget(1)
    inner = FakeProvider(stop_seconds=3.0)
    provider = BudgetedProvider(inner, budget)
    async with trio.open_nursery() as nursery:
        async def converse() -> None:
            async with provider.open_session(lambda event: None):
                pass  # the conversation ends at once; the stop takes 3 s

        nursery.start_soon(converse)
        await trio.sleep(1.0)
        assert inner.stopped == 0 and len(budget.held) == 1  # stopping: still counted against the plan
    assert inner.stopped == 1 and not budget.held


async def test_a_refused_or_cancelled_creation_gives_the_seat_back(autojump_clock: trio.testing.MockClock) -> None:
    budget = LocalAvatarBudget(1)
    provider = BudgetedProvider(FakeProvider(refuse=True), budget)
    with pytest.raises(AvatarUnavailable) as caught:
        async with provider.open_session(lambda event: None):
            pass
    assert caught.value.reason == "concurrent_limit" and not budget.held  # the provider's own answer still counts
    provider = BudgetedProvider(FakeProvider(), budget)
    with trio.move_on_after(1.0):
        async with provider.open_session(lambda event: None):
            await trio.sleep_forever()
    assert not budget.held


async def test_a_bounded_wait_takes_a_seat_that_frees_in_time(autojump_clock: trio.testing.MockClock) -> None:
    budget = LocalAvatarBudget(1)
    provider = BudgetedProvider(FakeProvider(), budget, wait=5.0)
    got: list[float] = []
    async with trio.open_nursery() as nursery:
        async def first() -> None:
            async with provider.open_session(lambda event: None):
                await trio.sleep(2.0)

        async def second() -> None:
            async with provider.open_session(lambda event: None):
                got.append(trio.current_time())

        nursery.start_soon(first)
        await trio.sleep(0.1)
        nursery.start_soon(second)
    assert got and 2.0 <= got[0] < 2.5
    began = trio.current_time()
    async with provider.open_session(lambda event: None):
        with pytest.raises(AvatarUnavailable, match="concurrent sessions"):
            async with provider.open_session(lambda event: None):
                pass
        assert trio.current_time() - began >= 5.0  # gave up after the wait


class AwaitingBudget(LocalAvatarBudget):
    """A budget whose give-back awaits before it frees the seat, like the fleet's (a lock, then a Redis call)."""

    async def give_back_avatar(self, seat: str) -> None:
        await trio.sleep(0.01)
        await super().give_back_avatar(seat)


async def test_a_cancelled_conversation_gives_its_seat_back_even_when_the_give_back_awaits(
        autojump_clock: trio.testing.MockClock) -> None:
    budget = AwaitingBudget(1)
    inner = FakeProvider()
    provider = BudgetedProvider(inner, budget)
    with trio.move_on_after(5.0):  # the browser leaves mid-conversation: the whole conversation is cancelled
        async with provider.open_session(lambda event: None):
            assert budget.held
            await trio.sleep_forever()
    assert inner.stopped == 1
    assert not budget.held, "the seat leaked: a cancelled give-back never freed it"
    async with provider.open_session(lambda event: None):  # the next conversation gets the seat
        pass
