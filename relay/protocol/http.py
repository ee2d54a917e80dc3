"""HTTP details both avatar APIs share, sans-I/O."""

from __future__ import annotations


def parse_retry_after(value: str | None, *, cap: float = 30.0) -> float | None:
    """Seconds from an HTTP `Retry-After` header (delta-seconds form only; dates are ignored), capped."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds < 0:
        return None
    return min(seconds, cap)
