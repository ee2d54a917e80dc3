"""What both avatar providers share: running bookkeeping alongside a start-up step, the shielded, bounded, retried
stop, the simulators' reserved host, the placeholder key sent when none is configured, and a session's limit to rotate
before.

I/O helpers (trio); no provider-specific knowledge. This module must never swallow a cancellation of the caller
except where it says it shields.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit

import trio

from relay.avatars import AvatarInfo, AvatarUnavailable, OnSessionCreated

T = TypeVar("T")

# Sent when no key is configured (demo mode, on the simulators): the header must be present, the simulators accept
# any key, a real API answers 401 (-> "unauthorized"), and a placeholder makes it obvious in a ledger that no real
# key was used.
PLACEHOLDER_API_KEY = "demo-key"


def setup_deadline(time_limit: float) -> float:
    """When a provider's shielded creation step must give up: `time_limit` seconds from now, or the caller's own
    deadline if sooner (a provider list gives each provider a share of the set-up time: relay.avatars.failover).
    Read it before entering the shield, which hides the caller's deadline."""
    return min(trio.current_time() + time_limit, trio.current_effective_deadline())


def is_simulated(livekit_url: str) -> bool:
    """True when the LiveKit URL is on the reserved `.invalid` TLD (RFC 2606): the simulators' room, nothing to
    join."""
    host = urlsplit(livekit_url).hostname or ""
    return host.endswith(".invalid")


async def alongside(on_created: OnSessionCreated | None, session_id: str, call: Callable[[], Awaitable[T]]) -> T:
    """`await call()` while `on_created(session_id)` runs concurrently: a provider's next start-up step does not
    wait for the caller's bookkeeping. Returns `call()`'s result, or raises its exception unwrapped (not in a
    group), only once both have finished: a failing `call()` does not cut `on_created` short. Cancelled by the
    caller's scope (both then stop at their next checkpoint, except what `on_created` shields)."""
    if on_created is None:
        return await call()
    failure: Exception | None = None
    results: list[T] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_created, session_id)
        try:
            results.append(await call())
        except Exception as exc:
            failure = exc
    if failure is not None:
        raise failure
    return results[0]


async def stop_shielded(stop: Callable[[], Awaitable[None]], time_limit: float) -> AvatarUnavailable | None:
    """Run `stop()` (which retries what is worth retrying and raises AvatarUnavailable when it gives up) shielded
    from the caller's cancellation and bounded by `time_limit`, so a session is stopped even by a conversation that is
    being cancelled. Returns None when the session is stopped (or already gone), else an AvatarUnavailable saying
    why not ("timeout" when `time_limit` ran out). Never raises for a failed stop."""
    with trio.move_on_after(time_limit, shield=True):
        try:
            await stop()
        except AvatarUnavailable as exc:
            return exc
        return None
    return AvatarUnavailable("timeout", f"the stop did not finish within {time_limit:.1f} s")


def rotation_limit(info: AvatarInfo, known: Mapping[str, float]) -> float | None:
    """The seconds a session lives upstream, to rotate before: the shorter of what its provider's declaration knows
    from the settings (`known`, by provider: the sandbox's minute, the length asked) and what the provider granted
    this session (`info.session_seconds`: LiveAvatar's start answer, which may be a plan's shorter limit); None when
    neither is known."""
    limits = [limit for limit in (known.get(info.provider), info.session_seconds) if limit is not None]
    return min(limits) if limits else None
