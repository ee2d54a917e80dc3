"""Rate limits that protect the relay and its owner's accounts: conversation starts per client address, client
frames per second per conversation, and a kernel-level send timeout for browsers that stop reading.

The limiters are plain objects that take the time as an argument (no trio, no clock of their own), so tests drive
them exactly. They must never block, and their memory must stay bounded whatever the clients do.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from hypercorn.config import Config

MAX_TRACKED_CLIENTS = 100_000


@dataclass
class StartRateLimiter:
    """A token bucket per client address: `per_minute` conversation starts a minute, in bursts of up to
    `per_minute`. Addresses whose bucket is full again are forgotten, so memory follows the recent clients only."""

    per_minute: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # address -> (tokens, at)

    def allow(self, client: str, now: float) -> bool:
        """Take one start for `client` at time `now` (seconds); False when the client is over its rate."""
        capacity = float(self.per_minute)
        rate = capacity / 60.0
        tokens, at = self._buckets.get(client, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return False
        self._buckets[client] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_TRACKED_CLIENTS:
            self._forget_full(now)
        return True

    def _forget_full(self, now: float) -> None:
        capacity = float(self.per_minute)
        rate = capacity / 60.0
        for client, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * rate >= capacity:
                del self._buckets[client]
        while len(self._buckets) > MAX_TRACKED_CLIENTS:  # all busy: drop the oldest entries
            del self._buckets[next(iter(self._buckets))]

    @property
    def tracked(self) -> int:
        return len(self._buckets)


# ---------------------------------------------------------------------------------------------------------------
# The kernel-level send timeout.
#
# hypercorn's trio server writes to the socket inside a shielded cancel scope, so a browser that stops reading can
# block a send forever (a peer that keeps answering zero-window probes is never timed out by TCP). The conversation
# itself ends promptly (the Outbox's watchdog), but that one write would hold the connection's task and its socket
# until the process ends. TCP_USER_TIMEOUT makes Linux abort a connection whose sent data stays unacknowledged that
# long, zero-window probes included; accepted sockets inherit it from the listening socket.


class GuardedConfig(Config):
    """hypercorn Config whose listening TCP sockets carry TCP_USER_TIMEOUT = `send_timeout` (where supported)."""

    send_timeout: float = 10.0

    def create_sockets(self):  # type: ignore[no-untyped-def]
        sockets = super().create_sockets()
        for sock in (*sockets.insecure_sockets, *sockets.secure_sockets):
            set_send_timeout(sock, self.send_timeout)
        return sockets


def set_send_timeout(sock: socket.socket, seconds: float) -> bool:
    """Set TCP_USER_TIMEOUT on a TCP socket; False where the platform or the socket family has none."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(seconds * 1000)))
    except OSError:
        return False
    return True
