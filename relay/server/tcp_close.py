"""hypercorn 0.18's trio connection closes its socket's write side without its send lock; this takes the lock.

`TCPServer._close` calls `SocketStream.send_eof()`, which holds the stream's send-conflict detector across a
checkpoint, while `TCPServer.protocol_send` writes under `send_lock`, which `_close` does not take. A write that
starts in that checkpoint — another task's frame, the close frame, a pong — raises `trio.BusyResourceError`
("another task is currently sending data on this SocketStream"), which `protocol_send` does not catch. Raised in the
connection's reader, it leaves hypercorn's per-connection handler, whose nursery is the listener's: **every open
connection on the server is cancelled**, each dropped without a close frame. It was seen with 50 conversations
ending together on the relay's first `/ws` fast path (docs/performance.md, "Round 4"), and the same window exists
under Quart (a close on one task, a send on another).

`serialise_tcp_close()` replaces `_close` with one that shuts the write side down only while holding `send_lock`
(taken without waiting): a write queued behind it then finds the write side shut and fails with
`ClosedResourceError`, which hypercorn handles as a closed connection. When a write holds the lock, `_close` does not
wait for it (a stalled browser would hold it until TCP_USER_TIMEOUT) and closes the socket at once, as hypercorn does
today when `send_eof` finds the stream busy; the write then fails with `ClosedResourceError` too. The offer upstream:
docs/upstream/hypercorn-send-eof-race.md. Idempotent; a hypercorn without these names is left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import trio

_hypercorns_close: Callable[[Any], Coroutine[Any, Any, None]] | None = None


async def close_under_send_lock(server: Any) -> None:
    """`TCPServer._close` with the write side shut down under the connection's send lock (see the module
    docstring). Blocks only on the lock-free `send_eof` checkpoint and `aclose`."""
    lock: trio.Lock = server.send_lock
    if not lock.locked():
        lock.acquire_nowait()
        try:
            await server.stream.send_eof()
        except (trio.BrokenResourceError, AttributeError, trio.BusyResourceError, trio.ClosedResourceError):
            pass  # already gone, or a TLS stream (no half-close)
        finally:
            lock.release()
    await server.stream.aclose()


def serialise_tcp_close() -> None:
    """Install `close_under_send_lock` as hypercorn's trio `TCPServer._close` (once per process)."""
    global _hypercorns_close
    if _hypercorns_close is not None:
        return
    try:
        from hypercorn.trio.tcp_server import TCPServer
    except ImportError:  # pragma: no cover - hypercorn's layout changed
        return
    if not hasattr(TCPServer, "_close"):  # pragma: no cover
        return
    _hypercorns_close = TCPServer._close
    TCPServer._close = close_under_send_lock  # type: ignore[method-assign,assignment]


def hypercorns_close() -> Callable[[Any], Coroutine[Any, Any, None]]:
    """hypercorn's own `TCPServer._close`, whether or not it has been replaced (for the test that watches for the
    day hypercorn fixes it)."""
    from hypercorn.trio.tcp_server import TCPServer

    return _hypercorns_close or TCPServer._close
