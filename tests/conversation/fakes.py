"""In-memory stand-ins for the browser socket, the agent connection and an avatar provider.

They let the conversation nursery run in tests with no sockets at all. Each fake records what the relay did to it.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

from relay.avatars import AvatarInfo, AvatarSpeaking, AvatarUnavailable, OnAvatarEvent, OnSessionCreated, OnStopFailed
from relay.protocol import elevenlabs as el
from relay.protocol.audio import AudioFormat


class FakeBrowser:
    """The browser side: the test pushes frames in with `send_*` and reads what the relay sent."""

    def __init__(self) -> None:
        self._to_relay_tx, self._to_relay_rx = trio.open_memory_channel[str | bytes | None](100)
        self._from_relay_tx, self._from_relay_rx = trio.open_memory_channel[str | bytes](1000)
        self.closed_with: tuple[int, str] | None = None

    # relay-facing
    async def receive(self) -> str | bytes | None:
        return await self._to_relay_rx.receive()

    async def send(self, data: str | bytes) -> None:
        if self.closed_with is not None:
            raise RuntimeError("send after close")
        await self._from_relay_tx.send(data)

    async def close(self, code: int, reason: str = "") -> None:
        self.closed_with = (code, reason)

    # test-facing
    async def send_json(self, **frame: Any) -> None:
        await self._to_relay_tx.send(orjson.dumps(frame).decode())

    async def send_raw(self, frame: str | bytes | None) -> None:
        await self._to_relay_tx.send(frame)

    async def next_message(self, *, skip_binary: bool = True) -> dict[str, Any] | bytes:
        while True:
            frame = await self._from_relay_rx.receive()
            if isinstance(frame, bytes):
                if skip_binary:
                    continue
                return frame
            return orjson.loads(frame)  # type: ignore[no-any-return]

    async def expect(self, kind: str) -> dict[str, Any]:
        """Skip other messages until one of type `kind` arrives."""
        while True:
            msg = await self.next_message()
            assert isinstance(msg, dict)
            if msg["type"] == kind:
                return msg

    def drain(self) -> list[str | bytes]:
        out = []
        while True:
            try:
                out.append(self._from_relay_rx.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return out


class FakeAgent:
    """The ElevenLabs side of one conversation."""

    def __init__(self, metadata: el.ConversationMetadata, *, connect_delay: float = 0.0,
                 refuse: Exception | None = None) -> None:
        self.metadata = metadata
        self.connect_delay = connect_delay
        self.refuse = refuse
        self.sent: list[dict[str, Any]] = []
        self.initiation: dict[str, Any] | None = None
        self._tx, self._rx = trio.open_memory_channel[el.ServerEvent | el.AgentClosed](100)
        self.opened = False
        self.closed = False

    async def send(self, text: str) -> None:
        self.sent.append(orjson.loads(text))

    async def receive(self) -> el.ServerEvent:
        item = await self._rx.receive()
        if isinstance(item, el.AgentClosed):
            raise item
        return item

    async def emit(self, event: el.ServerEvent) -> None:
        await self._tx.send(event)

    async def close_with(self, code: int, reason: str) -> None:
        await self._tx.send(el.AgentClosed(code, reason))

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        if kind == "user_audio_chunk":
            return [m for m in self.sent if "user_audio_chunk" in m]
        return [m for m in self.sent if m.get("type") == kind]

    def audio_sent(self) -> bytes:
        return b"".join(base64.b64decode(m["user_audio_chunk"]) for m in self.sent_of("user_audio_chunk"))

    @asynccontextmanager
    async def open(self, http: Any, *, initiation: str, **_: Any) -> AsyncIterator[FakeAgent]:
        await trio.sleep(self.connect_delay)
        if self.refuse is not None:
            raise self.refuse
        self.initiation = orjson.loads(initiation)
        self.opened = True
        try:
            yield self
        finally:
            self.closed = True


@dataclass
class FakeSession:
    info: AvatarInfo
    takes_audio: bool
    keep_alive_interval: float
    on_event: OnAvatarEvent
    spoken: list[tuple[str, int]] = field(default_factory=list)
    audio: list[tuple[bytes, int]] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)
    interrupts: list[int] = field(default_factory=list)
    keep_alives: int = 0
    speak_delay: float = 0.0

    async def speak_text(self, text: str, turn: int) -> None:
        await trio.sleep(self.speak_delay)
        self.spoken.append((text, turn))
        self.on_event(AvatarSpeaking(text, 50 * len(text)))

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None:
        await trio.sleep(self.speak_delay)
        self.audio.append((audio, turn))

    async def end_turn(self, turn: int) -> None:
        self.turn_ends.append(turn)

    async def interrupt(self, turn: int) -> None:
        self.interrupts.append(turn)

    async def keep_alive(self) -> None:
        self.keep_alives += 1


class FakeProvider:
    """Opens FakeSessions and keeps a ledger: every session opened must end up stopped."""

    name = "fake"

    def __init__(self, *, takes_audio: bool = False, open_delay: float = 0.0, refuse: AvatarUnavailable | None = None,
                 simulated: bool = False, keep_alive_interval: float = 60.0) -> None:
        self.takes_audio = takes_audio
        self.open_delay = open_delay
        self.refuse = refuse
        self.simulated = simulated
        self.keep_alive_interval = keep_alive_interval
        self.sessions: list[FakeSession] = []
        self.stopped: list[str] = []
        self.kill: trio.CancelScope | None = None

    @asynccontextmanager
    async def open_session(self, on_event: OnAvatarEvent, *, on_created: OnSessionCreated | None = None,
                           on_stop_failed: OnStopFailed | None = None) -> AsyncIterator[FakeSession]:
        await trio.sleep(self.open_delay)
        if self.refuse is not None:
            raise self.refuse
        sid = f"s{len(self.sessions) + 1}"
        if on_created is not None:
            await on_created(sid)
        session = FakeSession(AvatarInfo("fake", sid, "wss://room.example", "tok", self.simulated),
                              self.takes_audio, self.keep_alive_interval, on_event)
        self.sessions.append(session)
        try:
            yield session
        finally:
            self.stopped.append(sid)
