"""A browser for the resume tests: a WebSocket client on a bare trio socket whose TCP connection can be *dropped*
(reset, no close frame: what a lost network or a closed laptop lid looks like to the relay), that keeps every JSON
message it read across connections, so a test can check the `seq` run for gaps and duplicates."""

from __future__ import annotations

import base64
import os
import socket
import struct
from typing import Any

import orjson
import trio

from tests.support.wsframes import client_frame


class Connection:
    """One WebSocket connection to the relay's /ws (frames parsed by hand)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(cls, url: str, path: str = "/ws") -> Connection:
        host, port = url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        await stream.send_all((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        connection = cls(stream)
        while b"\r\n\r\n" not in connection.buffer:
            connection.buffer += await connection._receive()
        head, connection.buffer = connection.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        return connection

    async def _receive(self) -> bytes:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError
        return data

    async def _need(self, n: int) -> None:
        while len(self.buffer) < n:
            self.buffer += await self._receive()

    async def frame(self) -> tuple[int, bytes]:
        await self._need(2)
        opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        offset = 2
        if length == 126:
            await self._need(4)
            length, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif length == 127:
            await self._need(10)
            length, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
        await self._need(offset + length)
        payload, self.buffer = self.buffer[offset:offset + length], self.buffer[offset + length:]
        return opcode, payload

    async def send(self, **message: Any) -> None:
        await self.stream.send_all(client_frame(orjson.dumps(message)))

    def drop(self) -> None:
        """Reset the TCP connection (SO_LINGER 0): no close frame, no FIN."""
        self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.stream.socket.close()


class ResumingBrowser:
    """The messages of one conversation, across its connections."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: Connection | None = None
        self.messages: list[dict[str, Any]] = []
        self.audio_frames = 0
        self.close_code: int | None = None

    @property
    def last_seq(self) -> int:
        return max((m["seq"] for m in self.messages if "seq" in m), default=0)

    @property
    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.messages if "seq" in m]

    async def connect(self, path: str = "/ws") -> Connection:
        self.connection = await Connection.open(self.url, path)
        return self.connection

    async def send(self, **message: Any) -> None:
        assert self.connection is not None
        await self.connection.send(**message)

    async def expect(self, kind: str, where: Any = None) -> dict[str, Any]:
        """Read until a message of type `kind` (every message read is kept). Fails on a close."""
        assert self.connection is not None
        while True:
            opcode, payload = await self.connection.frame()
            if opcode == 0x2:
                self.audio_frames += 1
            elif opcode == 0x1:
                message = orjson.loads(payload)
                self.messages.append(message)
                if message["type"] == kind and (where is None or where(message)):
                    return message  # type: ignore[no-any-return]
            elif opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise AssertionError(f"closed ({self.close_code}) before {kind!r}; seen {self.messages[-3:]}")

    async def read_to_close(self) -> int | None:
        """Read (and keep) until the relay's close frame; its code."""
        assert self.connection is not None
        while True:
            opcode, payload = await self.connection.frame()
            if opcode == 0x1:
                self.messages.append(orjson.loads(payload))
            elif opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return self.close_code

    def drop(self) -> None:
        assert self.connection is not None
        self.connection.drop()
        self.connection = None

    async def resume(self, token: str, last_seq: int | None = None, path: str = "/ws") -> dict[str, Any]:
        """A new connection (to `path`) that resumes with `token`; the relay's first answer (`resumed` or `error`)."""
        await self.connect(path)
        await self.send(type="resume", resume_token=token, last_seq=self.last_seq if last_seq is None else last_seq)
        assert self.connection is not None
        while True:
            opcode, payload = await self.connection.frame()
            if opcode == 0x1:
                message: dict[str, Any] = orjson.loads(payload)
                if message["type"] in ("resumed", "error"):
                    return message
                self.messages.append(message)
