"""Checks every HTTP request and WebSocket upgrade passes before the app sees it (L1, L2, I2 of the security review),
as an ASGI middleware: pure decisions (`refusal`) and a thin wrapper (`RequestGuard`).

- **The Host the relay answers to.** A page on a name rebound to the relay's address (DNS rebinding) sends that name
  as `Host`, and its `Origin` matches it: the same-origin check alone would let it in. So a request is served only
  when its `Host` is an IP address or `localhost` (a rebinding needs a name), one of RELAY_ALLOWED_HOSTS, or the
  host of an origin in RELAY_ALLOWED_ORIGINS; otherwise 421 Misdirected Request (a WebSocket is refused before it
  opens). This also keeps `Host` out of the absolute redirects the router builds.
- **One spelling per path.** A path with an empty segment (`//metrics`), a `.` or `..` segment, or a
  percent-encoded letter, digit or `-._~` (`/%6detrics`) is refused with 400 instead of being served under a name a
  proxy's path rule does not match.
- **Operators' endpoints.** With RELAY_METRICS_TOKEN set, `/metrics` and `/_demo/simulators` answer only requests
  carrying `Authorization: Bearer <it>` (401 otherwise).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from relay.config import Settings

Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Any, Receive, Send], Awaitable[None]]

OPERATOR_PATHS = frozenset({"/metrics", "/_demo/simulators"})
_UNRESERVED_ESCAPE = re.compile(rb"%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DdEe]|5[Ff]|7[Ee])")


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """What the guard allows, from the settings."""

    hosts: frozenset[str]  # lower-case host names (no port); "*" any
    metrics_token: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> GuardPolicy:
        hosts = {h.strip().lower() for h in settings.relay_allowed_hosts.split(",") if h.strip()}
        for origin in settings.relay_allowed_origins.split(","):
            origin = origin.strip().lower()
            if origin == "*":
                continue
            if origin and (name := urlsplit(origin).hostname):
                hosts.add(name)
        token = settings.relay_metrics_token
        return cls(frozenset(_host_name(h) for h in hosts),
                   token.get_secret_value() if token is not None else None)


def _host_name(host: str) -> str:
    """`host[:port]` or `[v6]:port` -> the name or address alone, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.split(":")[0]
    return host


def host_allowed(host: str | None, hosts: frozenset[str]) -> bool:
    """Whether a request whose Host header is `host` is for this relay."""
    if host is None or "*" in hosts:
        return True
    name = _host_name(host)
    if name == "localhost" or name in hosts:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def canonical_path(raw_path: bytes) -> bool:
    """Whether `raw_path` (as received, undecoded) is spelled the one way the relay serves it."""
    if b"//" in raw_path or _UNRESERVED_ESCAPE.search(raw_path):
        return False
    return not any(segment in (b".", b"..") for segment in raw_path.split(b"/"))


def refusal(path: str, raw_path: bytes, headers: Iterable[tuple[bytes, bytes]], policy: GuardPolicy
            ) -> tuple[int, str] | None:
    """(status, text) to answer instead of serving the request, or None to serve it."""
    host: str | None = None
    authorization = ""
    for name, value in headers:
        if name.lower() == b"host":
            host = value.decode("latin-1")
        elif name.lower() == b"authorization":
            authorization = value.decode("latin-1")
    if not host_allowed(host, policy.hosts):
        return 421, "this relay does not answer to that host name (RELAY_ALLOWED_HOSTS)"
    if not canonical_path(raw_path):
        return 400, "non-canonical path"
    if policy.metrics_token is not None and path in OPERATOR_PATHS:
        if not hmac.compare_digest(authorization.encode(), f"Bearer {policy.metrics_token}".encode()):
            return 401, "a bearer token is required (RELAY_METRICS_TOKEN)"
    return None


class RequestGuard:
    """Wraps an ASGI app; see the module docstring. No task, no await of its own but the refusal's sends."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            raw_path = scope.get("raw_path") or scope.get("path", "").encode()
            refused = refusal(scope.get("path", ""), raw_path, scope.get("headers", []), self.policy)
            if refused is not None:
                status, text = refused
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})  # before accepting: an HTTP 403
                    return
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]})
                await send({"type": "http.response.body", "body": text.encode()})
                return
        await self.app(scope, receive, send)
