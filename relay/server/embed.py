"""What lets any website embed the relay's widget with one tag (docs/embedding.md): `/embed.js`, the CORS headers
its modules need on a foreign page, livekit-client served by the relay itself, and `client-config.json`.

livekit-client is the npm package pinned in relay/client/package.json and package-lock.json, installed next to the
code by `npm ci --prefix relay/client` (or anywhere, named by RELAY_LIVEKIT_CLIENT_DIR). It is read once, at start-up,
and served only if its ES module is byte for byte the pinned release (its SHA-384 below, the value a page's Subresource
Integrity check uses); RELAY_LIVEKIT_CLIENT_URL, when set, loads it from there instead (checked against
RELAY_LIVEKIT_CLIENT_INTEGRITY when that is set). Pure but for reading those two files (`find_livekit_client`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.config import Settings
from relay.providers.table import chosen

LIVEKIT_CLIENT_VERSION = "2.15.7"
# SHA-384 of dist/livekit-client.esm.mjs in livekit-client 2.15.7 as npm ships it (the tarball's own sha512 is in
# relay/client/package-lock.json); tests/server/test_embed.py checks both against the installed copy.
LIVEKIT_CLIENT_SHA384 = "sha384-Fdl/3YF53OfPCw7/DOpOaBHl0jTR+alUeSH6OX/ThjI9KYpX8W5dLMKoeMm0lhSG"
LIVEKIT_CLIENT_MODULE = "dist/livekit-client.esm.mjs"
CLIENT_DIR = Path(__file__).resolve().parents[1] / "client"
DEFAULT_LIVEKIT_CLIENT_DIR = CLIENT_DIR / "node_modules" / "livekit-client"
# Where the relay serves its copy, relative to its base URL (the widget resolves it against the relay, not the host).
LIVEKIT_CLIENT_PATH = "vendor/livekit-client.esm.mjs"
LIVEKIT_LICENSE_PATH = "vendor/livekit-client.LICENSE.txt"

# On what a foreign page loads from the relay (the widget's modules, stylesheet, audio worklet, livekit-client and
# client-config.json): module scripts and worklets are fetched in CORS mode, without credentials, so `*` is enough
# and admits no cookie. `/ws` is not covered: it admits only RELAY_ALLOWED_ORIGINS (relay.server.auth).
CROSS_ORIGIN_HEADERS = {"Access-Control-Allow-Origin": "*", "Cross-Origin-Resource-Policy": "cross-origin",
                        "Timing-Allow-Origin": "*"}
_EMBEDDABLE_PREFIXES = ("/static/", "/vendor/")
_EMBEDDABLE_PATHS = frozenset({"/embed.js", "/client-config.json"})


def embeddable(path: str) -> bool:
    """Whether a foreign page's widget loads `path` from the relay (it then carries CROSS_ORIGIN_HEADERS)."""
    return path in _EMBEDDABLE_PATHS or path.startswith(_EMBEDDABLE_PREFIXES)


def integrity(data: bytes) -> str:
    """The Subresource Integrity value of `data` (SHA-384, as browsers and npm write it)."""
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


@dataclass(frozen=True, slots=True)
class LivekitClient:
    """The relay's own copy of livekit-client: the ES module, its licence, its integrity."""

    module: bytes
    license: bytes
    integrity: str


@dataclass(frozen=True, slots=True)
class LivekitClientProblem:
    """Why the relay has no copy to serve, in one line an operator can act on."""

    message: str


def livekit_client_dir(settings: Settings) -> Path:
    return Path(settings.relay_livekit_client_dir) if settings.relay_livekit_client_dir else DEFAULT_LIVEKIT_CLIENT_DIR


def find_livekit_client(directory: Path) -> LivekitClient | LivekitClientProblem:
    """Read the installed livekit-client from `directory` (an npm package folder) and check it is the pinned release.
    Blocks on two small file reads (start-up only)."""
    install = ("install it with `npm ci --prefix relay/client` (or set RELAY_LIVEKIT_CLIENT_DIR or "
               "RELAY_LIVEKIT_CLIENT_URL)")
    try:
        module = (directory / LIVEKIT_CLIENT_MODULE).read_bytes()
        license_text = (directory / "LICENSE").read_bytes()
    except OSError:
        return LivekitClientProblem(
            f"livekit-client {LIVEKIT_CLIENT_VERSION} is not installed in {directory}: {install}")
    found = integrity(module)
    if found != LIVEKIT_CLIENT_SHA384:
        return LivekitClientProblem(
            f"{directory / LIVEKIT_CLIENT_MODULE} is not livekit-client {LIVEKIT_CLIENT_VERSION} as npm ships it "
            f"(integrity {found}, expected {LIVEKIT_CLIENT_SHA384}): {install}")
    return LivekitClient(module=module, license=license_text, integrity=found)


def client_config(settings: Settings, local: LivekitClient | LivekitClientProblem) -> dict[str, Any]:
    """`/client-config.json`: where the widget loads livekit-client from (a URL relative to the relay, or
    RELAY_LIVEKIT_CLIENT_URL; null when there is none) with its integrity (the relay's copy: its pinned SHA-384; an
    operator's URL: RELAY_LIVEKIT_CLIENT_INTEGRITY, or null for no check), the WebSocket's path and the microphone
    frame length."""
    url: str | None = settings.relay_livekit_client_url or None
    checked: str | None = settings.livekit_client_integrity
    if url is None and isinstance(local, LivekitClient):
        url, checked = LIVEKIT_CLIENT_PATH, local.integrity
    return {"livekit_client_url": url, "livekit_client_integrity": checked, "ws_path": "/ws",
            "frame_ms": settings.relay_client_frame_ms}


def local_livekit_client(settings: Settings, warn: Callable[[str], None]) -> LivekitClient | LivekitClientProblem:
    """The relay's copy of livekit-client, read at start-up. When the widget would need it (a real avatar, no
    RELAY_LIVEKIT_CLIENT_URL) and it is missing or not the pinned release, `warn` gets one line saying what to do;
    demo mode and voice-only relays never load it, so they start quietly without it."""
    local = find_livekit_client(livekit_client_dir(settings))
    needed = not settings.relay_livekit_client_url and not settings.demo_mode and chosen(settings) is not None
    if needed and isinstance(local, LivekitClientProblem):
        warn(f"the widget cannot show the avatar's video: {local.message}")
    return local


def vendor_file(local: LivekitClient | LivekitClientProblem, name: str) -> tuple[bytes, str] | None:
    """`/vendor/<name>`: the body and content type of livekit-client's module or licence, or None (not found)."""
    if not isinstance(local, LivekitClient):
        return None
    if f"vendor/{name}" == LIVEKIT_CLIENT_PATH:
        return local.module, "text/javascript; charset=utf-8"
    if f"vendor/{name}" == LIVEKIT_LICENSE_PATH:
        return local.license, "text/plain; charset=utf-8"
    return None
