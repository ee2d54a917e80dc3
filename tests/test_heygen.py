"""relay/heygen.py's provider through an httpx2 MockTransport (no sockets): a transport error never shows the key."""

from __future__ import annotations

import httpx2
import pytest

from relay.avatars import AvatarUnavailable
from relay.heygen import HeyGenProvider
from tests.protocol.test_heygen import KEY, settings


async def test_a_transport_error_quoting_the_key_is_redacted_before_it_reaches_the_caller() -> None:
    seen: list[httpx2.Request] = []

    def refuse(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        raise httpx2.ConnectError(f"cannot connect (x-api-key: {KEY})", request=request)

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(refuse)) as http:
        provider = HeyGenProvider(settings(heygen_base_url="https://api.heygen.test"), http)
        with pytest.raises(AvatarUnavailable) as raised:
            async with provider.open_session(lambda event: None):
                pytest.fail("the body must not run")
    assert raised.value.reason == "upstream_error"
    assert KEY not in str(raised.value) and KEY not in raised.value.message
    assert [r.url.path for r in seen] == ["/v1/streaming.new"]
    assert seen[0].headers["x-api-key"] == KEY
    assert seen[0].headers["content-type"] == "application/json"
