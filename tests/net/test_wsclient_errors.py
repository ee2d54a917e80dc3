"""I5 of the security review: a signed URL the client cannot parse is never repeated in the error (which reaches
the browser as `upstream_unavailable`): the URL carries the conversation's signature."""

from __future__ import annotations

import pytest

from relay.net.wsclient import WebSocketConnectError, open_websocket


async def test_an_invalid_signed_url_is_not_echoed() -> None:
    url = "wss://api.example:notaport/v1/convai/conversation?conversation_signature=SIGNATURE-SECRET"
    with pytest.raises(WebSocketConnectError) as failed:
        async with open_websocket(url):
            pass
    assert "SIGNATURE-SECRET" not in str(failed.value) and "api.example" not in str(failed.value)
    assert "invalid WebSocket URL" in str(failed.value)
