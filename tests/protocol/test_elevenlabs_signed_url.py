"""The ElevenLabs signed-URL answer, read sans-I/O: status + body -> the socket URL or a typed refusal (no sockets,
no mock transport)."""

from __future__ import annotations

import orjson
import pytest

from relay.protocol import elevenlabs as el

SECRET_KEY = "sk_live_do_not_leak_0123456789"


def test_the_signed_url_is_read_from_a_200() -> None:
    signed = "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=ag_1&conversation_signature=s"
    assert el.read_signed_url_answer(200, orjson.dumps({"signed_url": signed}), SECRET_KEY) == signed


@pytest.mark.parametrize(("status", "reason"), [(401, "unauthorized"), (403, "unauthorized"), (404, "not_found"),
                                                (422, "rejected"), (429, "rate_limited"), (500, "upstream_error")])
def test_refusals_map_to_reasons_and_never_show_the_key(status: int, reason: str) -> None:
    body = orjson.dumps({"detail": {"status": "x", "message": f"key {SECRET_KEY} is not valid"}})
    with pytest.raises(el.AgentUnavailable) as caught:
        el.read_signed_url_answer(status, body, SECRET_KEY)
    assert (caught.value.reason, caught.value.status_code) == (reason, status)
    assert SECRET_KEY not in str(caught.value) and str(status) in str(caught.value)


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", orjson.dumps({"signed_url": "https://not-a-socket"})])
def test_a_200_without_a_socket_url_is_an_upstream_error(body: bytes) -> None:
    with pytest.raises(el.AgentUnavailable) as caught:
        el.read_signed_url_answer(200, body, SECRET_KEY)
    assert caught.value.reason == "upstream_error"
