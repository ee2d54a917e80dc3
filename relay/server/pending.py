"""Sockets that have not said who they are yet: the pre-start slots (H1 of the security review).

A WebSocket that has passed the handshake checks (Origin, start rate, a token in the handshake when it carries one)
but whose `start` has not arrived holds no conversation seat: it holds one pre-start slot. Slots are capped per
client (RELAY_MAX_PENDING_PER_CLIENT: over it the new socket is refused with `capacity`) and in all
(RELAY_MAX_PENDING: when every slot is taken, the socket that has waited longest is closed to make room, so idle
sockets can never lock a real user out — a browser sends `start` within milliseconds of opening, an attacker would
have to open sockets faster than that), and each one lives at most RELAY_START_TIMEOUT seconds. The slots are this
process's own (they cost memory here, not money upstream); nothing here does I/O or blocks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

from relay.server.admission import AdmissionRefused

PUSHED_OUT = "the relay is busy with new connections; send 'start' as soon as the socket opens, or try again"


@dataclass
class PendingPool:
    """The pre-start slots of this process: `hold` one per socket until its `start` is read."""

    max_pending: int
    max_per_client: int
    _waiting: dict[trio.CancelScope, str] = field(default_factory=dict)  # oldest first (insertion order)
    per_client: Counter[str] = field(default_factory=Counter)
    pushed_out: set[trio.CancelScope] = field(default_factory=set)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextmanager
    def hold(self, client: str) -> Iterator[trio.CancelScope]:
        """One pre-start slot for `client` while the block runs; yields the scope that is cancelled when the slot is
        taken back (to make room for a newer socket, or by `close_all`): `was_pushed_out(scope)` says which.
        Raises AdmissionRefused (`capacity`) when `client` already holds its share."""
        if self.per_client[client] >= self.max_per_client:
            raise AdmissionRefused("too many connections waiting to start from your address; send 'start' as soon "
                                   "as the socket opens", why="per_client")
        while len(self._waiting) >= self.max_pending:
            oldest = next(iter(self._waiting))
            self._release(oldest)
            self.pushed_out.add(oldest)
            oldest.cancel()
        scope = trio.CancelScope()
        self._waiting[scope] = client
        self.per_client[client] += 1
        try:
            yield scope
        finally:
            self._release(scope)
            self.pushed_out.discard(scope)

    def was_pushed_out(self, scope: trio.CancelScope) -> bool:
        return scope in self.pushed_out

    def _release(self, scope: trio.CancelScope) -> None:
        client = self._waiting.pop(scope, None)
        if client is None:
            return
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]

    def close_all(self) -> None:
        """Cancel every waiting socket's slot (the relay is shutting down)."""
        for scope in list(self._waiting):
            scope.cancel()
