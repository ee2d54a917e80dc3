"""The operator's answers for the whole machine under `serve --workers N`, whichever worker the request reached.

Each worker also answers on a private Unix socket (`admin-<index>.sock` in the supervisor's 0700 directory, beside
the metrics sockets of `relay.server.worker_metrics`): one request line (a JSON object of at most MAX_REQUEST
bytes: `{"op": "list"}`, `{"op": "end", "id": ...}`, `{"op": "sessions"}`), one JSON answer, then the close. The
worker that got the HTTP request asks the others concurrently, each bounded (`ask_workers`); a worker that does not
answer in time is reported as such, never waited for longer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import orjson
import trio

from relay.net.unix_server import serve_unix_socket

log = logging.getLogger("relay.admin")

MAX_REQUEST = 4096
MAX_ANSWER = 16 * 2**20
READ_TIMEOUT = 2.0  # seconds a connection may take to send its request


def admin_socket(directory: str, index: int) -> Path:
    return Path(directory) / f"admin-{index}.sock"


async def serve_admin_socket(path: Path, answer: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer each connection on the Unix socket `path`: read its request line, send `answer(request)`, close.
    Runs until cancelled (the app's nursery, at shutdown); removes the socket file then."""
    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                request = None
                with trio.move_on_after(READ_TIMEOUT):
                    request = await _read_line(stream, MAX_REQUEST)
                if request is None:
                    return
                try:
                    asked = orjson.loads(request)
                except orjson.JSONDecodeError:
                    return
                if isinstance(asked, dict):
                    await stream.send_all(orjson.dumps(await answer(asked)) + b"\n")

    await serve_unix_socket(path, serve, task_status=task_status)


async def _read_line(stream: trio.SocketStream, limit: int) -> bytes | None:
    """Bytes up to the first newline (None past `limit` bytes or at the end without one)."""
    data = bytearray()
    while b"\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk or len(data) + len(chunk) > limit:
            return None
        data += chunk
    return bytes(data.split(b"\n", 1)[0])


async def ask_worker(path: Path, request: dict[str, Any], bound: float) -> dict[str, Any] | None:
    """Another worker's answer to `request`, or None when it does not answer within `bound` seconds (dead or
    restarting)."""
    with trio.move_on_after(bound):
        try:
            async with await trio.open_unix_socket(str(path)) as stream:
                await stream.send_all(orjson.dumps(request) + b"\n")
                line = await _read_line(stream, MAX_ANSWER)
        except (OSError, trio.BrokenResourceError):
            return None
        if line is None:
            return None
        answer = orjson.loads(line)
        return answer if isinstance(answer, dict) else None
    return None


async def ask_workers(directory: str, count: int, own_index: int, request: dict[str, Any],
                      bound: float) -> dict[int, dict[str, Any] | None]:
    """Every other worker's answer by index (None for one that did not answer), asked concurrently."""
    found: dict[int, dict[str, Any] | None] = {}

    async def ask(index: int) -> None:
        found[index] = await ask_worker(admin_socket(directory, index), request, bound)

    async with trio.open_nursery() as nursery:
        for index in range(count):
            if index != own_index:
                nursery.start_soon(ask, index)
    return found
