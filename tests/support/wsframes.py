"""Raw client WebSocket frames and sockets for tests that drive a socket byte by byte (stalled, misbehaving or
hostile browsers): frames of any size, compressed or not, finished or not, from any loopback source address."""

from __future__ import annotations

import base64
import os
import struct
import zlib
from typing import Self

import trio


def client_frame(payload: bytes, opcode: int = 0x1, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """One masked client WebSocket frame (RFC 6455 section 5.2); `rsv1` marks a permessage-deflate payload."""
    mask = os.urandom(4)
    length = len(payload)
    header = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    if length < 126:
        header += bytes([0x80 | length])
    elif length < 2**16:
        header += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", length)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (length // 4 + 1))[:length], "big"))
    return header + mask + (masked.to_bytes(length, "big") if length else b"")


def deflated_zeros(size: int) -> bytes:
    """`size` zero bytes compressed as one permessage-deflate message body (RFC 7692: the final empty block's
    0x00 0x00 0xff 0xff left out), made in 1 MiB steps so the test itself never holds `size` bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(2**20)
    parts = []
    for offset in range(0, size, len(chunk)):
        parts.append(compressor.compress(chunk[:size - offset]))
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]


class RawSocket:
    """A client WebSocket over a plain trio stream: the handshake is sent by hand, frames are built by
    `client_frame`, and what the server sends is read frame by frame (uncompressed frames only)."""

    def __init__(self, stream: trio.SocketStream, status: int, headers: dict[str, str], rest: bytes) -> None:
        self.stream = stream
        self.status = status
        self.headers = headers
        self._buffer = bytearray(rest)

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self._buffer += data
        return bool(data)

    async def receive_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the server's next frame, or None once the connection is closed."""
        while True:
            if len(self._buffer) >= 2:
                length = self._buffer[1] & 0x7F
                start = 2
                if length == 126 and len(self._buffer) >= 4:
                    length, start = struct.unpack("!H", self._buffer[2:4])[0], 4
                elif length == 127 and len(self._buffer) >= 10:
                    length, start = struct.unpack("!Q", self._buffer[2:10])[0], 10
                if (self._buffer[1] & 0x7F) < 126 or start > 2:
                    if len(self._buffer) >= start + length:
                        opcode = self._buffer[0] & 0x0F
                        payload = bytes(self._buffer[start:start + length])
                        del self._buffer[:start + length]
                        return opcode, payload
            try:
                if not await self._fill():
                    return None
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None

    async def close_code(self) -> int | None:
        """Read up to the server's close frame; its code (None if the connection ended without one)."""
        while (frame := await self.receive_frame()) is not None:
            opcode, payload = frame
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        return None

    async def aclose(self) -> None:
        await self.stream.aclose()


class FramedClient:
    """A client WebSocket on a bare trio stream whose TCP connection the test controls byte by byte (it can abort
    or reset it at any point, no client library's close handshake): `connect` does the upgrade by hand, `frame`
    reads the server's frames (uncompressed) and raises EOFError once the server closed the TCP connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, url: str, path: str = "/ws") -> Self:
        """Connect to `url` (http://host:port) and upgrade `path`; returns once the server answered 101."""
        host, port = url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        await stream.send_all((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        client = cls(stream)
        while b"\r\n\r\n" not in client.buffer:
            client.buffer += await client._receive()
        head, client.buffer = client.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        return client

    async def _receive(self) -> bytes:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError
        return data

    async def _need(self, n: int) -> None:
        while len(self.buffer) < n:
            self.buffer += await self._receive()

    async def frame(self) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload). Raises EOFError when the server closed the TCP connection."""
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


async def open_raw_socket(port: int, *, source: str = "127.0.0.1", path: str = "/ws", deflate: bool = False,
                          headers: tuple[tuple[str, str], ...] = (), host: str | None = None) -> RawSocket:
    """Connect from `source` (any 127.0.0.0/8 address stands for another client) to the relay on 127.0.0.1:`port`
    and send the upgrade request (offering permessage-deflate with `deflate`); returns once the server's answer
    head has arrived (`status` 101 when accepted)."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if deflate:
        lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    lines += [f"{name}: {value}" for name, value in headers]
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            break
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
    answer = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        answer[name.strip().lower()] = value.strip()
    return RawSocket(stream, status, answer, rest)
