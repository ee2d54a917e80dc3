"""relay/elevenlabs.py's signed-URL fetch through an httpx2 MockTransport (no sockets): statuses map to reasons,
and the key never shows."""

from __future__ import annotations

import httpx2
import pytest

from relay.elevenlabs import fetch_signed_url
from relay.protocol import elevenlabs as el

# -- signed URL status mapping (httpx2 MockTransport, no sockets) -------------------------------------------------

SECRET_KEY = "sk_live_do_not_leak_0123456789"


def mock_client(status: int, body: object) -> httpx2.AsyncClient:
    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.headers["xi-api-key"] == SECRET_KEY
        assert request.url.path == "/v1/convai/conversation/get-signed-url"
        assert request.url.params["agent_id"] == "ag_1"
        return httpx2.Response(status, json=body)

    return httpx2.AsyncClient(transport=httpx2.MockTransport(handler))


async def test_signed_url_is_returned() -> None:
    signed = "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=ag_1&conversation_signature=s"
    async with mock_client(200, {"signed_url": signed}) as http:
        assert await fetch_signed_url(http, "https://api.elevenlabs.io", SECRET_KEY, "ag_1") == signed


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (401, "unauthorized"),
        (403, "unauthorized"),
        (404, "not_found"),
        (422, "rejected"),
        (429, "rate_limited"),
        (500, "upstream_error"),
        (503, "upstream_error"),
    ],
)
async def test_signed_url_errors_map_to_reasons_and_never_show_the_key(status: int, reason: str) -> None:
    body = {"detail": {"status": "x", "message": f"key {SECRET_KEY} is not valid"}}
    async with mock_client(status, body) as http:
        with pytest.raises(el.AgentUnavailable) as caught:
            await fetch_signed_url(http, "https://api.elevenlabs.io", SECRET_KEY, "ag_1")
    assert (caught.value.reason, caught.value.status_code) == (reason, status)
    assert SECRET_KEY not in str(caught.value)
    assert str(status) in str(caught.value)


async def test_signed_url_answer_without_a_socket_url_is_an_upstream_error() -> None:
    async with mock_client(200, {"signed_url": "https://not-a-socket"}) as http:
        with pytest.raises(el.AgentUnavailable) as caught:
            await fetch_signed_url(http, "https://api.elevenlabs.io", SECRET_KEY, "ag_1")
    assert caught.value.reason == "upstream_error"


async def test_signed_url_timeout_maps_to_timeout() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("slow", request=request)

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http:
        with pytest.raises(el.AgentUnavailable) as caught:
            await fetch_signed_url(http, "https://api.elevenlabs.io", SECRET_KEY, "ag_1")
    assert caught.value.reason == "timeout"
