"""What the simulators share for injected faults (imports nothing from the relay, like every simulator)."""

from __future__ import annotations

from typing import Any


def take_forced_failure(failures: dict[str, Any], endpoint: str) -> dict[str, Any] | None:
    """The forced failure configured for `endpoint` (`{"status", "code", "message", "retry_after", "times"}`), or
    None when this request should succeed. A failure with `times` fails that many requests, counting down."""
    fail = failures.get(endpoint)
    if not fail:
        return None
    times = fail.get("times")
    if times is not None:
        if times <= 0:
            return None
        fail["times"] = times - 1
    return dict(fail)
