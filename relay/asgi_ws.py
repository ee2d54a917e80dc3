"""The browser's WebSocket straight on the ASGI server's `receive`/`send` callables, without Quart in between.

Quart-trio gives every WebSocket a reader task that moves each incoming message into a channel for the handler
(one extra task switch per audio frame), plus a signal and accept/close bookkeeping on every message in both
directions. The relay's `/ws` needs none of it, so `relay.web` routes that one path here (docs/performance.md).
What Quart did and the relay relies on is kept: the upgrade can be refused with a plain HTTP status before it is
accepted, an empty binary frame reads as None, and the client leaving cancels the conversation (here: when the
conversation next reads, which the upstream pump does continuously once it is ready).

Nothing here decides who may connect (that is `relay.auth`) or knows the browser protocol (`relay.browser`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import trio

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the upgrade request says, read from the ASGI scope: the first value of each header (names lower-case)
    and of each query parameter, and the peer's address."""

    headers: dict[str, str]
    query: dict[str, str]
    remote_addr: str | None


def read_handshake(scope: dict[str, Any]) -> Handshake:
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        headers.setdefault(name.decode("latin1").lower(), value.decode("latin1"))
    query: dict[str, str] = {}
    for key, value in parse_qsl(scope.get("query_string", b"").decode("latin1"), keep_blank_values=True):
        query.setdefault(key, value)
    client = scope.get("client")
    return Handshake(headers, query, client[0] if client else None)


def scope_path(scope: dict[str, Any]) -> str:
    """The request path below the app's mount point (`root_path`), as Quart would route it."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


async def refuse(scope: dict[str, Any], send: Send, status: int) -> None:
    """Answer the upgrade with a plain HTTP `status` (or, without the ASGI denial-response extension, a close,
    which servers turn into 403)."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "websocket.http.response.body", "body": f"{status}\n".encode(), "more_body": False})
    else:
        await send({"type": "websocket.close", "code": 1008})


class ASGIBrowser:
    """The `BrowserSocket` seam (relay.nursery) over an accepted ASGI WebSocket.

    `receive()` returns the next text (str) or binary (bytes; None when empty) message. When the client has left,
    it cancels `gone` (the scope the web layer runs the conversation in) and raises `trio.Cancelled`: the
    conversation is cancelled exactly as Quart-trio cancels a handler. `send` and `close` go straight to the
    server; after the client left the server drops them."""

    __slots__ = ("_gone", "_left", "_receive", "_send")

    def __init__(self, receive: Receive, send: Send, gone: trio.CancelScope) -> None:
        self._receive = receive
        self._send = send
        self._gone = gone
        self._left = False

    async def receive(self) -> str | bytes | None:
        """Blocks until a message arrives; cancelled by the caller's scope, or (by cancelling `gone`) when the
        client disconnects."""
        while not self._left:
            event = await self._receive()
            kind = event["type"]
            if kind == "websocket.receive":
                return event.get("bytes") or event.get("text")  # type: ignore[no-any-return]
            if kind == "websocket.disconnect":
                self._left = True
        self._gone.cancel()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(self, data: str | bytes) -> None:
        """Blocks while the server's write to the client blocks (see Outbox.watch_sender)."""
        if type(data) is bytes:
            await self._send({"type": "websocket.send", "bytes": data})
        else:
            await self._send({"type": "websocket.send", "text": data})

    async def close(self, code: int, reason: str = "") -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})
