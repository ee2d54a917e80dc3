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

    async def receive() -> Any:
        await trio.lowlevel.checkpoint()
        return inbox.pop(0)

    async def send(message: Any) -> None:
        await trio.lowlevel.checkpoint()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        left = browser_left(scope)
        assert not left()
        for _ in range(3):
            message = await receive()
            seen.append((message["type"], left()))

    await NoteDepartures(app)({"type": "websocket"}, receive, send)
    assert seen == [("websocket.connect", False), ("websocket.receive", False), ("websocket.disconnect", True)]


async def test_http_passes_through_and_a_scope_not_wrapped_counts_as_left() -> None:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])

    async def nothing() -> Any:
        return {}

    async def ignore(message: Any) -> None:
        return None

    await NoteDepartures(app)({"type": "http"}, nothing, ignore)
    assert calls == ["http"]
    assert browser_left({"type": "websocket"})()
