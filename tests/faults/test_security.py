"""Who gets in and what leaks out, on a real relay: API keys never reach a browser, a page or a log line; the
Origin allow-list and client tokens are enforced before anything upstream is called; start rates and per-client
caps (behind a trusted proxy, per X-Forwarded-For address); bad input gets a clear error and the right close code
without disturbing another conversation."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from relay.server.auth import mint_token
from relay.sim.elevenlabs_sim import ALL_CLIENT_EVENTS
from tests.faults.matrix import FaultRelay, running_fault_relay
from tests.support.harness import BrowserClient

KEYS = {"elevenlabs_api_key": "xi-LEAKCHECK-0123456789abcdef", "heygen_api_key": "hg-LEAKCHECK-0123456789abcdef",
        "liveavatar_api_key": "la-LEAKCHECK-0123456789abcdef", "relay_auth_secret": "auth-LEAKCHECK-0123456789"}
SECRET = "auth-secret-for-tests"


async def _all_frames(browser: BrowserClient, into: list[str | bytes], *, until: str = "ended") -> None:
    with trio.fail_after(10):
        while True:
            frame = await browser.ws.get_message()
            into.append(frame)
            if isinstance(frame, str) and orjson.loads(frame)["type"] == until:
                return


class _Everything(logging.Handler):
    """Every record: its message, traceback and every attribute (arguments and extra fields included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter("%(name)s %(message)s").format(record) + repr(vars(record)))


@pytest.mark.parametrize("provider", ["heygen", "liveavatar"])
async def test_api_keys_never_reach_a_browser_a_page_or_the_logs(provider: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    frames: list[str | bytes] = []
    pages: list[bytes] = []
    capture = _Everything()
    async with running_fault_relay(relay_avatar=provider, relay_auth="token", relay_log_level="DEBUG",
                                   **KEYS) as relay:
        logging.getLogger("relay").addHandler(capture)
        logging.getLogger().addHandler(capture)
        token = mint_token(KEYS["relay_auth_secret"])
        # client tool calls are opt-in on a real agent (`client_events`)
        await relay.faults("elevenlabs", first_message="", client_events=list(ALL_CLIENT_EVENTS))
        async with relay.browser() as browser:  # a full conversation
            await browser.send(type="start", token=token)
            await browser.send(type="text", text="please use a tool now")
            await _all_frames(browser, frames, until="tool_call")
            call = orjson.loads(frames[-1])
            await browser.send(type="tool_result", tool_call_id=call["tool_call_id"], result="12:00")
            await browser.send(type="stop")
            await _all_frames(browser, frames)
        # failures, whose messages come from upstream errors
        await relay.faults(provider, invalid_keys="*")
        await relay.faults("elevenlabs", invalid_api_keys=[KEYS["elevenlabs_api_key"]])
        async with relay.browser() as browser:
            await browser.send(type="start", token=mint_token(KEYS["relay_auth_secret"], subject="second"))
            await _all_frames(browser, frames)
        for path in ("/", "/static/app.js", "/client-config.json", "/healthz", "/readyz", "/metrics",
                     "/_demo/simulators"):
            pages.append((await relay.http.get(relay.url + path)).content)
        await relay.wait_all_sessions_stopped(provider)
    logging.getLogger("relay").removeHandler(capture)
    logging.getLogger().removeHandler(capture)
    text_frames = [f for f in frames if isinstance(f, str)]
    assert any('"ready"' in f for f in text_frames) and any('"error"' in f for f in text_frames)
    logs = "\n".join(capture.lines)
    assert "conversation ended" in logs
    for name, key in KEYS.items():
        assert not any(key in f for f in text_frames), name
        assert not any(key.encode() in f for f in frames if isinstance(f, bytes)), name
        assert not any(key.encode() in page for page in pages), name
        assert key not in logs, name


async def close_code(browser: BrowserClient) -> int:
    """Read to the end of the socket; the close code the relay sent."""
    with trio.fail_after(5):
        try:
            while True:
                await browser.next_message()
        except ConnectionClosed:
            pass
    assert browser.ws.closed is not None
    return int(browser.ws.closed.code)


async def _upstream_calls(relay: FaultRelay) -> int:
    agent = await relay.ledger("elevenlabs")
    avatar = await relay.ledger("heygen")
    return len(agent["conversations"]) + sum(avatar.get("requests", {}).values())


async def test_a_foreign_origin_is_refused_before_accepting() -> None:
    async with running_fault_relay(relay_allowed_origins="https://shop.example") as relay:
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(relay.ws_url, extra_headers=[(b"origin", b"https://evil.example")]):
                pass
        assert refused.value.status_code == 403
        async with open_websocket_url(relay.ws_url, extra_headers=[(b"origin", b"https://shop.example")]) as ws:
            assert (await BrowserClient(ws).start())["type"] == "ready"
        host = relay.url.removeprefix("http://").encode()
        async with open_websocket_url(relay.ws_url, extra_headers=[(b"origin", b"http://" + host)]) as ws:
            assert (await BrowserClient(ws).start())["type"] == "ready"  # the relay's own page


async def test_without_a_valid_token_nothing_upstream_is_called() -> None:
    async with running_fault_relay(relay_auth="token", relay_auth_secret=SECRET) as relay:
        for token in (None, "v1.1.x.bad", mint_token("another-secret"), mint_token(SECRET, ttl=-1)):
            async with relay.browser() as browser:
                await browser.send(type="start", **({"token": token} if token else {}))
                error = await browser.expect("error")
                assert error["code"] == "unauthorized"
                assert await close_code(browser) == 1008
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(relay.ws_url + "?token=v1.1.x.bad"):
                pass
        assert refused.value.status_code == 401
        assert await _upstream_calls(relay) == 0
        async with relay.browser() as browser:
            assert (await browser.start(token=mint_token(SECRET)))["type"] == "ready"
            await browser.send(type="stop")
        async with open_websocket_url(relay.ws_url + "?token=" + mint_token(SECRET, subject="other")) as ws:
            assert (await BrowserClient(ws).start())["type"] == "ready"


async def test_too_many_starts_from_one_address_get_capacity_1013() -> None:
    async with running_fault_relay(relay_max_starts_per_minute=2) as relay:
        for _ in range(2):
            async with relay.browser() as browser:
                await browser.start()
        async with relay.browser() as browser:
            error = await browser.expect("error")
            assert error["code"] == "capacity" and "new conversations" in error["message"]
            assert await close_code(browser) == 1013


@pytest.mark.parametrize("trusted", [True, False])
async def test_per_client_cap_uses_forwarded_for_only_behind_a_trusted_proxy(trusted: bool) -> None:
    async with running_fault_relay(relay_max_conversations_per_client=1, relay_trust_forwarded_for=trusted) as relay:
        async def open_as(address: str) -> Any:
            return open_websocket_url(relay.ws_url, message_queue_size=100,
                                      extra_headers=[(b"x-forwarded-for", b"198.51.100.9, " + address.encode())])

        async with await open_as("203.0.113.1") as first:
            await BrowserClient(first).start()
            async with await open_as("203.0.113.2") as second:
                client = BrowserClient(second)
                await client.send(type="start")
                with trio.fail_after(10):
                    first_message = await client.next_message()
                if trusted:  # another client behind the proxy: a conversation of its own
                    assert first_message["type"] == "ready", first_message
                    await client.send(type="stop")
                    assert await client.expect("ended") == {"type": "ended", "reason": "client_stop"}
                else:  # both are the proxy's address: over the limit of one
                    assert first_message == {"type": "error", "code": "capacity",
                                             "message": "too many conversations from your address; try again later"}
                    assert await client.next_message() == {"type": "ended", "reason": "capacity"}
                    assert await close_code(client) == 1013


BAD_FRAMES: list[tuple[str, list[str | bytes], str, int]] = [
    ("bad JSON", ["{not json"], "protocol_error", 1008),
    ("wrong type of field", ['{"type":"start","user_id":5}'], "protocol_error", 1008),
    ("unknown type", ['{"type":"start"}', '{"type":"launch_missiles"}'], "protocol_error", 1008),
    ("text where audio is expected", ['{"type":"start"}', '{"type":"audio","audio":"not base64!"}'],
     "protocol_error", 1008),
    ("audio before start", [b"\x00\x00" * 160], "protocol_error", 1008),
    ("odd-length audio", ['{"type":"start"}', b"\x00" * 3], "protocol_error", 1008),
    # Refused by hypercorn as it arrives (RELAY_MAX_FRAME_BYTES is its message limit): "message too big".
    ("oversized frame", ['{"type":"start"}', b"\x00\x00" * 5000], "", 1009),
    ("deeply nested start", ['{"type":"start","overrides":' + '{"a":' * 1000 + "1" + "}" * 1001],
     "protocol_error", 1008),
    ("oversized start", ['{"type":"start","user_id":"' + "x" * 70_000 + '"}'], "", 1009),
    ("flood of tiny frames", ['{"type":"start"}'] + [b"\x00\x00"] * 400, "protocol_error", 1008),
]


@pytest.mark.parametrize(("frames", "code", "close"), [b[1:] for b in BAD_FRAMES], ids=[b[0] for b in BAD_FRAMES])
@pytest.mark.timeout(120)
async def test_bad_input_gets_a_clear_error_and_close_code_and_disturbs_no_one(frames: list[str | bytes],
                                                                               code: str, close: int) -> None:
    with trio.fail_after(100):  # a hang guard
        await _bad_input(frames, code, close)


async def _bad_input(frames: list[str | bytes], code: str, close: int) -> None:
    # 50 frames a second: the 400-frame flood trips it even when a busy machine slows the sender or the relay (with
    # 300, the flood sometimes spread over several one-second windows and was never refused).
    async with running_fault_relay(relay_max_frame_bytes=8000, relay_max_frames_per_second=50,
                                   relay_idle_timeout=30.0) as relay:
        async with relay.browser() as healthy:
            await healthy.start()
            checked = False
            with trio.CancelScope() as clean_up:
                async with relay.browser() as bad:
                    if frames[0] == '{"type":"start"}':
                        await bad.start()
                        frames = frames[1:]
                    for frame in frames:
                        try:
                            await bad.send_raw(frame)
                        except ConnectionClosed:
                            break
                    if code:
                        error = await bad.expect("error", timeout=30)
                        assert error["code"] == code and error["message"]
                    assert await close_code(bad) == close
                    checked = True
                    # After a flood, trio-websocket's own close can wait on the TCP close: the checks are made, only
                    # the client's clean-up is cut short.
                    clean_up.deadline = trio.current_time() + 1
            assert checked
            await healthy.send(type="text", text="still there?")
            await healthy.expect("agent_response", timeout=30, where=lambda m: "still there" in m["text"])
            await healthy.send(type="stop")
            await healthy.expect("ended", timeout=30)
        await relay.wait_all_sessions_stopped("heygen")
