"""Who may open a conversation: client tokens (HMAC-SHA256 with an expiry), the WebSocket `Origin` allow-list and
the client address behind a trusted proxy. Plain functions, no I/O, no trio.

Token format (docs/reliability.md, "Client authentication"), all ASCII:

    v1.<expires>.<subject>.<signature>

`expires` is a Unix time in whole seconds; `subject` is 0-64 characters of `[A-Za-z0-9_-]` (a user id, for logs;
may be empty); `signature` is the unpadded base64url of HMAC-SHA256(secret, "v1.<expires>.<subject>"), the secret
being `RELAY_AUTH_SECRET` as UTF-8 bytes. A website backend mints one per page view with a few minutes of life.

This module must never log or return the secret, nor put a token in an error message (a token is a credential
until it expires).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from relay.config import Settings
from relay.server.limits import StartRateLimiter

VERSION = "v1"
MAX_TOKEN_CHARS = 256
_SUBJECT = re.compile(r"[A-Za-z0-9_-]{0,64}")


class TokenError(Exception):
    """The token is missing, malformed, badly signed or expired. The message is safe to show the client."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    subject: str
    expires: int


def _signature(secret: str, payload: str) -> str:
    digest = hmac.new(secret.encode(), payload.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def mint_token(secret: str, *, ttl: float = 300.0, subject: str = "", now: float | None = None) -> str:
    """A token valid for `ttl` seconds from `now` (default: the current time) for `subject`."""
    if not secret:
        raise ValueError("the token secret is empty")
    if not _SUBJECT.fullmatch(subject):
        raise ValueError("subject must be at most 64 characters of A-Z a-z 0-9 _ -")
    expires = int((time.time() if now is None else now) + ttl)
    payload = f"{VERSION}.{expires}.{subject}"
    return f"{payload}.{_signature(secret, payload)}"


def verify_token(secret: str, token: str | None, *, now: float | None = None) -> TokenClaims:
    """Check a token's signature (in constant time) and expiry. Raises TokenError saying why it is refused."""
    if not token:
        raise TokenError("a client token is required")
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise TokenError("the client token is malformed")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != VERSION or not parts[1].isdigit() or not _SUBJECT.fullmatch(parts[2]):
        raise TokenError("the client token is malformed")
    payload = ".".join(parts[:3])
    if not hmac.compare_digest(_signature(secret, payload), parts[3]):
        raise TokenError("the client token is not valid")
    expires = int(parts[1])
    if expires <= (time.time() if now is None else now):
        raise TokenError("the client token has expired")
    return TokenClaims(subject=parts[2], expires=expires)


def auth_required(settings: Settings) -> bool:
    """Tokens are required with RELAY_AUTH=token, and with the default `auto` whenever real keys are configured."""
    if settings.relay_auth == "auto":
        return not settings.demo_mode
    return settings.relay_auth == "token"


def auth_problem(settings: Settings) -> str | None:
    """Why the authentication settings cannot work (a sentence naming the variables), or None."""
    if auth_required(settings) and settings.relay_auth_secret is None:
        return ("RELAY_AUTH_SECRET is required when real API keys are configured, so that only your website can "
                "start conversations on your accounts (or set RELAY_AUTH=off to let anyone use them)")
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Origin allow-list (cross-site WebSocket hijacking)


def allowed_origins(settings: Settings) -> frozenset[str]:
    """RELAY_ALLOWED_ORIGINS as normalised origins ("scheme://host[:port]", lower case)."""
    return frozenset(_normalise_origin(o) for o in settings.relay_allowed_origins.split(",") if o.strip())


def _normalise_origin(origin: str) -> str:
    origin = origin.strip().lower().rstrip("/")
    return origin


def origin_allowed(origin: str | None, host: str | None, allowed: frozenset[str]) -> bool:
    """May a WebSocket with this `Origin` header (sent by browsers) open on a relay reached as `host`?

    No Origin: not a browser, so not a hijacking risk (tokens still apply). The relay's own page (Origin host equal
    to the Host header) is always allowed; otherwise the origin must be listed, or the list must hold "*".
    """
    if origin is None:
        return True
    normalised = _normalise_origin(origin)
    if "*" in allowed or normalised in allowed:
        return True
    if normalised == "null" or host is None:
        return False
    parts = urlsplit(normalised)
    return parts.scheme in ("http", "https") and parts.netloc == host.strip().lower()


# ----------------------------------------------------------------------------------------------------------------------
# Client address


def client_address(remote_addr: str | None, forwarded_for: str | None, *, trust_forwarded_for: bool) -> str:
    """The address a conversation is counted against. Behind a trusted proxy (RELAY_TRUST_FORWARDED_FOR), the
    last address of X-Forwarded-For (the one that proxy saw and appended); the earlier ones are the client's to
    forge, so they are ignored. Otherwise the socket's peer address."""
    if trust_forwarded_for and forwarded_for:
        last = forwarded_for.split(",")[-1].strip()
        if last:
            return last[:64]
    return remote_addr or "unknown"


# ----------------------------------------------------------------------------------------------------------------------
# The checks at the WebSocket handshake, together


@dataclass(frozen=True, slots=True)
class HandshakeDecision:
    """`refuse_status`: answer the upgrade with this HTTP status instead of accepting (403 bad origin, 401 bad
    token). `over_rate`: accept, then end with `capacity` (the browser can read why). `authorize`: check the
    `start` message's token (None when the handshake already proved the client, or auth is off)."""

    client: str
    refuse_status: int | None = None
    over_rate: bool = False
    authorize: Callable[[str | None], str | None] | None = None


class Gate:
    """Origin, token and start-rate checks for `/ws`, from the settings. One per app."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.relay_auth_secret
        self.secret = secret.get_secret_value() if secret is not None and auth_required(settings) else None
        self.origins = allowed_origins(settings)
        self.trust_forwarded_for = settings.relay_trust_forwarded_for
        self.starts = StartRateLimiter(settings.relay_max_starts_per_minute)

    def authorize_start(self, token: str | None) -> str | None:
        """The `start` message's token: None if valid, else why not (safe to send to the client)."""
        assert self.secret is not None
        try:
            verify_token(self.secret, token)
        except TokenError as exc:
            return str(exc)
        return None

    def check_handshake(self, *, origin: str | None, host: str | None, remote_addr: str | None,
                        forwarded_for: str | None, query_token: str | None, now: float) -> HandshakeDecision:
        """Decide on one WebSocket upgrade before it is accepted (nothing upstream has been called)."""
        client = client_address(remote_addr, forwarded_for, trust_forwarded_for=self.trust_forwarded_for)
        if not origin_allowed(origin, host, self.origins):
            return HandshakeDecision(client, refuse_status=403)
        if not self.starts.allow(client, now):  # before the token: guessing tokens costs starts too
            return HandshakeDecision(client, over_rate=True)
        authorize = None
        if self.secret is not None:
            if query_token is not None:
                if self.authorize_start(query_token) is not None:
                    return HandshakeDecision(client, refuse_status=401)
            else:
                authorize = self.authorize_start
        return HandshakeDecision(client, authorize=authorize)
