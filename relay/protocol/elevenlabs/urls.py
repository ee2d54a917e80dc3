"""The REST side: the `*_url` functions derive endpoints from a configurable base URL (regional hosts exist), and
`read_signed_url_answer` reads the signed-URL answer. The request itself is `relay.elevenlabs`.

This module must never do I/O or import trio, httpx2 or websockets, and must never put an API key in an exception
message.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

import orjson

from relay.protocol.elevenlabs.build import SOURCE
from relay.protocol.elevenlabs.endings import AgentUnavailable
from relay.protocol.vocab import AgentUnavailableReason

_HTTP_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_WS_SCHEMES: Final = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def _join(base_url: str, schemes: dict[str, str], path: str, query: str) -> str:
    parts = urlsplit(base_url.strip())
    scheme = schemes.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"base URL must be http(s):// or ws(s)://host, got {base_url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, query, ""))


def _agent_query(agent_id: str, **extra: str | None) -> str:
    if not agent_id:
        raise ValueError("agent_id is empty")
    return "&".join(["agent_id=" + quote(agent_id, safe="")]
                    + [f"{key}={quote(value, safe='')}" for key, value in extra.items() if value])


def conversation_ws_url(base_url: str, agent_id: str, *, branch_id: str | None = None,
                        environment: str | None = None, version: str | None = None) -> str:
    """The public agent socket: `https://api.eu.residency.elevenlabs.io` ->
    `wss://api.eu.residency.elevenlabs.io/v1/convai/conversation?agent_id=...` (a path prefix is kept), with
    `branch_id` and `environment` when set, and `source=avatar-relay&version=...` when `version` is given (the SDKs
    add source and version: elevenlabs-python `_get_wss_url`, packages WebSocketConnection.ts)."""
    return _join(base_url, _WS_SCHEMES, "/v1/convai/conversation",
                 _agent_query(agent_id, branch_id=branch_id, environment=environment,
                              source=SOURCE if version else None, version=version))


def signed_url_request(base_url: str, agent_id: str, *, branch_id: str | None = None,
                       environment: str | None = None) -> str:
    """Where to GET a signed socket URL for a private agent (with the `xi-api-key` header); `branch_id` and
    `environment` as the SDKs send them (elevenlabs-python raw_client.py `get_signed_url`)."""
    return _join(base_url, _HTTP_SCHEMES, "/v1/convai/conversation/get-signed-url",
                 _agent_query(agent_id, branch_id=branch_id, environment=environment))


def with_source(signed_url: str, version: str, environment: str | None = None) -> str:
    """A signed URL with `source=avatar-relay&version=...` (and `environment`) appended, as the SDKs do before
    opening it (elevenlabs-python `_get_signed_url`; packages WebSocketConnection.ts)."""
    extra = f"source={SOURCE}&version={quote(version, safe='')}"
    if environment:
        extra += f"&environment={quote(environment, safe='')}"
    return signed_url + ("&" if "?" in signed_url else "?") + extra


def agent_details_url(base_url: str, agent_id: str) -> str:
    """`GET /v1/convai/agents/{agent_id}` (with `xi-api-key`): the agent's configuration, incl. audio
    formats."""
    if not agent_id:
        raise ValueError("agent_id is empty")
    return _join(base_url, _HTTP_SCHEMES, "/v1/convai/agents/" + quote(agent_id, safe=""), "")

# ----------------------------------------------------------------------------------------------------------------------
# Signed-URL answers

_STATUS_REASONS: Final[dict[int, AgentUnavailableReason]] = {401: "unauthorized", 403: "unauthorized",
                                                             404: "not_found", 429: "rate_limited"}


def reason_for_status(status: int) -> AgentUnavailableReason:
    """The `AgentUnavailable.reason` for a refusal with HTTP `status`."""
    if status in _STATUS_REASONS:
        return _STATUS_REASONS[status]
    return "upstream_error" if status >= 500 else "rejected"


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def upstream_detail(body: bytes, api_key: str) -> str:
    """A short, key-free description of an error body (ElevenLabs answers `{"detail": {...}}` or `{"detail":
    "..."}`)."""
    payload = _json_object(body)
    detail: Any = None if payload is None else payload.get("detail")
    if isinstance(detail, dict):
        detail = detail.get("message") or detail.get("status")
    elif isinstance(detail, list) and detail and isinstance(detail[0], dict):
        detail = detail[0].get("msg")
    text = detail if isinstance(detail, str) else ""
    if api_key:
        text = text.replace(api_key, "***")
    return text[:200]


def read_signed_url_answer(status: int, body: bytes, api_key: str) -> str:
    """The `signed_url` of a `get-signed-url` answer. Raises `AgentUnavailable` (401/403 unauthorized, 404
    not_found, 422 rejected, 429 rate_limited, 5xx upstream_error, a 200 without a ws(s) URL upstream_error); its
    message never holds `api_key`."""
    if status != 200:
        detail = upstream_detail(body, api_key)
        raise AgentUnavailable(
            reason_for_status(status),
            f"ElevenLabs refused the signed URL request (HTTP {status}" + (f": {detail})" if detail else ")"),
            status,
        )
    payload = _json_object(body)
    signed_url = None if payload is None else payload.get("signed_url")
    if not isinstance(signed_url, str) or not signed_url.startswith(("wss://", "ws://")):
        raise AgentUnavailable("upstream_error", "ElevenLabs answered the signed URL request without a ws(s) URL", 200)
    return signed_url
