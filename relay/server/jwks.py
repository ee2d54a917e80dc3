"""The identity provider's signing keys (RELAY_AUTH_JWKS_URL), fetched on the app's shared HTTP client and cached
by `kid`. Thin I/O around `relay.server.auth.jwks_keys`.

A token whose `kid` is unknown refreshes the set, but at most one fetch is in flight (the others wait for it, each
at most `fetch_timeout`) and at most one starts per `min_interval` (RELAY_AUTH_JWKS_MIN_INTERVAL): a flood of forged
`kid`s makes one JWKS request per interval, and a token with a known `kid` never waits at all. Each fetch replaces
the set, so a key the provider withdraws stops verifying (providers publish the old key beside the new while they
rotate). A failed fetch keeps the keys already known.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import httpx2
import trio

from relay.server.auth import PublicKey, jwks_keys

log = logging.getLogger("relay.server.jwks")

MAX_JWKS_BYTES = 256 * 1024


class JwksCache:
    def __init__(self, fetch: Callable[[], Awaitable[bytes]], *, min_interval: float = 30.0,
                 max_age: float = 3600.0, fetch_timeout: float = 5.0) -> None:
        self._fetch = fetch
        self.min_interval = min_interval
        self.max_age = max_age
        self.fetch_timeout = fetch_timeout
        self._keys: dict[str, PublicKey] = {}
        self._fetched_at = -math.inf  # last successful fetch (trio clock)
        self._attempted_at = -math.inf  # last fetch started
        self._lock = trio.Lock()
        self.fetches = 0

    def _fresh(self) -> bool:
        return trio.current_time() - self._fetched_at < self.max_age

    def _lookup(self, kid: str) -> PublicKey | None:
        found = self._keys.get(kid)
        if found is None and not kid and len(self._keys) == 1:
            found = next(iter(self._keys.values()))  # a token without `kid`, a set of one key
        return found

    async def key_for(self, kid: str) -> PublicKey | None:
        """The key for `kid`, refreshing the set (within the bounds above) when it is unknown or the set is stale."""
        if self._fresh() and (found := self._lookup(kid)) is not None:
            return found
        with trio.move_on_after(self.fetch_timeout):
            async with self._lock:  # one fetch in flight; the others wait for its result
                if self._fresh() and (found := self._lookup(kid)) is not None:
                    return found
                if trio.current_time() - self._attempted_at >= self.min_interval:
                    await self._refresh()
        return self._lookup(kid)

    async def _refresh(self) -> None:
        self._attempted_at = trio.current_time()
        self.fetches += 1
        try:
            with trio.fail_after(self.fetch_timeout):
                keys = jwks_keys(await self._fetch())
        except Exception as exc:
            log.warning("JWKS fetch failed (%s); keeping the %d keys known", type(exc).__name__, len(self._keys))
            return
        self._keys = keys
        self._fetched_at = trio.current_time()
        log.info("JWKS fetched: %d signing keys", len(keys))


def http_fetcher(http: httpx2.AsyncClient, url: str) -> Callable[[], Awaitable[bytes]]:
    """GET the JWKS document with the app's shared client (no redirects, at most MAX_JWKS_BYTES)."""

    async def fetch() -> bytes:
        response = await http.get(url, headers={"accept": "application/json"}, follow_redirects=False)
        response.raise_for_status()
        if len(response.content) > MAX_JWKS_BYTES:
            raise ValueError("the JWKS document is too large")
        return response.content

    return fetch
