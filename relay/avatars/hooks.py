"""Bookkeeping around avatar sessions without wrapping providers twice: `SessionHooks` say what to do when a
session is created upstream, handed over, reported unstoppable, and closed; `HookedProvider` is the one wrapper that
runs them around any provider's `open_session`, so the journal and the metrics each write hooks, not providers.

A hook set is made per session, from the provider's name (`MakeHooks`), so it may keep that session's state (a
journal row, a conversation's timings) in a closure. Hooks must not raise, and `on_closed` runs on every way out,
cancellation included: a hook that awaits must shield (and bound) what it needs to finish.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from relay.avatars import AvatarProvider, AvatarSession, OnAvatarEvent, OnSessionCreated, OnStopFailed


@dataclass(frozen=True, slots=True)
class SessionOutcome:
    """How one `open_session` ended, for `on_closed`."""

    opened: bool  # the session was handed over (False: the provider refused or failed to start it)
    error: BaseException | None  # what left the context (None: a normal exit)
    stop_failed: bool  # the provider reported its last stop attempt as failed (the session may still run)


@dataclass(frozen=True, slots=True)
class SessionHooks:
    """What to do around one avatar session; every hook is optional."""

    # Awaited with the upstream id as soon as it exists, while the provider goes on starting the session.
    on_created: OnSessionCreated | None = None
    # Awaited (shielded, by the provider) when the provider's last attempt to stop the session failed.
    on_stop_failed: OnStopFailed | None = None
    # Called when the session is handed over; returns the session to hand over (itself, or a wrapper observing it).
    on_opened: Callable[[AvatarSession], AvatarSession] | None = None
    # Awaited once the provider's context has exited (the session is stopped, or stopping it gave up).
    on_closed: Callable[[SessionOutcome], Awaitable[None]] | None = None


MakeHooks = Callable[[str], SessionHooks]  # the provider's name -> the hooks of one session


class HookedProvider:
    """An `AvatarProvider` whose sessions run a fresh `SessionHooks` from each of `make_hooks`, in order (the
    caller's own `on_created`/`on_stop_failed` last). Same blocking, cancellation, errors and guarantees as the
    wrapped provider."""

    def __init__(self, inner: AvatarProvider, make_hooks: Sequence[MakeHooks]) -> None:
        self.name = inner.name
        self.inner = inner
        self._make_hooks = tuple(make_hooks)

    @asynccontextmanager
    async def open_session(self, on_event: OnAvatarEvent, *, on_created: OnSessionCreated | None = None,
                           on_stop_failed: OnStopFailed | None = None) -> AsyncIterator[AvatarSession]:
        hooks = [make(self.name) for make in self._make_hooks]
        hooks.append(SessionHooks(on_created=on_created, on_stop_failed=on_stop_failed))
        stop_failed = False

        async def created(session_id: str) -> None:
            for hook in hooks:
                if hook.on_created is not None:
                    await hook.on_created(session_id)

        async def unstoppable(session_id: str) -> None:
            nonlocal stop_failed
            stop_failed = True
            for hook in hooks:
                if hook.on_stop_failed is not None:
                    await hook.on_stop_failed(session_id)

        any_created = any(hook.on_created is not None for hook in hooks)
        opened = False
        error: BaseException | None = None
        try:
            async with self.inner.open_session(on_event, on_created=created if any_created else None,
                                               on_stop_failed=unstoppable) as session:
                opened = True
                for hook in hooks:
                    if hook.on_opened is not None:
                        session = hook.on_opened(session)
                yield session
        except BaseException as exc:
            error = exc
            raise
        finally:
            outcome = SessionOutcome(opened=opened, error=error, stop_failed=stop_failed)
            for hook in hooks:
                if hook.on_closed is not None:
                    await hook.on_closed(outcome)
