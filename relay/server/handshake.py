"""The network questions of a WebSocket handshake, answered without I/O: is this `Origin` allowed (the allow-list
against cross-site WebSocket hijacking), which token and subprotocol did the client offer in `Sec-WebSocket-Protocol`,
and which client is it (the peer address, or behind a trusted proxy the right-most untrusted X-Forwarded-For hop; an
IPv6 address as its /64). `relay.server.auth` puts these together with the token checks (its `Gate`).

This module must never log or return a token: `protocol_token` hands it to the caller and nothing else keeps it.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from relay.config import Settings

# ----------------------------------------------------------------------------------------------------------------------
# Origin allow-list (cross-site WebSocket hijacking)


def allowed_origins(settings: Settings) -> frozenset[str]:
    """RELAY_ALLOWED_ORIGINS as normalised origins ("scheme://host[:port]", lower case)."""
    return frozenset(_normalise_origin(o) for o in settings.relay_allowed_origins.split(",") if o.strip())


def _normalise_origin(origin: str) -> str:
    origin = origin.strip().lower().rstrip("/")
    return origin


def origin_allowed(origin: str | None, host: str | None, allowed: frozenset[str], scheme: str | None = None) -> bool:
    """May a WebSocket with this `Origin` header (sent by browsers) open on a relay reached as `host`?

    No Origin: not a browser, so not a hijacking risk (tokens still apply). The relay's own page (Origin host equal
    to the Host header, and, when `scheme` is known — a trusted proxy's X-Forwarded-Proto — the same scheme) is
    always allowed; otherwise the origin must be listed, or the list must hold "*".
    """
    if origin is None:
        return True
    normalised = _normalise_origin(origin)
    if "*" in allowed or normalised in allowed:
        return True
    if normalised == "null" or host is None:
        return False
    parts = urlsplit(normalised)
    if scheme is not None and parts.scheme != scheme:
        return False
    return parts.scheme in ("http", "https") and parts.netloc == host.strip().lower()


# ----------------------------------------------------------------------------------------------------------------------
# A token in the WebSocket protocol header (never in a URL a proxy logs)

PROTOCOL = "avatar-relay"
_TOKEN_PROTOCOL = PROTOCOL + ".token."


def offered_protocols(header: str | None) -> list[str]:
    return [p.strip() for p in (header or "").split(",") if p.strip()]


def protocol_token(header: str | None) -> str | None:
    """The token a client offered as the subprotocol `avatar-relay.token.<token>` (Sec-WebSocket-Protocol), if any."""
    for protocol in offered_protocols(header):
        if protocol.startswith(_TOKEN_PROTOCOL):
            return protocol[len(_TOKEN_PROTOCOL):]
    return None


def chosen_protocol(header: str | None) -> str | None:
    """The subprotocol to accept the socket with: `avatar-relay` when the client offered it (a browser that offers
    subprotocols drops a socket accepted without one), else none."""
    return PROTOCOL if PROTOCOL in offered_protocols(header) else None


# ----------------------------------------------------------------------------------------------------------------------
# Client address


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def trusted_proxies(settings: Settings) -> tuple[Network, ...]:
    """Whose X-Forwarded-For is believed: RELAY_TRUSTED_PROXIES (addresses and networks), else, with
    RELAY_TRUST_FORWARDED_FOR alone, a proxy on this machine (loopback peers); else nobody."""
    listed = tuple(ipaddress.ip_network(part.strip(), strict=False)
                   for part in settings.relay_trusted_proxies.split(",") if part.strip())
    if listed:
        return listed
    return LOOPBACK if settings.relay_trust_forwarded_for else ()


def is_trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        parsed = ipaddress.ip_address(address.strip().strip("[]").split("%")[0])
    except ValueError:
        return False
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return any(parsed in network for network in proxies)


def client_address(remote_addr: str | None, forwarded_for: str | None, *, proxies: tuple[Network, ...] = (),
                   ipv6_prefix: int = 64) -> str:
    """The client a conversation is counted against: the socket's peer address, unless that peer is a trusted
    proxy (`proxies`, RELAY_TRUSTED_PROXIES): then the right-most X-Forwarded-For address that is not itself a
    trusted proxy (each proxy appends the address it saw; everything left of the first untrusted one is the client's
    to forge). An IPv6 address stands for its whole network of `ipv6_prefix` bits (RELAY_CLIENT_IPV6_PREFIX: one
    host usually has a whole /64 to choose from), written `2001:db8:1:2::/64`; an IPv4-mapped IPv6 address is its
    IPv4 address."""
    address = remote_addr or "unknown"
    if forwarded_for and proxies and is_trusted(address, proxies):
        for hop in reversed(forwarded_for.split(",")):
            hop = hop.strip()[:64]
            if not hop:
                continue
            address = hop
            if not is_trusted(hop, proxies):
                break
    return client_network(address, ipv6_prefix)


def client_network(address: str, ipv6_prefix: int) -> str:
    """`address` as the client it counts as: an IPv6 address as its network of `ipv6_prefix` bits, anything else
    (IPv4, a name, "unknown") as it is."""
    try:
        parsed = ipaddress.ip_address(address.strip("[]").split("%")[0])
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        if ipv6_prefix < 128:
            return str(ipaddress.ip_network(f"{parsed}/{ipv6_prefix}", strict=False))
    return str(parsed)
