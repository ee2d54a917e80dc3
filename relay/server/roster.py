"""The live conversations of this process as an operator sees them (`Roster`): who (address, token subject), since
when, which avatar session with how many seconds of avatar time so far, and in which state; and the one way to end
one from outside (`end`: reason `admin`, told to its browser in `ended`, its avatar stopped by the conversation's own
way out, as every ending is).

Filled in by hooks, never by the conversation's own code: `Roster.seat` around `run_conversation` (in
`relay.server.opening.Doorway`: the conversation's shutdown scope, address, subject, browser), the conversations'
`on_start` (its record) and the avatar sessions' hooks (`session_hooks`: created, closed). A context variable
carries the entry from the first to the others: trio copies it into every task the conversation starts. Plain
bookkeeping, no I/O, nothing here blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from relay.avatars.hooks import SessionHooks, SessionOutcome
from relay.conversation.endings import ConversationOver, cut_short
from relay.conversation.link import BrowserLink
from relay.conversation.record import ConversationRecord

State = Literal["starting", "live", "held", "replacing", "voice_only", "ending"]

ADMIN_ENDED = "ended by the relay's operator"


@dataclass(eq=False)
class LiveConversation:
    """One conversation of this process, from its seat to its end."""

    scope: trio.CancelScope  # its shutdown scope: cancelling it ends the conversation (see `end`)
    address: str  # the client's address (the proxy's client with trusted proxies)
    subject: str | None  # its client token's `sub`, None without one
    browser: object  # what the conversation talks to (a `BrowserLink` with resuming on: it may be held)
    started: float = field(default_factory=time.time)  # wall clock
    record: ConversationRecord | None = None
    provider: str | None = None  # of the avatar session open now, else of the last one
    session_id: str | None = None
    sessions: int = 0  # avatar sessions created so far (replacements and rotations included)
    session_since: float | None = None  # monotonic: when the session open now was created
    avatar_seconds_closed: float = 0.0  # of this conversation's sessions that are over
    ending: str | None = None  # an end asked from outside (`admin`), not yet done
    gone: trio.Event = field(default_factory=trio.Event)  # set once it has ended (its avatar stopped)

    def avatar_seconds(self, now: float) -> float:
        """Seconds of avatar session so far (what the providers bill), at monotonic time `now`."""
        running = 0.0 if self.session_since is None else max(0.0, now - self.session_since)
        return self.avatar_seconds_closed + running

    @property
    def state(self) -> State:
        """`starting` (before `ready`), `live`, `held` (its browser dropped; waiting for a resume), `replacing` (its
        avatar session died or is rotated; another is being opened), `voice_only` (no avatar), `ending`."""
        if self.ending is not None:
            return "ending"
        if isinstance(self.browser, BrowserLink) and self.browser.held:
            return "held"
        record = self.record
        if record is None or record.ready_at is None:
            return "starting"
        if self.session_since is None:
            return "replacing" if self.sessions and not record.degraded else "voice_only"
        return "live"

    def summary(self, now: float, wall: float) -> dict[str, Any]:
        """What the admin endpoint shows of it: never a key, a token or what was said."""
        record = self.record
        return {
            "id": None if record is None else record.relay_id,
            "conversation_id": None if record is None else record.conversation_id,
            "started": round(self.started, 3),
            "seconds": round(max(0.0, wall - self.started), 1),
            "subject": self.subject,
            "client": self.address,
            "provider": self.provider,
            "avatar_session_id": self.session_id if self.session_since is not None else None,
            "state": self.state,
            "avatar_seconds": round(self.avatar_seconds(now), 1),
            "avatar_sessions": self.sessions,
        }

    def names(self, wanted: str) -> bool:
        """Whether `wanted` is this conversation's relay id or its `conversation_id` (the one `ready` gave)."""
        record = self.record
        return record is not None and wanted in (record.relay_id, record.conversation_id)


_entry: ContextVar[LiveConversation | None] = ContextVar("live_conversation", default=None)


class Roster:
    """This process's live conversations (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._live: set[LiveConversation] = set()
        self._clock = clock  # monotonic seconds (the tests give their own)

    def __len__(self) -> int:
        return len(self._live)

    @contextmanager
    def seat(self, scope: trio.CancelScope, address: str, subject: str | None, browser: object
             ) -> Iterator[LiveConversation]:
        """Count the conversation run inside the block (whose shutdown scope is `scope`) until the block is left."""
        entry = LiveConversation(scope, address, subject or None, browser)
        self._live.add(entry)
        token = _entry.set(entry)
        try:
            yield entry
        finally:
            _entry.reset(token)
            self._live.discard(entry)
            entry.gone.set()

    def on_start(self, record: ConversationRecord) -> None:
        """The conversations' `on_start` hook: the record of the conversation seated in this task."""
        entry = _entry.get()
        if entry is not None:
            entry.record = record

    def session_hooks(self, provider: str) -> SessionHooks:
        """The avatar sessions' hooks (`relay.avatars.hooks.MakeHooks`): which session is open, and for how long."""
        entry = _entry.get()
        if entry is None:
            return SessionHooks()
        opened_at: float | None = None

        async def created(session_id: str) -> None:
            nonlocal opened_at
            opened_at = self._clock()
            entry.provider, entry.session_id, entry.session_since = provider, session_id, opened_at
            entry.sessions += 1

        async def closed(outcome: SessionOutcome) -> None:
            if opened_at is None:
                return
            entry.avatar_seconds_closed += max(0.0, self._clock() - opened_at)
            if entry.session_since == opened_at:
                entry.session_since = None

        return SessionHooks(on_created=created, on_closed=closed)

    def summaries(self) -> list[dict[str, Any]]:
        """Every live conversation, oldest first."""
        now, wall = self._clock(), time.time()
        return [entry.summary(now, wall) for entry in sorted(self._live, key=lambda e: e.started)]

    def signature(self) -> frozenset[tuple[object, ...]]:
        """What changes the listing other than the clock (ids, states, sessions): cheaper than `summaries`."""
        return frozenset((id(entry), entry.record is not None and entry.record.conversation_id, entry.state,
                          entry.session_since) for entry in self._live)

    def sessions(self) -> set[tuple[str, str]]:
        """(provider, session id) of every avatar session this process's conversations hold open now."""
        return {(entry.provider, entry.session_id) for entry in self._live
                if entry.session_since is not None and entry.provider and entry.session_id}

    def end(self, wanted: str) -> LiveConversation | None:
        """End the conversation named `wanted` (its id or conversation_id) with reason `admin`: its browser is told
        in `ended`, its avatar stopped (asked again while it ends: the same again); its `gone` is set once it has
        ended. None when no live conversation of this process has that name."""
        for entry in self._live:
            if entry.names(wanted):
                if entry.ending is None:
                    entry.ending = "admin"
                    cut_short(entry.scope, ConversationOver("admin", message=ADMIN_ENDED))
                return entry
        return None
