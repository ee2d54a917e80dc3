"""An ASGI middleware that keeps hypercorn's keep-alive connections working under quart-trio.

It lives in `relay.net` (network plumbing that knows no service) so that the relay's app (`relay.web`) and every
simulator app install one copy, and the served app imports nothing from the simulators. It imports nothing from the
relay: it is the one relay module the simulators may import (tests/test_layering.py).

With quart-trio 0.12 on hypercorn 0.18's trio worker, when the response's last body message is sent, hypercorn
finishes the HTTP/1.1 cycle inside that very `send`: it tells the app `http.disconnect`, then either recycles the
connection (and starts its idle timer) or, when the request's body has not all arrived yet, closes it. quart-trio's
reader task sees the disconnect and cancels the request's nursery, so the task still inside `send` is cancelled
half-way. Two effects, both measured (docs/reliability.md "HTTP keep-alive"):

- recycled: the idle timer never starts, so `keep_alive_timeout` is not enforced and an idle connection holds the
  server's shutdown for its whole grace period (open > 8 s with a 5 s timeout; a SIGTERM took 7.35 s, not 0.2 s);
- to be closed (the app answered before the body arrived: a 404/405, a handler that ignores the body): the close is
  cancelled, so the connection stays open although it can never be recycled; the late body is swallowed and the
  client's next request on it is parked forever, unanswered (a relay process's LiveAvatar start-up timed out in 9
  of 15 process-test runs against unguarded simulators).

`KeepAliveGuard` withholds an `http.disconnect` that arrives after the app has sent its last body message (the app
is finishing anyway; the request's nursery ends it), so hypercorn's `send` completes. Every other message, and a
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
