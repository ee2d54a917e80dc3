"""KeepAliveGuard's rule, with fake ASGI callables (no sockets): a disconnect reaches the app unless the app has
already sent its last body message; every other message passes unchanged, and other scopes are untouched."""

from __future__ import annotations

from typing import Any

import trio

from relay.net.http_keepalive import KeepAliveGuard


def disconnecting_receive(messages: list[dict[str, Any]]) -> Any:
    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


async def discard(message: Any) -> None:
    pass


async def test_a_disconnect_during_the_response_reaches_the_app() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((await receive())["type"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        seen.append((await receive())["type"])

    await KeepAliveGuard(app)({"type": "http"}, disconnecting_receive([{"type": "http.request", "body": b""}]),
                              discard)
    assert seen == ["http.request", "http.disconnect"]


async def test_a_disconnect_after_the_last_body_message_is_withheld() -> None:
    withheld = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal withheld
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        with trio.move_on_after(0.2) as waited:
            await receive()
        withheld = waited.cancelled_caught

    await KeepAliveGuard(app)({"type": "http"}, disconnecting_receive([]), discard)
    assert withheld


async def test_websocket_scopes_pass_straight_through() -> None:
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.extend([receive, send])

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    await KeepAliveGuard(app)({"type": "websocket"}, receive, discard)
    assert got == [receive, discard]
