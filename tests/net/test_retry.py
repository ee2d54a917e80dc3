"""The retry policy (relay/net/retry.py): exponential back-off and the loop that sleeps between
attempts. The loop runs on trio's autojump clock: the waits are measured in virtual time, nothing really sleeps."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.net.retry import Retryable, backoff_delay, call_with_retries


def test_backoff_doubles_from_the_base_on_each_attempt() -> None:
    assert [backoff_delay(n, base=0.2, cap=100.0) for n in range(1, 6)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2])
    assert [backoff_delay(n, base=1.0, cap=100.0) for n in range(1, 5)] == [1.0, 2.0, 4.0, 8.0]


def test_backoff_is_capped() -> None:
    assert [backoff_delay(n, base=1.0, cap=5.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_backoff_defaults_start_at_200_ms_and_stop_at_5_s() -> None:
    assert backoff_delay(1) == pytest.approx(0.2)
    assert backoff_delay(2) == pytest.approx(0.4)
    assert backoff_delay(20) == 5.0


class FlakyCall:
    """A call that raises `Retryable` (with the given Retry-After values, in turn) before it succeeds, and records
    the (virtual) time of every attempt."""

    def __init__(self, failures: list[float | None]) -> None:
        self.failures = list(failures)
        self.attempted_at: list[float] = []

    async def __call__(self) -> str:
        self.attempted_at.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if self.failures:
            raise Retryable("try again", retry_after=self.failures.pop(0))
        return "done"

    def waits(self) -> list[float]:
        """Seconds slept between consecutive attempts."""
        return [b - a for a, b in zip(self.attempted_at, self.attempted_at[1:], strict=False)]


async def test_the_loop_sleeps_the_growing_backoff_between_attempts(autojump_clock: trio.testing.MockClock) -> None:
    call = FlakyCall([None, None, None])
    assert await call_with_retries(call, attempts=4, base=1.0, cap=100.0) == "done"
    assert call.waits() == pytest.approx([1.0, 2.0, 4.0])


async def test_the_loop_waits_for_retry_after_when_it_is_longer_than_the_backoff(
        autojump_clock: trio.testing.MockClock) -> None:
    call = FlakyCall([3.0, 0.01])
    assert await call_with_retries(call, attempts=3, base=0.5, cap=10.0) == "done"
    assert call.waits() == pytest.approx([3.0, 1.0])  # Retry-After 3 s; then the back-off (1 s) is the longer


async def test_the_loop_caps_an_upstreams_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    call = FlakyCall([3600.0])
    assert await call_with_retries(call, attempts=2, base=0.2, cap=5.0) == "done"
    assert call.waits() == pytest.approx([5.0])


async def test_the_last_failure_is_raised_after_the_last_attempt(autojump_clock: trio.testing.MockClock) -> None:
    call = FlakyCall([None, None, None])
    with pytest.raises(Retryable, match="try again"):
        await call_with_retries(call, attempts=3, base=0.2, cap=5.0)
    assert len(call.attempted_at) == 3
    assert call.waits() == pytest.approx([0.2, 0.4])  # no sleep after the last attempt


async def test_other_exceptions_are_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    attempts = 0

    async def broken() -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError("not transient")

    with pytest.raises(ValueError, match="not transient"):
        await call_with_retries(broken, attempts=5)
    assert attempts == 1


async def test_cancelling_the_caller_cancels_the_wait(autojump_clock: trio.testing.MockClock) -> None:
    call = FlakyCall([None] * 10)
    t0 = trio.current_time()
    with trio.move_on_after(1.0) as scope:
        await call_with_retries(call, attempts=10, base=0.3, cap=5.0)
    assert scope.cancelled_caught
    assert trio.current_time() - t0 == pytest.approx(1.0)
    assert call.waits() == pytest.approx([0.3, 0.6])  # the fourth attempt (at 2.1 s) never happened
