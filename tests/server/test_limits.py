"""The start-rate limiter (relay/server/limits.py), with no sockets."""

from __future__ import annotations

from relay.server.limits import MAX_TRACKED_CLIENTS, StartRateLimiter


def test_start_rate_is_limited_per_address_and_refills() -> None:
    limiter = StartRateLimiter(per_minute=3)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", 0.0)
    assert not limiter.allow("a", 10.0)
    assert limiter.allow("a", 20.0)  # one start refills every 20 s


def test_start_rate_memory_stays_bounded() -> None:
    limiter = StartRateLimiter(per_minute=1)
    for i in range(MAX_TRACKED_CLIENTS + 50):
        limiter.allow(f"10.{i}", float(i) * 1e-6)
    assert limiter.tracked <= MAX_TRACKED_CLIENTS
