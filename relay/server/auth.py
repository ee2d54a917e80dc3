"""Who may open a conversation: client tokens, the WebSocket `Origin` allow-list and the client address behind a
trusted proxy. Plain functions, no I/O, no trio (the JWKS fetching is `relay.server.jwks`, handed to `Gate`).

Client tokens are JWTs (docs/reliability.md, "Client authentication"), verified with PyJWT: HS256 with
`RELAY_AUTH_SECRET`; RS256, ES256 (P-256) or EdDSA (Ed25519) with the keys of `RELAY_AUTH_JWKS_URL` or the PEM of
`RELAY_AUTH_PUBLIC_KEY`. The algorithm is pinned by the key's type, never taken from the token alone: HS256 only ever
checks against the secret, a public key only with its own algorithm, `none` never. `exp` is required, `nbf` and `iat`
honoured with RELAY_AUTH_LEEWAY, `iss`/`aud` checked when RELAY_AUTH_ISSUER/RELAY_AUTH_AUDIENCE are set; `sub` is the
client's identity; `relay_max_duration` and `relay_overrides` say what the token may do (`check_claims`).

The earlier format (deprecated, accepted while RELAY_AUTH_V1 is true), all ASCII:

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
import json
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from relay.config import Settings
from relay.server.handshake import allowed_origins, client_address, is_trusted, origin_allowed, trusted_proxies
from relay.server.limits import StartRateLimiter
from relay.server.token_uses import use_key

VERSION = "v1"
MAX_V1_TOKEN_CHARS = 256
MAX_TOKEN_CHARS = 4096  # a JWT from an identity provider is typically 0.8-2 kB; longer ones are refused undecoded
_SUBJECT = re.compile(r"[A-Za-z0-9_-]{0,64}")
_JWT_SUBJECT = re.compile(r"[A-Za-z0-9_.@|:+=-]{1,128}")  # auth0|64f1..., a UUID, a Firebase uid, an e-mail
PUBLIC_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
MAX_JWKS_KEYS = 32


class TokenError(Exception):
    """The token is missing, malformed, badly signed or expired. The message is safe to show the client."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """A verified token: `subject` its `sub` (may be empty; the agent's `user_id` when set), `expires` its `exp`;
    `max_duration` (seconds, from `relay_max_duration`) caps the conversation, `overrides` False
    (`relay_overrides: false`) forbids agent overrides in `start`; `dynamic_variables` are set by the token and win
    over the browser's."""

    subject: str
    expires: int
    max_duration: float | None = None
    overrides: bool = True
    use_key: str = ""  # what its uses are counted under (relay.server.token_uses.use_key)
    max_conversations: int | None = None  # `relay_max_conversations`: conversations it buys (default: the setting)
    dynamic_variables: Mapping[str, str | int | float | bool] | None = None  # `relay_dynamic_variables`


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
    if len(token) > MAX_V1_TOKEN_CHARS or not token.isascii():
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
    return TokenClaims(subject=parts[2], expires=expires, use_key=use_key(token, None, None))


# ----------------------------------------------------------------------------------------------------------------------
# JWTs


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A verification key and the one algorithm it may be used with."""

    key: Any
    algorithm: str


@dataclass(frozen=True, slots=True)
class KeySet:
    """What tokens are checked against, from the settings: the HS256 secret, a static public key, the claims
    policy. (The JWKS keys come from `relay.server.jwks`, per `kid`.)"""

    secret: str | None = None
    public_key: PublicKey | None = None
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 30.0
    accept_v1: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> KeySet:
        """Raises ValueError (a sentence naming the variable) when RELAY_AUTH_PUBLIC_KEY is not a usable key."""
        secret = settings.relay_auth_secret
        public = settings.relay_auth_public_key
        return cls(secret=secret.get_secret_value() if secret is not None else None,
                   public_key=load_public_key(public) if public else None,
                   issuer=settings.relay_auth_issuer or None,
                   audience=None if settings.relay_auth_audience in (None, "", "*") else settings.relay_auth_audience,
                   leeway=settings.relay_auth_leeway, accept_v1=settings.relay_auth_v1)


def _pinned_algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError("RSA keys shorter than 2048 bits are not accepted")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("only P-256 elliptic-curve keys (ES256) are accepted")
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError("only RSA (RS256), P-256 (ES256) and Ed25519 (EdDSA) public keys are accepted")


def load_public_key(pem: str) -> PublicKey:
    """RELAY_AUTH_PUBLIC_KEY (a PEM `PUBLIC KEY` block) with its pinned algorithm; ValueError if unusable."""
    try:
        key = serialization.load_pem_public_key(pem.strip().encode())
    except (ValueError, TypeError, UnicodeError):
        raise ValueError("RELAY_AUTH_PUBLIC_KEY is not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    try:
        return PublicKey(key, _pinned_algorithm(key))
    except ValueError as exc:
        raise ValueError(f"RELAY_AUTH_PUBLIC_KEY: {exc}") from None


def jwks_keys(document: bytes) -> dict[str, PublicKey]:
    """The signing keys of a JWKS document by `kid` (a key without one under ""). Keys for encryption
    (`use` other than `sig`), symmetric or unknown key types, curves other than P-256/Ed25519, and keys whose `alg`
    differs from the one their type pins are left out; at most MAX_JWKS_KEYS. ValueError if it is not a JWKS."""
    try:
        data = json.loads(document)
    except ValueError:
        raise ValueError("the JWKS document is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("the JWKS document has no `keys` list")
    keys: dict[str, PublicKey] = {}
    for entry in data["keys"][:MAX_JWKS_KEYS]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid", "")
        if not isinstance(kid, str) or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        try:
            key = jwt.PyJWK(entry).key
            if not hasattr(key, "public_bytes"):
                continue
            algorithm = _pinned_algorithm(key)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if entry.get("alg", algorithm) != algorithm:
            continue
        keys[kid] = PublicKey(key, algorithm)
    return keys


def token_header(token: str | None) -> dict[str, Any]:
    """The unverified JOSE header of a compact JWT (to choose the key). Raises TokenError if it is not one."""
    if not token:
        raise TokenError("a client token is required")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError("the client token is too long")
    if not token.isascii() or token.count(".") != 2:
        raise TokenError("the client token is malformed")
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise TokenError("the client token is malformed") from None
    if not isinstance(header.get("alg"), str) or not isinstance(header.get("kid", ""), str):
        raise TokenError("the client token is malformed")
    return header


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_claims(claims: Mapping[str, Any], keys: KeySet, now: float, token: str = "") -> TokenClaims:
    """The registered and relay claims of a token (`token`, whose signature is verified; pure, `now` a Unix
    time)."""
    exp = claims.get("exp")
    if not _number(exp):
        raise TokenError("the client token has no expiry (exp)")
    if now >= exp + keys.leeway:
        raise TokenError("the client token has expired")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if not _number(value):
            raise TokenError(f"the client token's {name} claim is not a time")
        if value > now + keys.leeway:
            raise TokenError("the client token is not valid yet")
    if keys.issuer is not None and claims.get("iss") != keys.issuer:
        raise TokenError("the client token's issuer is not accepted")
    if keys.audience is not None:
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
        if keys.audience not in audiences:
            raise TokenError("the client token's audience is not accepted")
    subject = claims.get("sub")
    if subject is None:
        subject = ""
    elif not isinstance(subject, str) or not _JWT_SUBJECT.fullmatch(subject):
        raise TokenError("the client token's sub claim is not usable (1-128 of A-Z a-z 0-9 _ . @ | : + = -)")
    max_duration = claims.get("relay_max_duration")
    if max_duration is not None and (not _number(max_duration) or max_duration <= 0):
        raise TokenError("the client token's relay_max_duration claim is not a positive number of seconds")
    overrides = claims.get("relay_overrides", True)
    if not isinstance(overrides, bool):
        raise TokenError("the client token's relay_overrides claim is not true or false")
    conversations = claims.get("relay_max_conversations")
    if conversations is not None and (not isinstance(conversations, int) or isinstance(conversations, bool)
                                      or not 0 < conversations <= 1000):
        raise TokenError("the client token's relay_max_conversations claim is not a whole number from 1 to 1000")
    variables = claims.get("relay_dynamic_variables")
    if variables is not None and not _dynamic_variables(variables):
        raise TokenError("the client token's relay_dynamic_variables claim is not an object of names to strings, "
                         "numbers or booleans")
    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or not 0 < len(jti) <= 256):
        raise TokenError("the client token's jti claim is not a string of 1-256 characters")
    issuer = claims.get("iss")
    return TokenClaims(subject=subject, expires=int(exp), max_duration=None if max_duration is None else
                       float(max_duration), overrides=overrides,
                       use_key=use_key(token, jti, issuer if isinstance(issuer, str) else None),
                       max_conversations=conversations, dynamic_variables=variables)


def _dynamic_variables(value: object) -> TypeGuard[Mapping[str, str | int | float | bool]]:
    return isinstance(value, dict) and len(value) <= 128 and all(
        isinstance(name, str) and 0 < len(name) <= 128 and isinstance(item, str | int | float | bool)
        for name, item in value.items())


_DECODE_OPTIONS: Any = {"verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                        "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False,
                        "require": []}


def verify_jwt(token: str | None, keys: KeySet, *, now: float | None = None,
               public: PublicKey | None = None) -> TokenClaims:
    """Verify a JWT: its signature with the key its algorithm is pinned to (HS256: the secret; RS256/ES256/EdDSA:
    `public`, a JWKS key found by `kid`, else the static public key), then its claims. Raises TokenError."""
    header = token_header(token)
    assert token is not None
    algorithm = header["alg"]
    key: Any
    if algorithm == "HS256" and keys.secret is not None:
        key = keys.secret
    elif algorithm in PUBLIC_ALGORITHMS:
        candidate = public or keys.public_key
        if candidate is None:
            raise TokenError("the client token's signing key is not known")
        if candidate.algorithm != algorithm:
            raise TokenError("the client token's algorithm is not accepted for its key")
        key = candidate.key
    else:
        raise TokenError("the client token's algorithm is not accepted")
    try:
        claims = jwt.decode(token, key, algorithms=[algorithm], options=_DECODE_OPTIONS)
    except jwt.InvalidSignatureError:
        raise TokenError("the client token is not valid") from None
    except (jwt.PyJWTError, ValueError, TypeError):
        raise TokenError("the client token is malformed") from None
    if not isinstance(claims, dict):
        raise TokenError("the client token is malformed")
    return check_claims(claims, keys, time.time() if now is None else now, token)


def mint_jwt(secret: str, *, ttl: float = 300.0, subject: str = "", now: float | None = None,
             **claims: Any) -> str:
    """An HS256 JWT valid for `ttl` seconds from `now` for `subject` (`avatar-relay token`), with a fresh `jti`
    (its uses are counted by it)."""
    if not secret:
        raise ValueError("the token secret is empty")
    if subject and not _JWT_SUBJECT.fullmatch(subject):
        raise ValueError("subject must be 1-128 characters of A-Z a-z 0-9 _ . @ | : + = -")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"iat": issued, "exp": issued + int(ttl), "jti": secrets.token_urlsafe(16), **claims}
    if subject:
        payload["sub"] = subject
    return jwt.encode(payload, secret, algorithm="HS256")


class KeySource(Protocol):
    """The JWKS keys by `kid` (`relay.server.jwks.JwksCache`): None when the provider does not know it (or the
    refresh it would take is rate-limited)."""

    def key_for(self, kid: str) -> Awaitable[PublicKey | None]: ...


def auth_required(settings: Settings) -> bool:
    """Tokens are required with RELAY_AUTH=token, and with the default `auto` whenever real keys are configured."""
    if settings.relay_auth == "auto":
        return not settings.demo_mode
    return settings.relay_auth == "token"


def auth_problem(settings: Settings) -> str | None:
    """Why the authentication settings cannot work (a sentence naming the variables), or None."""
    if settings.relay_auth_public_key:
        try:
            load_public_key(settings.relay_auth_public_key)
        except ValueError as exc:
            return str(exc)
    if (settings.relay_auth_jwks_url or settings.relay_auth_public_key) and not settings.relay_auth_audience:
        return ("RELAY_AUTH_AUDIENCE is required with RELAY_AUTH_JWKS_URL or RELAY_AUTH_PUBLIC_KEY: without it any "
                "token your identity provider signs for any application would open conversations (set it to the "
                "`aud` your tokens for this relay carry, or to * for a key pair used by nothing else)")
    if url := settings.relay_auth_jwks_url:
        parts = urlsplit(url)
        if not (parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1",
                                                                                              "localhost"))):
            return "RELAY_AUTH_JWKS_URL must be an https:// URL (http:// only on a loopback address)"
    if auth_required(settings) and settings.relay_auth_secret is None and not settings.relay_auth_jwks_url \
            and not settings.relay_auth_public_key:
        return ("RELAY_AUTH_SECRET (or RELAY_AUTH_JWKS_URL / RELAY_AUTH_PUBLIC_KEY) is required when real API keys "
                "are configured, so that only your website can start conversations on your accounts (or set "
                "RELAY_AUTH=off to let anyone use them)")
    return None


# ----------------------------------------------------------------------------------------------------------------------
# The checks at the WebSocket handshake, together


def identity(claims: TokenClaims, address: str) -> str:
    """Who a conversation is counted against and logged as: the token's `sub` when it has one, else the address."""
    return f"sub:{claims.subject}" if claims.subject else address


@dataclass(frozen=True, slots=True)
class HandshakeDecision:
    """`refuse_status`: answer the upgrade with this HTTP status instead of accepting (403 bad origin, 401 bad
    token). `over_rate`: accept, then end with `capacity` (the browser can read why). `claims`: the verified token
    of `/ws?token=` (`client` is then its `sub`). `check_start`: the `start` message's token must be verified
    (auth is on and the handshake carried none)."""

    client: str
    refuse_status: int | None = None
    over_rate: bool = False
    claims: TokenClaims | None = None
    check_start: bool = False


class Gate:
    """Origin, token and start-rate checks for `/ws`, from the settings. One per app; `jwks` (set once the app's
    HTTP client exists) gives the identity provider's keys."""

    def __init__(self, settings: Settings, jwks: KeySource | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.required = auth_required(settings)
        self.keys = KeySet.from_settings(settings)
        self.jwks = jwks
        self.clock = clock
        self.origins = allowed_origins(settings)
        self.proxies = trusted_proxies(settings)
        self.ipv6_prefix = settings.relay_client_ipv6_prefix
        self.starts = StartRateLimiter(settings.relay_max_starts_per_minute)
        # Takes one conversation start for a client address; the app points it at its seat keeper (the fleet's
        # shared rate with Redis).
        self.allow_start: Callable[[str, float], Awaitable[bool]] = self._allow_start_here

    async def _allow_start_here(self, client: str, now: float) -> bool:
        return self.starts.allow(client, now)

    async def verify(self, token: str | None) -> TokenClaims:
        """A client token (a JWT, or the deprecated v1 format): its claims, or TokenError saying why not (safe to
        send to the client: it never contains the token)."""
        if token and token.startswith(VERSION + "."):
            if not self.keys.accept_v1 or self.keys.secret is None:
                raise TokenError("the client token is not valid")
            return verify_token(self.keys.secret, token, now=self.clock())
        header = token_header(token)
        public = None
        if header["alg"] in PUBLIC_ALGORITHMS and self.jwks is not None:
            public = await self.jwks.key_for(header.get("kid", ""))
        return verify_jwt(token, self.keys, now=self.clock(), public=public)

    async def check_handshake(self, *, origin: str | None, host: str | None, remote_addr: str | None,
                              forwarded_for: str | None, query_token: str | None, now: float,
                              forwarded_proto: str | None = None) -> HandshakeDecision:
        """Decide on one WebSocket upgrade before it is accepted (nothing upstream has been called)."""
        client = client_address(remote_addr, forwarded_for, proxies=self.proxies, ipv6_prefix=self.ipv6_prefix)
        scheme = None
        if forwarded_proto and remote_addr and is_trusted(remote_addr, self.proxies):
            scheme = forwarded_proto.split(",")[-1].strip().lower()
        if not origin_allowed(origin, host, self.origins, scheme if scheme in ("http", "https") else None):
            return HandshakeDecision(client, refuse_status=403)
        if not await self.allow_start(client, now):  # before the token: guessing tokens costs starts too
            return HandshakeDecision(client, over_rate=True)
        if not self.required:
            return HandshakeDecision(client)
        if query_token is None:
            return HandshakeDecision(client, check_start=True)
        try:
            claims = await self.verify(query_token)
        except TokenError:
            return HandshakeDecision(client, refuse_status=401)
        return HandshakeDecision(identity(claims, client), claims=claims)
