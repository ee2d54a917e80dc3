"""An ordered list of avatar providers (`RELAY_AVATAR=liveavatar,simli`, issue #23 §2): `FailoverProvider` opens a
conversation's avatar from the first provider that starts, moving on after each set-up refusal.

Every refusal moves on: the ones another provider can absorb (its concurrency limit, no credits, a rate limit, an
outage, a time-out, the relay's own budget for that provider) quietly, the ones that say the operator's
configuration is wrong (a bad key, an unknown avatar) with an error in the log, since they will refuse every
conversation until fixed. Only when every provider refused does `open_session` raise, with the last refusal (the
conversation then goes voice-only, as with one provider). The list shares one set-up time, RELAY_SETUP_TIMEOUT:
each provider but the last is given an equal share of what is left (half of it for the first of two), the last all
that is left, so a provider that hangs still leaves the next one time to start. The providers bound their shielded
creation step by the caller's deadline (`relay.avatars.common.setup_deadline`), so a share is kept.

Each entry is a full provider chain (budgeted, hooked: relay.avatars.budget, relay.avatars.hooks), so the journal,
the fleet and the metrics see the session under the name of the provider that opened it. This module must never
swallow the caller's cancellation nor leave a provider's context unexited.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from relay.avatars import (
    AvatarProvider,
    AvatarSession,
    AvatarUnavailable,
    OnAvatarEvent,
    OnSessionCreated,
    OnStopFailed,
    UnavailableReason,
)

log = logging.getLogger("relay.avatars")

# Refusals that say the operator's configuration is wrong: moved on from, but loudly.
CONFIGURATION_REFUSALS: frozenset[UnavailableReason] = frozenset({"unauthorized", "bad_config"})

OnMovedOn = Callable[[str, UnavailableReason], None]  # (the provider that refused, why); must not block


class FailoverProvider:
    """An `AvatarProvider` over an ordered list of providers: the session comes from the first that starts.

    Same blocking, cancellation and guarantees as each provider's `open_session`; `on_moved_on(name, reason)` is
    called for every refusal that moved on to the next provider (for the metrics), not for the last one, which
    `open_session` raises."""

    def __init__(self, providers: Sequence[AvatarProvider], setup_timeout: float, *,
                 on_moved_on: OnMovedOn | None = None) -> None:
        if not providers:
            raise ValueError("a provider list needs at least one provider")
        self.providers = tuple(providers)
        self.name = ",".join(p.name for p in self.providers)
        self._setup_timeout = setup_timeout
        self._on_moved_on = on_moved_on

    def _refused(self, provider: AvatarProvider, error: AvatarUnavailable, last: bool) -> None:
        if error.reason in CONFIGURATION_REFUSALS:
            log.error("avatar provider %s refused the session because of its configuration (%s): %s", provider.name,
                      error.reason, error.message)
        else:
            log.info("avatar provider %s refused the session (%s): %s", provider.name, error.reason, error.message)
        if not last:
            log.info("moving on to the next avatar provider after %s", provider.name)
            if self._on_moved_on is not None:
                self._on_moved_on(provider.name, error.reason)

    @asynccontextmanager
    async def open_session(self, on_event: OnAvatarEvent, *, on_created: OnSessionCreated | None = None,
                           on_stop_failed: OnStopFailed | None = None) -> AsyncIterator[AvatarSession]:
        """Open the session from the first provider that starts (see the module docstring); yield it; exit that
        provider's context on every way out. Raises the last provider's AvatarUnavailable when all refused (a
        "timeout" one when the set-up time ran out before a provider could be tried)."""
        deadline = trio.current_time() + self._setup_timeout
        last: AvatarUnavailable | None = None
        for index, provider in enumerate(self.providers):
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                break
            final = index == len(self.providers) - 1
            share = remaining if final else remaining / (len(self.providers) - index)
            # The attempt's scope stays open around the session (a provider's context holds nurseries and scopes of
            # its own, which must close inside it); its deadline is lifted once the session is handed over.
            attempt = trio.CancelScope(deadline=trio.current_time() + share)
            opened = False
            try:
                with attempt:
                    async with provider.open_session(on_event, on_created=on_created,
                                                     on_stop_failed=on_stop_failed) as session:
                        opened = True
                        attempt.deadline = math.inf
                        yield session
                        return
            except AvatarUnavailable as exc:
                if opened:
                    raise  # from the body: not a set-up refusal
                last = exc
                self._refused(provider, exc, final)
                continue
            if attempt.cancelled_caught:
                last = AvatarUnavailable("timeout", f"The avatar ({provider.name}) did not start in time.")
                self._refused(provider, last, final)
                continue
            return
        raise last or AvatarUnavailable("timeout", "No avatar provider could be tried in time.")
