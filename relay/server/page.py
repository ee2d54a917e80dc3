"""The page: `/` and its static files (relay/static, no build step), `client-config.json` (what the page needs to
know: where livekit-client is, the socket's path, the microphone frames' length, how each provider's avatar is
shown), and the page's defences on every HTTP answer (`relay.server.page_headers`)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from quart import Response
from quart_trio import QuartTrio

from relay.config import Settings
from relay.providers.table import page_config
from relay.server.page_headers import page_headers

STATIC_DIR = resources.files("relay") / "static"

_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                  ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
                  ".json": "application/json"}


def client_config(settings: Settings) -> dict[str, Any]:
    """`client-config.json`: never a secret."""
    return {"livekit_client_url": settings.relay_livekit_client_url, "ws_path": "/ws",
            "frame_ms": settings.relay_client_frame_ms, "avatars": page_config()}


def add_page_routes(app: QuartTrio, settings: Settings) -> None:
    """`/`, `/static/<name>`, `/client-config.json`, and the security headers on every HTTP answer of `app`."""
    security_headers = page_headers(settings)
    config = client_config(settings)

    @app.after_request
    async def add_security_headers(response: Response) -> Response:
        """The page's own defences on every HTTP answer (the page, its static files, the JSON endpoints)."""
        for name, value in security_headers.items():
            response.headers.setdefault(name, value)
        return response

    @app.route("/")
    async def index() -> Response:
        return static_response("index.html")

    @app.route("/static/<path:name>")
    async def static_file(name: str) -> Response:
        return static_response(name)

    @app.route("/client-config.json")
    async def client_config_json() -> dict[str, Any]:
        return config


def static_response(name: str) -> Response:
    """A file of relay/static by its path, or 404 (no dot-files, no way out of the folder)."""
    parts = [p for p in name.split("/") if p]
    if not parts or any(p in (".", "..") or p.startswith(".") for p in parts):
        return Response("not found", status=404)
    target = STATIC_DIR.joinpath(*parts)
    if not target.is_file():
        return Response("not found", status=404)
    suffix = "." + parts[-1].rsplit(".", 1)[-1] if "." in parts[-1] else ""
    return Response(target.read_bytes(), content_type=_CONTENT_TYPES.get(suffix, "application/octet-stream"),
                    headers={"cache-control": "no-cache"})
