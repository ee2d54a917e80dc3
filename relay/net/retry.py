"""Retries with backoff for upstream calls that are safe to repeat (stop, keep-alive, list).

Never wrap a call that creates something billable (HeyGen `streaming.new`, LiveAvatar `sessions/token`): a retry
after a lost answer can create two sessions. Pure policy plus one small async loop; cancelling the caller cancels
the loop, including its sleeps. (The `Retry-After` header itself is read by `relay.protocol.http`.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

T = TypeVar("T")


class Retryable(Exception):
    """Raise (or wrap) this from a call to ask for another attempt, after `retry_after` seconds if the upstream
    said so (HTTP `Retry-After`)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def backoff_delay(attempt: int, *, base: float = 0.2, cap: float = 5.0) -> float:
    """Exponential backoff: base, 2*base, 4*base, ... capped (attempt counts from 1)."""
    return min(cap, base * 2.0 ** (attempt - 1))


async def call_with_retries(call: Callable[[], Awaitable[T]], *, attempts: int = 3, base: float = 0.2,
                            cap: float = 5.0) -> T:
    """Await `call()` up to `attempts` times while it raises `Retryable`, sleeping the backoff delay or the
    upstream's `retry_after` (whichever is longer, capped by `cap`) between attempts. The last `Retryable` is
    re-raised. Cancelled by the caller's scope at any point."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except Retryable as exc:
            if attempt == attempts:
                raise
            delay = backoff_delay(attempt, base=base, cap=cap)
            if exc.retry_after is not None:
                delay = min(cap, max(delay, exc.retry_after))
            await trio.sleep(delay)
    raise AssertionError("unreachable")
