"""`/ws` on its own socket (relay.server.direct_ws) on the real relay, hypercorn and the simulators: the conversation
reads the browser's TCP stream itself — hypercorn's WebSocket stream is never made for it —, and every rule of the
hypercorn path holds there: message bounds (the `start`'s and the others'), close codes for bad frames, fragmented
messages, pings, the request guard, a browser leaving while nothing reads; and everything that is not a plain-TCP
`/ws` upgrade (the page, probes, keep-alive HTTP, a head sent byte by byte) is still hypercorn's, unchanged."""

from __future__ import annotations

import struct
from typing import Any

import orjson
import pytest
import trio
from hypercorn.protocol import ws_stream

from relay.server.direct_ws import route_of
from tests.support.harness import running_relay
from tests.support.wsframes import RawSocket, client_frame, open_raw_socket


def port_of(relay: Any) -> int:
    return int(relay.url.rsplit(":", 1)[1])


async def next_json(client: RawSocket) -> dict[str, Any]:
    while (frame := await client.receive_frame()) is not None:
        opcode, payload = frame
        if opcode == 0x1:
            return orjson.loads(payload)  # type: ignore[no-any-return]
        assert opcode != 0x8, f"closed: {payload!r}"
    raise AssertionError("the connection ended")


async def until_type(client: RawSocket, kind: str) -> dict[str, Any]:
    with trio.fail_after(10):
        while (message := await next_json(client))["type"] != kind:
            pass
        return message


async def test_a_conversation_never_makes_hypercorns_websocket_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []
    original = ws_stream.WSStream.__init__

    def counting(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
        if route_of(app) is not None:  # the relay's (the agent's simulator serves WebSockets through hypercorn)
            made.append(self)
        original(self, app, *args, **kwargs)

    monkeypatch.setattr(ws_stream.WSStream, "__init__", counting)
    async with running_relay() as relay:
        client = await open_raw_socket(port_of(relay))
        assert client.status == 101
        await client.stream.send_all(client_frame(b'{"type":"start"}'))
        await until_type(client, "ready")
        await client.stream.send_all(client_frame(b'{"type":"stop"}'))
        assert (await until_type(client, "ended"))["reason"] == "client_stop"
        assert await client.close_code() == 1000
        await client.aclose()
    assert made == []


async def test_a_browser_offering_deflate_is_answered_without_it_and_the_conversation_works() -> None:
    async with running_relay() as relay:
        client = await open_raw_socket(port_of(relay), deflate=True)
        assert client.status == 101
        assert "sec-websocket-extensions" not in client.headers  # declined: frames arrive uncompressed
        await client.stream.send_all(client_frame(b'{"type":"start"}'))
        await until_type(client, "ready")
        await client.aclose()


async def test_hypercorns_path_still_offers_deflate_when_the_direct_socket_is_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []
    original = ws_stream.WSStream.__init__

    def counting(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
        made.append(app)
        original(self, app, *args, **kwargs)

    monkeypatch.setattr(ws_stream.WSStream, "__init__", counting)
    async with running_relay(relay_direct_websocket=False) as relay:
        client = await open_raw_socket(port_of(relay), deflate=True)
        assert client.status == 101
        assert "permessage-deflate" in client.headers.get("sec-websocket-extensions", "")
        await client.aclose()
    assert made


async def test_a_start_in_fragments_is_one_message_and_an_empty_binary_frame_is_ignored() -> None:
    async with running_relay() as relay:
        client = await open_raw_socket(port_of(relay))
        await client.stream.send_all(client_frame(b'{"type":', 0x1, fin=False) + client_frame(b'"st', 0x0, fin=False)
                                     + client_frame(b'art"}', 0x0))
        await until_type(client, "ready")
        await client.stream.send_all(client_frame(b"", 0x2) + client_frame(b'{"type":"stop"}'))
        assert (await until_type(client, "ended"))["reason"] == "client_stop"
        await client.aclose()


async def test_a_ping_is_answered_with_its_pong() -> None:
    async with running_relay() as relay:
        client = await open_raw_socket(port_of(relay))
        await client.stream.send_all(client_frame(b"are you there", 0x9))
        with trio.fail_after(10):
            assert await client.receive_frame() == (0xA, b"are you there")
        await client.aclose()


@pytest.mark.parametrize(("first", "code"), [(client_frame(b'{"type":"text","text":"\xff"}'), 1007),
                                             (client_frame(b"x", 0x3), 1002),
                                             (client_frame(b"{}", 0x1, rsv1=True), 1002)])
async def test_a_bad_frame_is_closed_with_its_code_before_anything_upstream(first: bytes, code: int) -> None:
    async with running_relay() as relay:
        client = await open_raw_socket(port_of(relay))
        await client.stream.send_all(first)
        with trio.fail_after(10):
            assert await client.close_code() == code
        await client.aclose()
        assert (await relay.ledger("elevenlabs"))["conversations"] == []


async def test_the_start_and_later_messages_have_their_own_bounds() -> None:
    async with running_relay(relay_max_start_bytes=4096, relay_max_frame_bytes=65536) as relay:
        client = await open_raw_socket(port_of(relay))
        await client.stream.send_all(client_frame(b" " * 5000))  # over the start's bound: 1009 before any token
        with trio.fail_after(10):
            assert await client.close_code() == 1009
        await client.aclose()

        client = await open_raw_socket(port_of(relay))
        await client.stream.send_all(client_frame(b'{"type":"start"}'))
        await until_type(client, "ready")
        await client.stream.send_all(client_frame(bytes(32000), 0x2))  # within the later bound: audio
        await client.stream.send_all(client_frame(bytes(70000), 0x2))  # over it
        with trio.fail_after(10):
            assert await client.close_code() == 1009
        await client.aclose()
        await relay.wait_all_sessions_stopped("heygen")


async def test_a_browser_closing_with_its_code_is_told_apart_from_a_drop_while_nothing_reads() -> None:
    # The avatar takes a minute to start: nothing reads the socket; the browser's close frame still ends it at once.
    async with running_relay(relay_setup_timeout=120.0, relay_avatar_connect_timeout=120.0) as relay:
        await relay.faults("heygen", latency_ms={"streaming.new": 60_000})
        client = await open_raw_socket(port_of(relay))
        await client.stream.send_all(client_frame(b'{"type":"start"}'))
        await relay.wait_for_ledger("elevenlabs", lambda ledger: len(ledger["conversations"]) == 1,
                                    "the agent's conversation opened while the avatar starts")
        await client.stream.send_all(client_frame(struct.pack("!H", 1000), 0x8))
        with trio.fail_after(10):
            assert await client.close_code() == 1000  # the relay answers the browser's close
        await relay.wait_for_ledger(
            "elevenlabs", lambda ledger: ledger["conversations"][0]["closed_at"] is not None,
            "the agent's conversation closed although the avatar has not answered streaming.new")
        await client.aclose()


async def test_a_host_the_relay_does_not_answer_to_is_refused_before_the_upgrade() -> None:
    async with running_relay(relay_allowed_hosts="relay.example") as relay:
        client = await open_raw_socket(port_of(relay), host="attacker.example")
        assert client.status == 403
        await client.aclose()


async def test_http_on_the_same_port_is_hypercorns_whole_or_in_pieces() -> None:
    async with running_relay() as relay:
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(relay))
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        for byte in request:  # the head one byte at a time, then a second request on the same connection
            await stream.send_all(bytes([byte]))
        await stream.send_all(request)
        answer = b""
        with trio.fail_after(10):
            while answer.count(b"HTTP/1.1 200") < 2:
                answer += await stream.receive_some(65536)
        assert b"server: hypercorn" in answer.lower()
        await stream.aclose()


async def test_a_head_that_never_ends_is_closed_after_the_keep_alive_time() -> None:
    async with running_relay(keep_alive_timeout=0.5) as relay:
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(relay))
        await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and nothing more
        with trio.fail_after(10):
            assert await stream.receive_some(65536) == b""
        await stream.aclose()
