"""Rate limits that protect the relay and its owner's accounts: conversation starts per client address. (Client
frames per second per conversation are the pump's `FloodGate`, relay.conversation.gates; the kernel-level send
timeout for browsers that stop reading is relay.server.serving.)

The limiters are plain objects that take the time as an argument (no trio, no clock of their own), so tests drive
them exactly. They must never block, and their memory must stay bounded whatever the clients do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
