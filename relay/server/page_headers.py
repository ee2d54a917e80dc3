"""The page's own defences: the security headers on every HTTP answer (the page, its static files, its JSON), from
the settings. Pure (no I/O).

The Content-Security-Policy allows exactly what the page uses: its own origin (its modules, styles, the audio
worklet, `client-config.json` and its WebSocket, and by default livekit-client: the relay's own copy), an operator's
livekit-client module's exact URL (RELAY_LIVEKIT_CLIENT_URL: fetched with its Subresource Integrity checked and run
from a `blob:` URL, or, without an integrity, imported),
the LiveKit hosts of RELAY_PAGE_CONNECT_SRC (signalling over wss:, region lookup over https:), media from
MediaStreams; `frame-ancestors` is RELAY_FRAME_ANCESTORS (default 'self'). The microphone may be used by the page's
origin and the origins allowed to frame it, nothing else.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from relay.config import Settings


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return None


def _exact(url: str) -> str | None:
    """`url` as a CSP source matching that one file (no query or fragment), or None if it is not absolute."""
    parts = urlsplit(url)
    if _origin(url) is None or any(c in url for c in " ;,'"):
        return None
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def content_security_policy(settings: Settings) -> str:
    scripts = ["'self'"]
    connect = ["'self'", *settings.relay_page_connect_src.split()]
    if (module := _exact(settings.relay_livekit_client_url)) is not None:
        if settings.livekit_client_integrity:
            # Fetched with its integrity checked, then run from a blob: URL (relay/static/livekit.js).
            connect.append(module)
            scripts.append("blob:")
        else:
            scripts.append(module)
    ancestors = settings.relay_frame_ancestors.split() or ["'none'"]
    directives = [
        "default-src 'none'",
        "script-src " + " ".join(scripts),
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' blob: mediastream:",
        "connect-src " + " ".join(connect),
        "worker-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "object-src 'none'",
        "frame-ancestors " + " ".join(ancestors),
    ]
    return "; ".join(directives)


def permissions_policy(settings: Settings) -> str:
    framers = [f'"{source}"' for source in settings.relay_frame_ancestors.split()
               if "://" in source and "*" not in source]
    return f"microphone=({' '.join(['self', *framers])}), camera=(), geolocation=(), payment=(), usb=()"


def page_headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": permissions_policy(settings),
    }
