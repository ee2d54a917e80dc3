"""What one client token buys (M2 of the security review): at most one open conversation at a time, and at most
`allowed` conversations over its life (RELAY_TOKEN_MAX_CONVERSATIONS, 1 by default; a token's
`relay_max_conversations` claim says otherwise). A token is known by its `jti` (with its issuer) when it has one,
else by the SHA-256 of the whole token (`use_key`); its record lives until the token expires (plus the leeway).

Who keeps the records is chosen with the seats (`relay.server.fleet_admission.seat_keeper`): this process's
(`LocalTokenUses`), the machine's under `serve --workers N` (`SharedTokenUses`, a table in the shared seats file), or
the fleet's in Redis (`FleetSeats`). `token_use` is the one place a conversation spends a use — resuming a dropped
conversation must not (issue #29): exempt it there. Plain bookkeeping; nothing blocks but the keeper's own calls.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

import trio

from relay.server.admission import AdmissionRefused
from relay.server.seats import Seats

UseVerdict = Literal["ok", "busy", "used", "full"]
MAX_TRACKED_TOKENS = 100_000


def use_key(token: str, jti: str | None, issuer: str | None) -> str:
    """The key a token's uses are counted under: its issuer and `jti` when it has one, else the whole token."""
    material = f"jti\0{issuer or ''}\0{jti}" if jti else f"token\0{token}"
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def refusal(verdict: UseVerdict) -> AdmissionRefused:
    """What the browser is told when its token buys no conversation now."""
    if verdict == "busy":
        message = "this client token is already in use by another conversation; each conversation needs its own token"
    elif verdict == "used":
        message = "this client token has been used for its conversation already; get a new one from the website"
    else:
        return AdmissionRefused("the relay is tracking too many client tokens; try again later", why="token_used")
    return AdmissionRefused(message, "unauthorized", "token_used")


class TokenUses(Protocol):
    """Who keeps the tokens' records. `use` names one conversation (unique); `expires` is a Unix time."""

    async def begin_use(self, use: str, key: str, expires: float, allowed: int) -> UseVerdict: ...
    async def end_use(self, use: str) -> None: ...


@dataclass
class _Record:
    opened: int
    expires: float
    open_use: str = ""  # the conversation open on it now, if any


@dataclass
class LocalTokenUses:
    """This process's records, by key; forgotten once expired (memory follows the live tokens)."""

    clock: Callable[[], float] = time.time
    records: dict[str, _Record] = field(default_factory=dict)
    open_uses: dict[str, str] = field(default_factory=dict)  # use -> key

    async def begin_use(self, use: str, key: str, expires: float, allowed: int) -> UseVerdict:
        now = self.clock()
        record = self.records.get(key)
        if record is None or (record.expires < now and not record.open_use):
            if len(self.records) >= MAX_TRACKED_TOKENS:
                self._forget_expired(now)
                if len(self.records) >= MAX_TRACKED_TOKENS:
                    return "full"
            record = self.records[key] = _Record(0, expires)
        if record.open_use:
            return "busy"
        if record.opened >= allowed:
            return "used"
        record.opened += 1
        record.expires = max(record.expires, expires)
        record.open_use = use
        self.open_uses[use] = key
        return "ok"

    def _forget_expired(self, now: float) -> None:
        for key, record in list(self.records.items()):
            if record.expires < now and not record.open_use:
                del self.records[key]

    async def end_use(self, use: str) -> None:
        key = self.open_uses.pop(use, None)
        if key is not None and (record := self.records.get(key)) is not None and record.open_use == use:
            record.open_use = ""


@dataclass
class SharedTokenUses:
    """The machine's records under `serve --workers N`: the token table of the shared seats file (cleared of a dead
    worker's open conversations by the supervisor)."""

    seats: Seats
    clock: Callable[[], float] = time.time
    open_uses: dict[str, str] = field(default_factory=dict)  # use -> key

    async def begin_use(self, use: str, key: str, expires: float, allowed: int) -> UseVerdict:
        verdict = self.seats.begin_token_use(bytes.fromhex(key)[:16], int(expires) + 1, allowed, int(self.clock()))
        if verdict == "ok":
            self.open_uses[use] = key
        return verdict  # type: ignore[return-value]

    async def end_use(self, use: str) -> None:
        key = self.open_uses.pop(use, None)
        if key is not None:
            self.seats.end_token_use(bytes.fromhex(key)[:16])


_use_numbers = iter(range(1, 2**62))


@asynccontextmanager
async def token_use(uses: TokenUses, key: str | None, expires: float, allowed: int) -> AsyncIterator[None]:
    """Spend one of the token's conversations (`key` None: no token, nothing to spend) for the block's duration:
    raises AdmissionRefused (`unauthorized` when the token is in use or used up) before the block. The open
    conversation is released when the block is left, whatever ends it (shielded)."""
    if key is None:
        yield
        return
    use = f"u{next(_use_numbers)}"
    verdict = await uses.begin_use(use, key, expires, allowed)
    if verdict != "ok":
        raise refusal(verdict)
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await uses.end_use(use)
