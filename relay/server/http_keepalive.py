"""An ASGI middleware that keeps hypercorn's keep-alive timer working under quart-trio.

With quart-trio 0.12 on hypercorn 0.18's trio worker, an HTTP/1.1 connection that stays open after a request is
never timed out (`keep_alive_timeout` is not enforced) and holds the server's shutdown for its whole grace period.
The cause: when the response's last body message is sent, hypercorn recycles the connection inside that very `send`
— it tells the app `http.disconnect` and then starts the connection's idle timer. quart-trio's reader task sees the
disconnect and cancels the request's nursery, so the task still inside `send` is cancelled while hypercorn is
starting the timer, and the timer never starts. Measured: an idle keep-alive connection stayed open > 8 s with a
5 s keep-alive timeout, and a SIGTERM took 7.35 s instead of 0.2 s (docs/reliability.md).

`KeepAliveGuard` withholds an `http.disconnect` that arrives after the app has sent its last body message (the app
is finishing anyway; the request's nursery ends it), so the recycling `send` completes. Every other message, and a
disconnect that arrives while the response is still under way, reach the app unchanged. WebSocket and lifespan
scopes pass straight through. Install it as Quart's `app.asgi_app` wrapper.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Any, Receive, Send], Awaitable[None]]


class KeepAliveGuard:
    """Wraps an ASGI app; see the module docstring. Adds no task and no await of its own, except that a withheld
    disconnect blocks the app's receive until the app's own scope cancels it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_complete = False

        async def guarded_send(message: Any) -> None:
            nonlocal response_complete
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_complete = True  # before the send: hypercorn recycles the connection inside it
            await send(message)

        async def guarded_receive() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect" and response_complete:
                await trio.sleep_forever()  # cancelled when the request's nursery ends
            return message

        await self.app(scope, guarded_receive, guarded_send)
