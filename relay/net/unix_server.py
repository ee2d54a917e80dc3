"""Serving a private Unix socket (the workers of `serve --workers N` talk to each other through them: merged
`/metrics`, the operator's answers, resume hand-overs)."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path

import trio


async def serve_unix_socket(path: Path, handler: Callable[[trio.SocketStream], Awaitable[None]], *, backlog: int = 16,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve each connection to the Unix socket `path` with `handler(stream)`, each in its own task (`handler` must
    not raise: an exception would end the serving). A file left at `path` by a process that died in the same slot is
    replaced. Blocks until cancelled (the app's nursery, at shutdown); removes the socket file then."""
    with suppress(FileNotFoundError):
        os.unlink(path)  # left by a worker that died in this slot
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(backlog)
    try:
        task_status.started()
        await trio.serve_listeners(handler, [trio.SocketListener(sock)])
    finally:
        with suppress(OSError):
            os.unlink(path)
