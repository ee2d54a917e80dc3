"""The avatar side's timers, each asserted as a deadline on Trio's autojump clock (so exact, and free): a stop that
hangs is given up after its time limit, the budget's wait for a seat ends at RELAY_AVATAR_SEAT_WAIT and retries every
RETRY_INTERVAL, and the LITE audio socket's opening is bounded by its connect timeout (a real loopback listener that
never answers the upgrade)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from relay.avatars import AvatarUnavailable
from relay.avatars.budget import RETRY_INTERVAL, BudgetedProvider, LocalAvatarBudget
from relay.avatars.common import stop_shielded
from relay.avatars.lite import open_lite_audio_stream
from tests.avatars.test_budget import FakeProvider


async def test_a_stop_that_hangs_is_given_up_after_its_time_limit_even_when_the_caller_is_cancelled(
        autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[float] = []

    async def hangs() -> None:
        attempts.append(trio.current_time())
        await trio.sleep_forever()

    t0 = trio.current_time()
    with trio.CancelScope() as caller:
        caller.cancel()  # the conversation is being cancelled: the stop still gets its time, and no more
        gave_up = await stop_shielded(hangs, 7.0)
    assert attempts == [t0]
    assert gave_up is not None and gave_up.reason == "timeout"
    assert trio.current_time() - t0 == 7.0


async def test_the_wait_for_an_avatar_seat_ends_at_its_bound_with_capacity(
        autojump_clock: trio.testing.MockClock) -> None:
    budget = LocalAvatarBudget(1)
    provider = BudgetedProvider(FakeProvider(), budget, wait=4.0)
    async with provider.open_session(lambda event: None):
        t0 = trio.current_time()
        with pytest.raises(AvatarUnavailable) as refused:
            async with provider.open_session(lambda event: None):
                raise AssertionError("opened over the budget")
        assert refused.value.reason == "capacity"
        assert trio.current_time() - t0 == pytest.approx(4.0)


async def test_a_seat_freed_during_the_wait_is_taken_at_the_next_retry(
        autojump_clock: trio.testing.MockClock) -> None:
    budget = LocalAvatarBudget(1)
    provider = BudgetedProvider(FakeProvider(), budget, wait=30.0)
    taken_at: list[float] = []
    t0 = trio.current_time()

    async def second() -> None:
        async with provider.open_session(lambda event: None):
            taken_at.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        async with provider.open_session(lambda event: None):
            nursery.start_soon(second)
            await trio.sleep(2.3)  # the first conversation ends 2.3 s in
    assert RETRY_INTERVAL == 0.25
    assert taken_at == [pytest.approx(2.5)]  # the first retry after the seat came back


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A loopback port that completes TCP connections (the kernel's backlog) and never answers anything."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


async def test_the_audio_socket_that_never_answers_is_given_up_at_the_connect_timeout(
        silent_listener: int, autojump_clock: trio.testing.MockClock) -> None:
    t0 = trio.current_time()
    with pytest.raises(AvatarUnavailable) as failed:
        async with open_lite_audio_stream(f"ws://127.0.0.1:{silent_listener}/v1/ws", lambda event: None,
                                          connect_timeout=6.0):
            raise AssertionError("opened a socket that never answered")
    assert failed.value.reason == "timeout"
    assert trio.current_time() - t0 == pytest.approx(6.0)
