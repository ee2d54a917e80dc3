"""The page: `/` and its static files (relay/static, no build step), `/embed.js` and livekit-client for the widget on
other websites (`relay.server.embed`), `client-config.json` (what the page needs to know: where livekit-client is,
the socket's path, the microphone frames' length, how each provider's avatar is shown), and the page's defences on
every HTTP answer (`relay.server.page_headers`), with the CORS headers on what a foreign page loads."""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from relay.config import Settings
from relay.providers.table import page_config
from relay.server import embed
from relay.server.page_headers import page_headers

log = logging.getLogger("relay.web")

STATIC_DIR = resources.files("relay") / "static"

_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                  ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
                  ".json": "application/json", ".ts": "text/plain; charset=utf-8"}


def client_config(settings: Settings, livekit: embed.LivekitClient | embed.LivekitClientProblem) -> dict[str, Any]:
    """`client-config.json`: never a secret."""
    return {**embed.client_config(settings, livekit), "avatars": page_config()}


def add_page_routes(app: QuartTrio, settings: Settings) -> None:
    """`/`, `/static/<name>`, `/embed.js`, `/vendor/<name>`, `/client-config.json`, and the security headers on
    every HTTP answer of `app` (with CORS on what the widget loads on a foreign page). Reads the relay's copy of
    livekit-client once, here (start-up)."""
    security_headers = page_headers(settings)
    livekit = embed.local_livekit_client(settings, log.warning)
    config = client_config(settings, livekit)

    @app.after_request
    async def add_security_headers(response: Response) -> Response:
        """The page's own defences on every HTTP answer (the page, its static files, the JSON endpoints)."""
        for name, value in security_headers.items():
            response.headers.setdefault(name, value)
        if embed.embeddable(request.path):  # the widget on a foreign page loads these (docs/embedding.md)
            response.headers.update(embed.CROSS_ORIGIN_HEADERS)
        return response

    @app.route("/")
    async def index() -> Response:
        return static_response("index.html")

    @app.route("/static/<path:name>")
    async def static_file(name: str) -> Response:
        return static_response(name)

    @app.route("/embed.js")
    async def embed_module() -> Response:
        return static_response("embed.js")

    @app.route("/vendor/<path:name>")
    async def vendor_file(name: str) -> Response:
        found = embed.vendor_file(livekit, name)
        if found is None:
            return Response("not found", status=404)
        return Response(found[0], content_type=found[1], headers={"cache-control": "public, max-age=86400"})

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
