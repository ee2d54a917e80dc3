"""The page's security headers, from the settings (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

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


def test_an_empty_frame_ancestors_setting_forbids_every_framer() -> None:
    got = headers(relay_frame_ancestors="")
    assert directives(got["Content-Security-Policy"])["frame-ancestors"] == ["'none'"]
    assert headers(relay_frame_ancestors="   ")["Content-Security-Policy"].endswith("frame-ancestors 'none'")


def test_a_wildcard_framer_may_frame_the_page_but_gets_no_microphone() -> None:
    got = headers(relay_frame_ancestors="'self' https://*.shop.example")
    assert directives(got["Content-Security-Policy"])["frame-ancestors"] == ["'self'", "https://*.shop.example"]
    assert got["Permissions-Policy"].startswith("microphone=(self),")
    mixed = headers(relay_frame_ancestors="https://*.shop.example https://shop.example")
    assert mixed["Permissions-Policy"].startswith('microphone=(self "https://shop.example"),')


def test_the_default_csp_names_no_cdn() -> None:
    """#24 + L4: by default the widget loads the relay's own copy of livekit-client: scripts only from 'self'."""
    csp = directives(headers()["Content-Security-Policy"])
    assert csp["script-src"] == ["'self'"]
    assert not any("jsdelivr" in source for source in csp["connect-src"])


def test_an_override_url_with_an_integrity_is_fetched_and_pinned() -> None:
    """L4: an operator's RELAY_LIVEKIT_CLIENT_URL with RELAY_LIVEKIT_CLIENT_INTEGRITY is fetched (connect-src: that
    one URL) with its SHA-384 checked and run from blob:."""
    url = "https://cdn.example/npm/livekit-client@2.15.7/dist/livekit-client.esm.mjs"
    integrity = "sha384-Fdl/3YF53OfPCw7/DOpOaBHl0jTR+alUeSH6OX/ThjI9KYpX8W5dLMKoeMm0lhSG"
    csp = directives(headers(relay_livekit_client_url=url,
                             relay_livekit_client_integrity=integrity)["Content-Security-Policy"])
    assert csp["script-src"] == ["'self'", "blob:"]
    assert url in csp["connect-src"]
    settings = Settings(_env_file=None, relay_livekit_client_url=url,  # type: ignore[call-arg]
                        relay_livekit_client_integrity=integrity)
    assert settings.livekit_client_integrity == integrity
    other = Settings(_env_file=None, relay_livekit_client_url=url)  # type: ignore[call-arg]
    assert other.livekit_client_integrity is None
    local = Settings(_env_file=None, relay_livekit_client_integrity=integrity)  # type: ignore[call-arg]
    assert local.livekit_client_integrity is None, "the relay's own copy carries its own pinned integrity"

def test_every_directive_of_the_csp_is_exactly_what_the_page_needs() -> None:
    csp = directives(headers(relay_livekit_client_url="https://cdn.example/npm/livekit-client@2/+esm")
                     ["Content-Security-Policy"])
    assert csp == {
        "default-src": ["'none'"],
        "script-src": ["'self'", "https://cdn.example/npm/livekit-client@2/+esm"],  # the one file (#30 L4)
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "media-src": ["'self'", "blob:", "mediastream:"],
        "connect-src": ["'self'", "wss://*.livekit.cloud", "https://*.livekit.cloud"],
        "worker-src": ["'self'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "object-src": ["'none'"],
        "frame-ancestors": ["'self'"],
    }


@pytest.mark.parametrize(("url", "scripts"), [
    ("http://127.0.0.1:8123/livekit-client.esm.mjs", ["'self'", "http://127.0.0.1:8123/livekit-client.esm.mjs"]),
    ("static/livekit-client.esm.mjs", ["'self'"]),  # self-hosted beside the page: its own origin already
    ("//cdn.example/livekit.mjs", ["'self'"]),  # no scheme: nothing added
    ("ftp://cdn.example/livekit.mjs", ["'self'"]),
])
def test_the_module_origin_is_allowed_only_for_an_http_url(url: str, scripts: list[str]) -> None:
    # The settings refuse a URL without http(s):// at start-up (issue 28); page_headers is still checked on such a
    # value directly, so the CSP cannot widen if that validation ever loosens.
    settings = Settings(_env_file=None).model_copy(update={"relay_livekit_client_url": url})  # type: ignore[call-arg]
    csp = directives(page_headers(settings)["Content-Security-Policy"])
    assert csp["script-src"] == scripts
