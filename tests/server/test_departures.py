"""The ASGI wrapper that notes a browser's departure (relay.server.departures), with a fake ASGI app and no sockets:
`browser_left` turns true exactly when the server delivers `websocket.disconnect`, and HTTP passes through."""

from __future__ import annotations

from typing import Any

import trio

from relay.server.departures import NoteDepartures, browser_left


async def test_browser_left_turns_true_when_the_disconnect_is_delivered_and_not_before() -> None:
    inbox = [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "{}"},
             {"type": "websocket.disconnect", "code": 1001}]
    seen: list[tuple[str, bool]] = []
    sent: list[Any] = []

    async def receive() -> Any:
        await trio.lowlevel.checkpoint()
        return inbox.pop(0)

    async def send(message: Any) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        left = browser_left(scope)
        assert not left()
        for _ in range(3):
            message = await receive()
            seen.append((message["type"], left()))
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})

    await NoteDepartures(app)({"type": "websocket"}, receive, send)
    assert seen == [("websocket.connect", False), ("websocket.receive", False), ("websocket.disconnect", True)]
    assert sent == [{"type": "websocket.accept"}]  # the app's sends reach the server unchanged


async def test_http_passes_through_and_a_scope_not_wrapped_counts_as_left() -> None:
    calls: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])
        calls.append(await receive())
        await send({"type": "http.response.start", "status": 200})

    async def request() -> Any:
        return {"type": "http.request", "body": b""}

    async def respond(message: Any) -> None:
        calls.append(message)

    await NoteDepartures(app)({"type": "http"}, request, respond)
    assert calls == ["http", {"type": "http.request", "body": b""}, {"type": "http.response.start", "status": 200}]
    assert browser_left({"type": "websocket"})()
