"""An ASGI middleware that notes, for each WebSocket connection, when the browser's disconnect arrives.

quart-trio cancels a `/ws` handler both when the browser leaves (its reader task gets `websocket.disconnect`) and
when the server cancels it (hypercorn at the end of its grace period): the handler sees the same `trio.Cancelled`.
The conversation must tell a browser that is still there why it ends, and must not write to a socket known gone, so
it asks `browser_left(websocket.scope)`: true once the server has delivered `websocket.disconnect` for that
connection. The disconnect reaches this wrapper before quart-trio cancels the handler for it. HTTP and lifespan
scopes pass straight through. Install it as Quart's `app.asgi_app` wrapper.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Any, Receive, Send], Awaitable[None]]

_KEY = "relay.browser_left"
_CODE_KEY = "relay.browser_close_code"
_RELAY_CLOSED_KEY = "relay.closed_by_relay"


class NoteDepartures:
    """Wraps an ASGI app; see the module docstring. Adds no task and no await of its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        watch_departure(scope)

        async def receive_noting_departure() -> Any:
            message = await receive()
            if message.get("type") == "websocket.disconnect":
                note_departure(scope, message.get("code", 1005))
            return message

        await self.app(scope, receive_noting_departure, send)


def watch_departure(scope: Any) -> None:
    """Make `browser_left(scope)` a check that `note_departure` turns true (false until then)."""
    scope[_KEY] = trio.Event()


def note_departure(scope: Any, code: int) -> None:
    """The browser of the WebSocket `scope` has left with close `code` (the first code noted stands)."""
    scope.setdefault(_CODE_KEY, code)
    left = scope.get(_KEY)
    if isinstance(left, trio.Event):
        left.set()


def mark_closed_by_relay(scope: Any) -> None:
    """The WebSocket `scope` ended by the relay's own close (its close, or its 1002/1007/1009 for a bad frame): the
    browser was told why, it did not drop (`left_cleanly`)."""
    scope[_RELAY_CLOSED_KEY] = True


def browser_left(scope: Any) -> Callable[[], bool]:
    """For a WebSocket scope served through `NoteDepartures`: a check, true once the browser has disconnected.
    A scope that did not pass through it counts as left (nothing is sent on a socket not known to be there)."""
    left = scope.get(_KEY)
    if not isinstance(left, trio.Event):
        return lambda: True
    return left.is_set


def left_cleanly(scope: Any) -> Callable[[], bool | None]:
    """For a WebSocket scope served through `NoteDepartures`: a check, None while the browser has not left (the
    server cut the connection), True when it left with a close 1000 or after the relay's own close (hypercorn's 1009
    for a frame over RELAY_MAX_FRAME_BYTES: the browser was told why, it did not drop), False when it left any other
    way (1001, 1006: a reset, a lost network)."""
    left = browser_left(scope)

    def check() -> bool | None:
        if not left():
            return None
        return bool(scope.get(_CODE_KEY) == 1000 or scope.get(_RELAY_CLOSED_KEY))

    return check


def note_browser_close_codes() -> None:
    """hypercorn (0.18) tells the app `websocket.disconnect` with code 1006 for every browser-initiated end, a close
    frame 1000 as well as a TCP reset: the browser's own code is lost, and a resumable conversation must tell a
    browser that closed cleanly (ended at once) from one whose network dropped (held). This wraps hypercorn's
    WebSocket stream so that the close frame's code is noted in the connection's scope first (where
    `NoteDepartures` reads it). A close frame that answers the server's own close (hypercorn's 1009 for an oversized
    frame, which the browser echoes or answers with a reset) is noted as the relay's close, not the browser's code:
    the connection was ended on purpose, not dropped. Idempotent; a hypercorn without that method is left alone."""
    try:
        from hypercorn.protocol.ws_stream import WSStream
        from wsproto.connection import ConnectionState
        from wsproto.events import CloseConnection
    except ImportError:  # pragma: no cover - hypercorn's layout changed: codes stay as hypercorn says
        return
    original = getattr(WSStream, "_handle_events", None)
    if original is None or getattr(original, "_relay_notes_close_codes", False):
        return

    async def handle_events(self: Any) -> None:
        pending = list(self.connection.events())  # parsed up to and including a close frame
        for event in pending:
            if isinstance(event, CloseConnection):
                if self.connection.state is ConnectionState.REMOTE_CLOSING:  # the browser closed first
                    self.scope.setdefault(_CODE_KEY, event.code)
                else:  # its answer to a close the server sent first
                    self.scope[_RELAY_CLOSED_KEY] = True
        events = self.connection.events
        self.connection.events = lambda: iter(pending)
        try:
            await original(self)
        finally:
            self.connection.events = events
            if self.connection.state is ConnectionState.LOCAL_CLOSING:  # the server closed it (hypercorn's 1009)
                self.scope[_RELAY_CLOSED_KEY] = True

    handle_events._relay_notes_close_codes = True  # type: ignore[attr-defined]
    WSStream._handle_events = handle_events  # type: ignore[method-assign]
