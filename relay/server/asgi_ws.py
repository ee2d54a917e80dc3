"""`/ws` on hypercorn's ASGI callables, in front of Quart: a frame goes from hypercorn's queue to the conversation's
`receive`, and from its `send` to hypercorn, with no framework object, task or channel in between
(docs/performance.md, "Round 4").

quart-trio gave every WebSocket a reader task moving each message into a channel for the handler, a signal per message
each way, and an accept check building a `Headers` object on every `receive` and `send`. The relay's `/ws` needed none
of it, only what this module gives `relay.web`'s handler, the same small interface quart's `websocket` gave it:

- `WebSocketFront`: the ASGI app hypercorn calls; a WebSocket for `/ws` goes to the raw handler, everything else
  (the page, the API, the probes, any other WebSocket path: a 404) to Quart, unchanged.
- `ASGIWebSocket`: the upgrade request as the handshake checks read it (`headers`, `args`, `remote_addr`, `scope`),
  `accept(subprotocol)` and `refuse(status)` (a plain HTTP answer before accepting), and the `BrowserSocket` seam
  (`receive`, `send`, `close`; relay.conversation.endings): an empty binary frame reads as None, the first
  `receive`/`send` accepts, as quart's did.
- `serve_websocket`: runs a handler on it as quart-trio did: the browser leaving cancels the handler at once, even
  when nothing is reading (`install_departure_notice`: hypercorn's stream tells the connection as it closes, before
  it queues `websocket.disconnect`); a handler that returns leaves the socket closed 1000; an exception is logged and
  answered 500 before accepting, close 1000 after (quart's answers).

Nothing here decides who may connect (`relay.server.auth`) or knows the browser protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import trio

from relay.conversation.endings import ConversationOver
from relay.server.departures import note_departure, watch_departure

log = logging.getLogger("relay.web")

Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Any, Receive, Send], Awaitable[None]]

_DEPARTURE = "relay.on_departure"


def route_path(scope: Any) -> str:
    """The request's path below the app's mount point (hypercorn's `root_path`), as Quart routes it."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


class WebSocketFront:
    """The ASGI app in front of Quart: a WebSocket upgrade for `path` goes to `handler(scope, receive, send)`,
    everything else to `app`. No task and no await of its own."""

    def __init__(self, app: ASGIApp, path: str, handler: ASGIApp) -> None:
        self.app = app
        self.path = path
        self.handler = handler

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and route_path(scope) == self.path:
            await self.handler(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class Headers:
    """The upgrade request's headers, case-insensitively: `get` gives the first value of a name, `getlist` all."""

    __slots__ = ("_values",)

    def __init__(self, raw: Any) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in raw:
            self._values.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._values.get(name.lower())
        return values[0] if values else default

    def getlist(self, name: str) -> list[str]:
        return list(self._values.get(name.lower(), ()))


class Args:
    """The upgrade request's query parameters: `get` gives a name's first value."""

    __slots__ = ("_values",)

    def __init__(self, query_string: bytes) -> None:
        self._values: dict[str, str] = {}
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            self._values.setdefault(name, value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._values.get(name, default)


class UpgradeRequest:
    """A browser's WebSocket upgrade as the handshake checks read it — `scope` (ASGI-shaped), `headers`, `args`,
    `remote_addr` — and whether the socket has been accepted or closed: what `ASGIWebSocket` (hypercorn's callables)
    and `relay.server.direct_ws.DirectWebSocket` (its own socket) have in common."""

    __slots__ = ("_accepted", "_closed", "args", "headers", "remote_addr", "scope")

    def __init__(self, scope: Any) -> None:
        self.scope = scope
        self.headers = Headers(scope.get("headers", ()))
        self.args = Args(scope.get("query_string", b""))
        client = scope.get("client")
        self.remote_addr: str = client[0] if client else "<local>"
        self._accepted = False
        self._closed = False

    @property
    def accepted(self) -> bool:
        return self._accepted

    @property
    def closed(self) -> bool:
        return self._closed


class ASGIWebSocket(UpgradeRequest):
    """One browser's WebSocket on hypercorn's `receive`/`send`; see the module docstring. `send` is one ASGI send per
    frame (no cancel scope), or `send_whole` when the browser offered permessage-deflate.

    With permessage-deflate, which every browser offers and hypercorn 0.18 always accepts, every send runs to its
    end once started (`send_whole`): wsproto compresses a frame into the connection's shared LZ77 window inside
    hypercorn's `send`, *before* hypercorn takes the socket's send lock and writes it. A send cancelled in between
    (the conversation ending while its outbox sends, the lock held by hypercorn's own pong or close reply) leaves a
    frame compressed but never written, and the browser fails to decompress every later frame (`ended` first): it
    closes with 1002/1007 instead of reading why the conversation ended (docs/reliability.md). Without the
    extension a cancelled send writes nothing at all."""

    __slots__ = ("_asgi_receive", "_asgi_send", "_raw_send", "_send_timeout", "send")

    def __init__(self, scope: Any, receive: Receive, send: Send, send_timeout: float) -> None:
        super().__init__(scope)
        self._asgi_receive = receive
        self._asgi_send = send
        self._send_timeout = send_timeout
        self._raw_send: Callable[[str | bytes], Coroutine[Any, Any, None]] = self._send_frame
        offers = ",".join(self.headers.getlist("sec-websocket-extensions")).lower()
        self.send: Callable[[str | bytes], Coroutine[Any, Any, None]] = (
            self.send_whole if "permessage-deflate" in offers else self._send_frame)

    async def accept(self, subprotocol: str | None = None) -> None:
        """Complete the upgrade (idempotent), naming `subprotocol` when given."""
        if not self._accepted:
            self._accepted = True
            await self._asgi_send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": []})

    async def refuse(self, status: int) -> None:
        """Answer the upgrade with a plain HTTP `status` instead of accepting it (without the ASGI denial-response
        extension, a close before accepting, which servers answer 403)."""
        if "websocket.http.response" not in (self.scope.get("extensions") or {}):
            await self.close(1008)
            return
        body = f"{status} {HTTPStatus(status).phrase}\n".encode()
        await self._asgi_send({"type": "websocket.http.response.start", "status": status,
                               "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                           (b"content-length", str(len(body)).encode())]})
        await self._asgi_send({"type": "websocket.http.response.body", "body": body, "more_body": False})
        self._closed = True

    async def receive(self) -> str | bytes | None:
        """The next message: text as str, binary as bytes (None when empty). Blocks until one arrives; cancelled by
        the caller's scope. When the browser has left it notes the departure (which cancels the handler:
        `serve_websocket`) and waits to be cancelled."""
        if not self._accepted:
            await self.accept()
        while True:
            event = await self._asgi_receive()
            kind = event["type"]
            if kind == "websocket.receive":
                return event.get("bytes") or event.get("text")  # type: ignore[no-any-return]
            if kind == "websocket.disconnect":
                departed(self.scope, event.get("code", 1005))
                await trio.sleep_forever()

    async def _send_frame(self, data: str | bytes) -> None:
        """One frame to the browser: blocks while hypercorn writes it (its write is shielded: see Outbox)."""
        if not self._accepted:
            await self.accept()
        if type(data) is str:
            await self._asgi_send({"type": "websocket.send", "text": data})
        else:
            await self._asgi_send({"type": "websocket.send", "bytes": data})

    async def send_whole(self, data: str | bytes) -> None:
        """Send one frame whole: shielded from the caller's cancellation (which takes effect at the caller's next
        checkpoint, after the frame is written) and bounded by RELAY_SEND_TIMEOUT. A send still waiting for the
        socket after that long may have been compressed already, so nothing more can be sent on this socket but
        its close: the conversation ends (`timeout`, as with the send watchdog). A write that has begun cannot be
        interrupted anyway (hypercorn shields it; TCP_USER_TIMEOUT breaks a stalled one)."""
        with trio.CancelScope(deadline=trio.current_time() + self._send_timeout, shield=True) as scope:
            await self._raw_send(data)
        if scope.cancelled_caught:
            self.send = self._raw_send = _refuse_after_abandoned_send
            raise _abandoned_send()

    async def close(self, code: int, reason: str = "") -> None:
        """Close with `code` (before accepting: hypercorn answers the upgrade 403). Twice is an error, as in quart."""
        if self._closed:
            raise RuntimeError("Cannot close websocket multiple times")
        await self._asgi_send({"type": "websocket.close", "code": code, "reason": reason})
        self._closed = True


def _abandoned_send() -> ConversationOver:
    return ConversationOver.failed("timeout", "the browser stopped reading; conversation ended")


async def _refuse_after_abandoned_send(data: str | bytes) -> None:
    raise _abandoned_send()


def departed(scope: Any, code: int) -> None:
    """The browser of the connection `scope` has left (`code`: its close code as the server knows it): noted for
    `browser_left`/`left_cleanly` (relay.server.departures), then its handler is cancelled. Idempotent."""
    note_departure(scope, code)
    on_departure = scope.get(_DEPARTURE)
    if on_departure is not None:
        on_departure()


async def serve_websocket(scope: Any, receive: Receive, send: Send, send_timeout: float,
                          handler: Callable[[ASGIWebSocket], Awaitable[None]]) -> None:
    """Run `handler` on this connection's `ASGIWebSocket` until it returns, or until the browser leaves (the handler
    is cancelled then, whether or not it is reading). Then, as quart did: a socket accepted and not closed is closed
    1000; an exception from the handler is logged and answered 500 (not accepted yet) or close 1000."""
    socket = ASGIWebSocket(scope, receive, send, send_timeout)
    await run_until_departed(socket, handler, route_path(scope))
    if socket.accepted and not socket.closed:
        await socket.close(1000)


async def run_until_departed(socket: Any, handler: Callable[[Any], Awaitable[None]], path: str) -> None:
    """Run `handler(socket)` until it returns or the browser leaves (`departed` cancels it then, whether or not it
    is reading). An exception from the handler is logged and, before accepting, answered 500 (`socket.refuse`).
    Shared by hypercorn's callables (`serve_websocket`) and the relay's own socket (`relay.server.direct_ws`)."""
    scope = socket.scope
    watch_departure(scope)
    with trio.CancelScope() as gone:
        scope[_DEPARTURE] = gone.cancel
        try:
            await handler(socket)
        except Exception:
            log.exception("internal error on the browser's socket %s", path)
            if not socket.accepted and not socket.closed:
                await socket.refuse(500)


_notice_installed = False


def install_departure_notice() -> None:
    """Make hypercorn's WebSocket stream tell a connection served by `serve_websocket` that its browser left, the
    moment the stream closes (a close frame, a reset, the server's own close), before it queues
    `websocket.disconnect` for the app: quart-trio's reader task noticed it as early, and the relay's handler must
    be cancelled then even while nothing reads the socket (during an avatar's set-up, while a conversation is
    held). The code is hypercorn's: 1000 after a close the app started, 1006 otherwise (the browser's own code,
    when it sent one, was noted first by `relay.server.departures.note_browser_close_codes`). Idempotent; a
    hypercorn without these names keeps the notice at the next `receive` (RuntimeError would be wrong: the
    departure is still seen, only later)."""
    global _notice_installed
    if _notice_installed:
        return
    try:
        from hypercorn.protocol.events import StreamClosed
        from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
    except ImportError:  # pragma: no cover - hypercorn's layout changed
        return
    original = WSStream.handle
    done = {ASGIWebsocketState.HTTPCLOSED, ASGIWebsocketState.CLOSED}

    async def handle(self: Any, event: Any) -> None:
        if isinstance(event, StreamClosed) and not self.closed:
            scope = getattr(self, "scope", None)
            if scope is not None and _DEPARTURE in scope:
                departed(scope, 1000 if self.state in done else 1006)
        await original(self, event)

    WSStream.handle = handle  # type: ignore[method-assign]
    _notice_installed = True
