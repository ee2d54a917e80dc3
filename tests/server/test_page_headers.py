"""The page's security headers, from the settings (no sockets)."""

from __future__ import annotations

from typing import Any

from relay.config import Settings
from relay.server.page_headers import page_headers


def headers(**values: Any) -> dict[str, str]:
    return page_headers(Settings(_env_file=None, **values))  # type: ignore[call-arg]


def directives(policy: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in policy.split("; ")}


def test_the_csp_allows_exactly_what_the_page_needs() -> None:
    csp = directives(headers(relay_livekit_client_url="https://cdn.example/npm/livekit-client@2/+esm")
                     ["Content-Security-Policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'", "https://cdn.example/npm/livekit-client@2/+esm"]  # that file, not the CDN
    assert csp["connect-src"] == ["'self'", "wss://*.livekit.cloud", "https://*.livekit.cloud"]
    assert csp["frame-ancestors"] == ["'self'"]
    assert "'unsafe-inline'" not in " ".join(v for vs in csp.values() for v in vs)


def test_framers_come_from_the_setting_and_may_use_the_microphone() -> None:
    got = headers(relay_frame_ancestors="'self' https://shop.example")
    assert directives(got["Content-Security-Policy"])["frame-ancestors"] == ["'self'", "https://shop.example"]
    assert got["Permissions-Policy"].startswith('microphone=(self "https://shop.example")')
    assert headers()["Permissions-Policy"].startswith("microphone=(self),")


def test_the_other_headers() -> None:
    got = headers()
    assert got["X-Content-Type-Options"] == "nosniff" and got["Referrer-Policy"] == "no-referrer"


def test_the_default_livekit_client_is_pinned_by_its_integrity() -> None:
    """L4: the default module is fetched (connect-src: that one URL) with its SHA-384 checked and run from blob:."""
    csp = directives(headers()["Content-Security-Policy"])
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert csp["script-src"] == ["'self'", "blob:"]
    assert settings.relay_livekit_client_url in csp["connect-src"]
    assert settings.livekit_client_integrity is not None and settings.livekit_client_integrity.startswith("sha384-")
    other = Settings(_env_file=None, relay_livekit_client_url="https://x.example/lk.mjs")  # type: ignore[call-arg]
    assert other.livekit_client_integrity is None

