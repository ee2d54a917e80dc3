"""A browser for the resume tests: a WebSocket client on a bare trio socket whose TCP connection can be *dropped*
(reset, no close frame: what a lost network or a closed laptop lid looks like to the relay), that keeps every JSON
message it read across connections, so a test can check the `seq` run for gaps and duplicates."""

from __future__ import annotations

import socket
import struct
from typing import Any

import orjson

from tests.support.wsframes import FramedClient, client_frame


class Connection(FramedClient):
    """One WebSocket connection to the relay's /ws (frames parsed by hand)."""

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
        self.connection = await Connection.connect(self.url, path)
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
