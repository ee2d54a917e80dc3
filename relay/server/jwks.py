"""The identity provider's signing keys (RELAY_AUTH_JWKS_URL), fetched on the app's shared HTTP client and cached
by `kid`. Thin I/O around `relay.server.auth.jwks_keys`.

A token whose `kid` is unknown refreshes the set, but at most one fetch is in flight (the others wait for it, each
at most `fetch_timeout`) and at most one starts per `min_interval` (RELAY_AUTH_JWKS_MIN_INTERVAL): a flood of forged
`kid`s makes one JWKS request per interval, and a token with a known `kid` never waits at all. Each fetch replaces
the set, so a key the provider withdraws stops verifying (providers publish the old key beside the new while they
rotate). A failed fetch keeps the keys already known. Until the first fetch has succeeded the relay is not ready:
`fetch_at_startup` tries at start-up (one WARNING naming the URL and the error) and retries until it can, and
`/readyz` says why (`not_ready_because`).
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
                 max_age: float = 3600.0, fetch_timeout: float = 5.0, url: str = "") -> None:
        self._fetch = fetch
        self.url = url  # RELAY_AUTH_JWKS_URL, for the lines an operator reads (not a secret)
        self.ever_fetched = False  # the relay is not ready until the keys have been fetched once
        self.last_error: str | None = None  # why the last fetch failed, while no fetch has succeeded
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

    async def _refresh(self, *, quiet: bool = False) -> str | None:
        """Fetch the set once; None, or why it failed (logged unless `quiet`). Keeps the known keys on failure."""
        self._attempted_at = trio.current_time()
        self.fetches += 1
        try:
            with trio.fail_after(self.fetch_timeout):
                keys = jwks_keys(await self._fetch())
        except Exception as exc:
            why = _why(exc, self.fetch_timeout)
            if not self.ever_fetched:
                self.last_error = why
            if not quiet:
                log.warning("JWKS fetch from %s failed (%s); keeping the %d keys known", self.url or "the JWKS URL",
                            why, len(self._keys))
            return why
        self._keys = keys
        self._fetched_at = trio.current_time()
        self.ever_fetched, self.last_error = True, None
        log.info("JWKS fetched: %d signing keys", len(keys))
        return None

    @property
    def not_ready_because(self) -> str | None:
        """Why the relay is not ready for want of these keys (never fetched yet), or None."""
        if self.ever_fetched:
            return None
        return (f"RELAY_AUTH_JWKS_URL {self.url} could not be fetched: {self.last_error or 'not fetched yet'}; "
                "tokens signed by the identity provider are refused until it can be")

    async def fetch_at_startup(self, retry_after: float = 1.0) -> None:
        """Fetch the set as the relay starts, so `/readyz` can tell a JWKS that cannot be fetched (one WARNING line
        naming the URL and the error, the first time), and retry — 1, 2, 4 … s apart, at most `min_interval` —
        until one fetch has succeeded. Runs in the app's nursery; cancelled with it."""
        warned = False
        delay = retry_after
        while not self.ever_fetched:
            async with self._lock:
                why = None if self.ever_fetched else await self._refresh(quiet=True)
            if why is None:
                return
            if not warned:
                warned = True
                log.warning("RELAY_AUTH_JWKS_URL %s cannot be fetched at start-up (%s): client tokens signed by the "
                            "identity provider are refused and /readyz answers 503 until it can; retrying", self.url,
                            why)
            await trio.sleep(delay)
            delay = min(delay * 2, max(self.min_interval, retry_after))


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def http_fetcher(http: httpx2.AsyncClient, url: str) -> Callable[[], Awaitable[bytes]]:
    """GET the JWKS document with the app's shared client (no redirects, at most MAX_JWKS_BYTES)."""

    async def fetch() -> bytes:
        response = await http.get(url, headers={"accept": "application/json"}, follow_redirects=False)
        response.raise_for_status()
        if len(response.content) > MAX_JWKS_BYTES:
            raise ValueError("the JWKS document is too large")
        return response.content

    return fetch
