"""The conversations of this process that a new connection may take over (RELAY_RESUME_WINDOW): `HeldTable`, keyed
by the hold key each resume token names (relay.protocol.resume), with the relay's secret and route.

Single use: a conversation answers to the last token it issued only; a claimed token is forgotten at once. A
conversation that ended leaves a tombstone for a while (bounded), so a late resume hears `ended` or `expired`
rather than `unknown`. Plain bookkeeping, no I/O: the clock is passed in.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from relay.conversation.link import BrowserLink
from relay.protocol.resume import ResumeFailure, ResumeRefused, issue_token, new_key, read_token, token_route

TOMBSTONES = 10_000  # ended holds remembered (a key and a word each)


@dataclass
class Hold:
    """One resumable conversation: its link (with the subject it was started for: a client token's identity, None
    without one) and the key its current token names."""

    link: BrowserLink
    key: str = ""


class HeldTable:
    """This process's resumable conversations. `route` is what a proxy routes on (the relay's id, and the
    worker's index under `serve --workers N`); `secret` signs the tokens (random per process unless given)."""

    def __init__(self, route: str, window: float, lifetime: float, secret: bytes | None = None) -> None:
        self.route, self.window, self.lifetime = route, window, lifetime
        self._secret = secret or secrets.token_bytes(32)
        self._holds: dict[str, Hold] = {}
        self._tombstones: OrderedDict[str, ResumeFailure] = OrderedDict()
        self.siblings: dict[str, int] = {}  # under `serve --workers N`: the other workers' routes -> their index

    def sibling_holding(self, token: str) -> int | None:
        """The index of the other worker of this relay whose route `token` names (it holds the conversation), or
        None (this worker's token, another relay's, or no token at all)."""
        route = token_route(token)
        return None if route is None else self.siblings.get(route)

    @property
    def held_count(self) -> int:
        """Conversations without a connection now (what /metrics shows as held)."""
        return sum(1 for hold in self._holds.values() if hold.link.held)

    def issue(self, hold: Hold) -> str:
        """A new token for `hold`; the one before it stops working."""
        self._holds.pop(hold.key, None)
        hold.key = new_key()
        self._holds[hold.key] = hold
        return issue_token(self._secret, self.route, hold.key, int(time.time() + self.lifetime))

    def claim(self, token: str, subject: str | None) -> Hold:
        """The hold `token` names, for a connection whose client token names `subject` (None: none given). The
        token is used up. Raises ResumeRefused (expired, unknown, unauthorized, ended, elsewhere)."""
        key = read_token(self._secret, self.route, token, time.time())
        hold = self._holds.get(key)
        if hold is None:
            reason = self._tombstones.get(key)
            if reason is None:
                raise ResumeRefused("unknown", "this resume token is not valid (unknown or already used)")
            raise ResumeRefused(reason, "this conversation has ended" if reason == "ended"
                                else "the window to resume this conversation has passed")
        if subject is not None and hold.link.subject is not None and subject != hold.link.subject:
            raise ResumeRefused("unauthorized", "this resume token is not valid for this client token")
        del self._holds[key]
        return hold

    def end(self, hold: Hold, *, expired: bool) -> None:
        """`hold`'s conversation ended (`expired`: its window passed with nobody back)."""
        if self._holds.get(hold.key) is hold:
            del self._holds[hold.key]
        self._tombstones[hold.key] = "expired" if expired else "ended"
        while len(self._tombstones) > TOMBSTONES:
            self._tombstones.popitem(last=False)
