"""`/ws` on hypercorn's ASGI callables (relay.server.asgi_ws), with fake `receive`/`send` and no sockets: the same
answers quart's websocket gave the handler (refusals as plain HTTP, implicit accept, an empty binary frame as None,
close 1000 after a handler returns, 500 / close 1000 after an exception), the browser leaving cancelling the handler
while nothing reads, and the front routing only `/ws` upgrades past Quart. Over real sockets it is the whole e2e and
fault suite."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from relay.server.asgi_ws import ASGIWebSocket, WebSocketFront, departed, route_path, serve_websocket
from relay.server.departures import browser_left, left_cleanly


def scope_of(**extra: Any) -> dict[str, Any]:
    return {"type": "websocket", "path": "/ws", "root_path": "", "query_string": b"token=abc&token=second&x=",
            "headers": [(b"Origin", b"https://a.example"), (b"origin", b"https://b.example"),
                        (b"host", b"relay.example"), (b"sec-websocket-extensions", b"permessage-deflate")],
            "client": ("10.0.0.7", 5555), "extensions": {"websocket.http.response": {}}, **extra}


class Peer:
    """hypercorn's side: a queue of messages for the app, and what the app sent."""

    def __init__(self, *inbox: dict[str, Any]) -> None:
        self.to_app, self._from_server = trio.open_memory_channel[dict[str, Any]](100)
        for message in inbox:
            self.to_app.send_nowait(message)
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return await self._from_server.receive()

    async def send(self, message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(message)

    def types(self) -> list[str]:
        return [m["type"] for m in self.sent]


def test_the_handshake_reads_first_values_case_insensitively_and_the_peer_address() -> None:
    socket = ASGIWebSocket(scope_of(), Peer().receive, Peer().send, 5.0)
    assert socket.headers.get("Origin") == "https://a.example"
    assert socket.headers.get("host") == "relay.example"
    assert socket.headers.get("x-forwarded-for") is None
    assert socket.args.get("token") == "abc" and socket.args.get("x") == "" and socket.args.get("y") is None
    assert socket.remote_addr == "10.0.0.7"
    assert ASGIWebSocket({"type": "websocket"}, Peer().receive, Peer().send, 5.0).remote_addr == "<local>"
    assert socket.send == socket.send_whole  # the browser offered permessage-deflate
    plain = ASGIWebSocket(scope_of(headers=[]), Peer().receive, Peer().send, 5.0)
    assert plain.send != plain.send_whole


def test_the_route_is_read_below_the_mount_point() -> None:
    assert route_path({"path": "/ws"}) == "/ws"
    assert route_path({"path": "/relay/ws", "root_path": "/relay"}) == "/ws"
    assert route_path({"path": "/relay", "root_path": "/relay"}) == "/"


async def test_only_a_websocket_for_the_path_goes_past_quart() -> None:
    reached: list[str] = []

    async def quart(scope: Any, receive: Any, send: Any) -> None:
        reached.append("quart " + scope["type"] + " " + scope["path"])

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        reached.append("raw " + scope["path"])

    front = WebSocketFront(quart, "/ws", raw)
    peer = Peer()
    for scope in ({"type": "websocket", "path": "/ws"}, {"type": "http", "path": "/ws"},
                  {"type": "websocket", "path": "/ws/"}, {"type": "lifespan", "path": ""}):
        await front(scope, peer.receive, peer.send)
    assert reached == ["raw /ws", "quart http /ws", "quart websocket /ws/", "quart lifespan "]


async def test_a_refusal_is_a_plain_http_answer_before_accepting() -> None:
    peer = Peer()
    socket = ASGIWebSocket(scope_of(), peer.receive, peer.send, 5.0)
    await socket.refuse(403)
    assert peer.sent[0]["type"] == "websocket.http.response.start" and peer.sent[0]["status"] == 403
    assert peer.sent[1] == {"type": "websocket.http.response.body", "body": b"403 Forbidden\n", "more_body": False}
    assert socket.closed and not socket.accepted


async def test_frames_in_order_an_empty_binary_frame_is_none_and_the_first_receive_accepts() -> None:
    peer = Peer({"type": "websocket.connect"}, {"type": "websocket.receive", "text": '{"type":"start"}'},
                {"type": "websocket.receive", "bytes": b"\x01\x02", "text": None},
                {"type": "websocket.receive", "bytes": b"", "text": None})
    socket = ASGIWebSocket(scope_of(), peer.receive, peer.send, 5.0)
    assert await socket.receive() == '{"type":"start"}'
    assert await socket.receive() == b"\x01\x02"
    assert await socket.receive() is None
    assert peer.sent == [{"type": "websocket.accept", "subprotocol": None, "headers": []}]


async def test_text_and_binary_frames_and_the_close_go_out_as_asgi_messages() -> None:
    peer = Peer()
    socket = ASGIWebSocket(scope_of(headers=[]), peer.receive, peer.send, 5.0)
    await socket.accept("relay")
    await socket.send('{"type":"ready"}')
    await socket.send(b"\x00\x00")
    await socket.close(4000, "protocol_error")
    assert peer.sent == [{"type": "websocket.accept", "subprotocol": "relay", "headers": []},
                         {"type": "websocket.send", "text": '{"type":"ready"}'},
                         {"type": "websocket.send", "bytes": b"\x00\x00"},
                         {"type": "websocket.close", "code": 4000, "reason": "protocol_error"}]
    with pytest.raises(RuntimeError):
        await socket.close(1000)


async def test_a_handler_that_returns_leaves_the_socket_closed_1000_and_one_that_closed_is_left_alone() -> None:
    peer = Peer()

    async def greets(socket: ASGIWebSocket) -> None:
        await socket.send("hello")

    await serve_websocket(scope_of(headers=[]), peer.receive, peer.send, 5.0, greets)
    assert peer.types() == ["websocket.accept", "websocket.send", "websocket.close"]
    assert peer.sent[-1]["code"] == 1000
    closes = Peer()

    async def closes_itself(socket: ASGIWebSocket) -> None:
        await socket.send("bye")
        await socket.close(1008, "unauthorized")

    await serve_websocket(scope_of(headers=[]), closes.receive, closes.send, 5.0, closes_itself)
    assert [m.get("code") for m in closes.sent if m["type"] == "websocket.close"] == [1008]


async def test_a_handler_that_fails_is_logged_and_answered_500_before_accepting_or_closed_1000_after(
        caplog: pytest.LogCaptureFixture) -> None:
    early, late = Peer(), Peer()

    async def fails_early(socket: ASGIWebSocket) -> None:
        raise ValueError("boom")

    async def fails_late(socket: ASGIWebSocket) -> None:
        await socket.send("x")
        raise ValueError("boom")

    await serve_websocket(scope_of(), early.receive, early.send, 5.0, fails_early)
    await serve_websocket(scope_of(), late.receive, late.send, 5.0, fails_late)
    assert early.sent[0]["status"] == 500 and not any(m["type"] == "websocket.accept" for m in early.sent)
    assert late.sent[-1] == {"type": "websocket.close", "code": 1000, "reason": ""}
    assert sum("internal error on the browser's socket /ws" in r.getMessage() for r in caplog.records) == 2


async def test_the_browser_leaving_cancels_the_handler_although_nothing_reads() -> None:
    peer = Peer({"type": "websocket.connect"})
    scope = scope_of()
    seen: list[bool] = []

    async def sets_up(socket: ASGIWebSocket) -> None:
        left = browser_left(socket.scope)
        try:
            await trio.sleep_forever()  # e.g. an avatar's set-up: nobody reads the socket
        finally:
            seen.append(left())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_websocket, scope, peer.receive, peer.send, 5.0, sets_up)
            await trio.testing.wait_all_tasks_blocked()
            departed(scope, 1006)  # what hypercorn's stream does as the connection closes (install_departure_notice)
    assert seen == [True]
    assert left_cleanly(scope)() is False
    assert not any(m["type"] == "websocket.close" for m in peer.sent)  # nothing is sent on a socket known gone


async def test_a_disconnect_read_by_the_handler_cancels_it_and_keeps_the_close_code() -> None:
    peer = Peer({"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000})
    scope = scope_of()
    after: list[str] = []

    async def reads(socket: ASGIWebSocket) -> None:
        await socket.receive()
        after.append("returned")  # never: the departure cancels the handler

    with trio.fail_after(5):
        await serve_websocket(scope, peer.receive, peer.send, 5.0, reads)
    assert after == [] and left_cleanly(scope)() is True
