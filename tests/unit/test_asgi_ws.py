"""`relay.asgi_ws`: the browser socket on raw ASGI callables, driven with fake receive/send (no sockets)."""

from __future__ import annotations

from typing import Any

import trio

from relay.asgi_ws import ASGIBrowser, read_handshake, refuse, scope_path


def _scope(**extra: Any) -> dict[str, Any]:
    return {"type": "websocket", "path": "/ws", "query_string": b"token=abc&token=second&x=",
            "headers": [(b"Origin", b"https://a.example"), (b"origin", b"https://b.example"),
                        (b"host", b"relay.example")],
            "client": ("10.0.0.7", 5555), **extra}


def test_handshake_takes_the_first_value_of_each_header_and_query_parameter() -> None:
    handshake = read_handshake(_scope())
    assert handshake.headers["origin"] == "https://a.example"
    assert handshake.headers["host"] == "relay.example"
    assert handshake.query == {"token": "abc", "x": ""}
    assert handshake.remote_addr == "10.0.0.7"
    assert read_handshake({"type": "websocket"}).remote_addr is None


def test_path_is_read_below_the_mount_point() -> None:
    assert scope_path({"path": "/ws"}) == "/ws"
    assert scope_path({"path": "/relay/ws", "root_path": "/relay"}) == "/ws"
    assert scope_path({"path": "/relay/ws/x", "root_path": "/relay"}) == "/ws/x"


async def test_refusal_is_a_plain_http_status_when_the_server_supports_it() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await refuse(_scope(extensions={"websocket.http.response": {}}), send, 401)
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 401
    assert sent[1]["type"] == "websocket.http.response.body"
    sent.clear()
    await refuse(_scope(), send, 403)
    assert [m["type"] for m in sent] == ["websocket.close"]


async def test_messages_are_read_in_order_and_an_empty_binary_frame_is_none() -> None:
    events = iter([{"type": "websocket.receive", "text": '{"type":"start"}'},
                   {"type": "websocket.receive", "bytes": b"\x01\x02"},
                   {"type": "websocket.receive", "bytes": b"", "text": None}])

    async def receive() -> dict[str, Any]:
        return next(events)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent")

    browser = ASGIBrowser(receive, send, trio.CancelScope())
    assert await browser.receive() == '{"type":"start"}'
    assert await browser.receive() == b"\x01\x02"
    assert await browser.receive() is None


async def test_the_client_leaving_cancels_the_conversation_scope() -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "websocket.disconnect", "code": 1001}

    async def send(message: dict[str, Any]) -> None:
        pass

    reached_after = False
    with trio.fail_after(1), trio.CancelScope() as gone:
        browser = ASGIBrowser(receive, send, gone)
        await browser.receive()
        reached_after = True
    assert gone.cancelled_caught and not reached_after


async def test_text_and_binary_frames_and_the_close_go_out_as_asgi_messages() -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("nothing is read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    browser = ASGIBrowser(receive, send, trio.CancelScope())
    await browser.send('{"type":"ready"}')
    await browser.send(b"\x00\x00")
    await browser.close(1000, "client_stop")
    assert sent == [{"type": "websocket.send", "text": '{"type":"ready"}'},
                    {"type": "websocket.send", "bytes": b"\x00\x00"},
                    {"type": "websocket.close", "code": 1000, "reason": "client_stop"}]
