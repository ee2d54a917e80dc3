"""The Trio floor: the same naive relay as `bench/naive.py`, but with no web framework and no hypercorn — the browser
socket is a `websockets` sans-I/O `ServerProtocol` (C unmasking) on a bare `trio.serve_tcp` stream, the agent socket
`relay.wsclient`, one task per direction and no channel between them. It is a measurement, not a server: it tells
what Trio itself costs per conversation-second, i.e. how much of the relay's CPU a different server layer could
remove (docs/performance.md). HeyGen text mode or LiveAvatar (the LITE socket `relay.wsclient` too, agent audio
resampled to 24 kHz as bench/baseline.py does); no admission, timeouts, validation or clean handling of bad input; a
connection's failure is contained to that connection.

The conversation itself is `bench.naive.converse`, the same code as the naive relay's: only the sockets differ.

`python -m bench.trio_floor --port P --avatar heygen|liveavatar --elevenlabs URL --heygen URL --liveavatar URL`
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import trio
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from bench.naive import Pipe, converse, yardstick_args
from relay.net.wsclient import open_websocket

KEY = {"xi-api-key": "bench-key", "x-api-key": "bench-key"}
MAX_SIZE = 16 * 2**20


class BrowserSocket:
    """The server side of one browser connection: `receive()` reads and parses, `send()` frames and writes."""

    def __init__(self, stream: trio.SocketStream, protocol: ServerProtocol) -> None:
        self.stream, self.protocol = stream, protocol
        self.lock = trio.StrictFIFOLock()
        self.pending: deque[Any] = deque()  # frames parsed from one read, not yet returned

    @classmethod
    async def accept(cls, stream: trio.SocketStream) -> BrowserSocket:
        protocol = ServerProtocol(max_size=MAX_SIZE)
        while True:
            data = await stream.receive_some(65536)
            if not data:
                raise EOFError
            protocol.receive_data(data)
            requests = [e for e in protocol.events_received() if isinstance(e, Request)]
            if requests:
                protocol.send_response(protocol.accept(requests[0]))
                await stream.send_all(b"".join(protocol.data_to_send()))
                return cls(stream, protocol)

    async def receive(self) -> str | bytes:
        while True:
            self.pending.extend(self.protocol.events_received())
            while self.pending:
                frame = self.pending.popleft()
                if frame.opcode is Opcode.TEXT:
                    return frame.data.decode()
                if frame.opcode is Opcode.BINARY:
                    return bytes(frame.data)
                if frame.opcode is Opcode.CLOSE:
                    raise EOFError
            pending = self.protocol.data_to_send()  # pongs
            if pending:
                await self.send_raw(b"".join(pending))
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.protocol.receive_data(data)

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self.protocol.send_text(message.encode())
        else:
            self.protocol.send_binary(message)
        await self.send_raw(b"".join(self.protocol.data_to_send()))

    async def send_raw(self, data: bytes) -> None:
        async with self.lock:
            await self.stream.send_all(data)


@asynccontextmanager
async def open_agent(url: str) -> AsyncIterator[Pipe]:
    async with open_websocket(url, max_message_size=MAX_SIZE) as connection:

        async def send(message: str | bytes) -> None:
            await connection.send_text(message if isinstance(message, str) else message.decode())

        yield Pipe(connection.receive, send)


def handler(elevenlabs: str, heygen: str, http: httpx2.AsyncClient, avatar: str = "heygen",
            liveavatar: str = "") -> Any:
    async def handle(stream: trio.SocketStream) -> None:
        try:
            browser = await BrowserSocket.accept(stream)
            await converse(Pipe(browser.receive, browser.send), open_agent, http, elevenlabs, heygen,
                           avatar=avatar, liveavatar=liveavatar)
            browser.protocol.send_close(1000)
            await browser.send_raw(b"".join(browser.protocol.data_to_send()))
        except EOFError:
            pass  # the browser left (or a port probe connected and closed)
        except Exception as exc:  # contained: one connection's failure never reaches the others
            print(f"connection failed: {exc!r}", flush=True)
        with contextlib.suppress(Exception):
            await stream.aclose()

    return handle


async def serve(port: int, elevenlabs: str, heygen: str, avatar: str = "heygen", liveavatar: str = "") -> None:
    async with httpx2.AsyncClient(timeout=10.0, headers=KEY, limits=httpx2.Limits(
            max_connections=2000, max_keepalive_connections=500)) as http:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=4096)
        await trio.serve_listeners(handler(elevenlabs, heygen, http, avatar, liveavatar), listeners)


def main() -> None:
    args = yardstick_args()
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, args.port, args.elevenlabs, args.heygen, args.avatar, args.liveavatar)


if __name__ == "__main__":
    main()
