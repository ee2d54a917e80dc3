"""The open conversations of this process: admission (global and per-client caps), readiness, and the drain on
shutdown. Each admitted conversation gets a cancel scope the registry can cancel; the conversation turns that
cancellation into a `shutdown` ending for its browser. Under `serve --workers N` a `SharedCap` (relay.server.seats) also
holds the whole relay's count, so the global cap is machine-wide. Plain bookkeeping; no I/O of its own."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

import trio


class AdmissionRefused(Exception):
    """No room for another conversation; the message is safe to show the client. `code`: the browser's `error`
    code, `capacity` (a cap) or `shutdown` (the relay is shutting down)."""

    def __init__(self, message: str, code: Literal["capacity", "shutdown"] = "capacity") -> None:
        super().__init__(message)
        self.code: Literal["capacity", "shutdown"] = code


def _over_cap(client: str) -> str:
    """Why a client over its cap is refused: a client is a token's `sub` ("sub:…") or an address."""
    who = "for this user" if client.startswith("sub:") else "from your address"
    return f"too many conversations {who}; try again later"


class SharedCap(Protocol):
    """Seats shared with the other worker processes (`relay.server.seats.Seats`)."""

    def take(self) -> bool: ...
    def give_back(self) -> None: ...
    def taken(self) -> int: ...


@dataclass
class Registry:
    max_conversations: int
    max_per_client: int
    shutting_down: bool = False
    shared: SharedCap | None = None
    _scopes: set[trio.CancelScope] = field(default_factory=set)
    _per_client: Counter[str] = field(default_factory=Counter)
    _client_of: dict[trio.CancelScope, str] = field(default_factory=dict)
    _idle: trio.Event = field(default_factory=trio.Event)

    @property
    def open_count(self) -> int:
        return len(self._scopes)

    @property
    def under_capacity(self) -> bool:
        """Below the global cap (the whole relay's, with several workers)."""
        if self.shared is not None:
            return self.shared.taken() < self.max_conversations
        return self.open_count < self.max_conversations

    @property
    def ready(self) -> bool:
        """True while new conversations are welcome: not shutting down and below the global cap."""
        return not self.shutting_down and self.under_capacity

    @contextmanager
    def admit(self, client: str) -> Iterator[trio.CancelScope]:
        """Reserve a slot for one conversation from `client` (its address); yields the scope a shutdown cancels.
        Raises AdmissionRefused when shutting down or over a cap."""
        if self.shutting_down:
            raise AdmissionRefused("the relay is shutting down; try again shortly", "shutdown")
        if self.open_count >= self.max_conversations:
            raise AdmissionRefused("the relay is at its maximum number of conversations; try again later")
        if self._per_client[client] >= self.max_per_client:
            raise AdmissionRefused(_over_cap(client))
        if self.shared is not None and not self.shared.take():
            raise AdmissionRefused("the relay is at its maximum number of conversations; try again later")
        scope = trio.CancelScope()
        self._scopes.add(scope)
        self._per_client[client] += 1
        self._client_of[scope] = client
        try:
            yield scope
        finally:
            if self.shared is not None:
                self.shared.give_back()
            self._scopes.discard(scope)
            client = self._client_of.pop(scope)
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]
            if not self._scopes:
                self._idle.set()
                self._idle = trio.Event()

    def reassign(self, scope: trio.CancelScope, client: str) -> None:
        """Count the conversation admitted with `scope` against `client` from now on (its token's `sub`, known only
        once its `start` arrived). Raises AdmissionRefused when that client is at its cap."""
        before = self._client_of[scope]
        if before == client:
            return
        if self._per_client[client] >= self.max_per_client:
            raise AdmissionRefused(_over_cap(client))
        self._per_client[client] += 1
        self._client_of[scope] = client
        self._per_client[before] -= 1
        if self._per_client[before] <= 0:
            del self._per_client[before]

    async def drain(self, grace: float) -> int:
        """Stop admitting, end every open conversation (each tells its browser `shutdown` and stops its avatar
        session) and wait up to `grace` seconds for them to finish. Returns how many were still open then."""
        self.shutting_down = True
        for scope in list(self._scopes):
            scope.cancel()
        with trio.move_on_after(grace):
            while self._scopes:
                await self._idle.wait()
        return self.open_count
