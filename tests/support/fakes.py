"""In-memory stand-ins for the browser socket, the agent connection and an avatar provider, and the harness that
runs one conversation between them.

They let the conversation nursery run in tests with no sockets at all. Each fake records what the relay did to it.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

from relay.avatars import AvatarInfo, AvatarSpeaking, AvatarUnavailable, OnAvatarEvent, OnSessionCreated, OnStopFailed
from relay.config import Settings
from relay.conversation.record import ConversationRecord
from relay.nursery import ConversationHooks, Grant, Upstreams, run_conversation
from relay.protocol import elevenlabs as el
from relay.protocol.audio import AudioFormat


class FakeBrowser:
    """The browser side: the test pushes frames in with `send_*` and reads what the relay sent."""

    def __init__(self) -> None:
        self._to_relay_tx, self._to_relay_rx = trio.open_memory_channel[str | bytes | None](100)
        self._from_relay_tx, self._from_relay_rx = trio.open_memory_channel[str | bytes](1000)
        self.closed_with: tuple[int, str] | None = None
        self.stalled = False  # set by `stall()`: every send blocks from then on
        self.send_blocked = trio.Event()  # set when a stalled send starts blocking
        self.breaks_when_cancelled = False  # a blocked send that is cancelled fails as a dead socket's would

    # relay-facing
    async def receive(self) -> str | bytes | None:
        return await self._to_relay_rx.receive()

    async def send(self, data: str | bytes) -> None:
        if self.closed_with is not None:
            raise RuntimeError("send after close")
        if self.stalled:
            self.send_blocked.set()
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                if self.breaks_when_cancelled:
                    raise ConnectionResetError("the browser's socket is gone") from None
                raise
        await self._from_relay_tx.send(data)

    async def close(self, code: int, reason: str = "") -> None:
        self.closed_with = (code, reason)

    # test-facing
    def stall(self) -> None:
        """The browser stops reading: from now on every send by the relay blocks (until cancelled)."""
        self.stalled = True

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
        self.open_calls = 0
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
        self.open_calls += 1
        await trio.sleep(self.connect_delay)
        if self.refuse is not None:
            raise self.refuse
        self.initiation = orjson.loads(initiation)
        self.opened = True
        try:
            yield self
        finally:
            self.closed = True


class FakeLiteSocket:
    """The LITE audio socket a `LiteAudioStream` writes to: records the frames sent (parsed); `gate` (when set) holds
    every send until opened, like a peer that reads slowly."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.writes: list[list[str]] = []  # the frames' types, one list per write
        self.gate: trio.Event | None = None

    async def send_text(self, message: str) -> None:
        await self.send_texts([message])

    async def send_texts(self, messages: Sequence[str]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        frames = [orjson.loads(message) for message in messages]
        self.sent += frames
        self.writes.append([frame["type"] for frame in frames])


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
    speech_started: trio.Event = field(default_factory=trio.Event)  # set when the first speak_* call begins
    connected: trio.Event = field(default_factory=trio.Event)  # the avatar's `connected`; set at once unless withheld
    listening: list[bool] = field(default_factory=list)  # set_listening calls, in order

    async def speak_text(self, text: str, turn: int) -> None:
        self.speech_started.set()
        await trio.sleep(self.speak_delay)
        self.spoken.append((text, turn))
        self.on_event(AvatarSpeaking(text, 50 * len(text), turn))

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None:
        self.speech_started.set()
        await self.connected.wait()  # like the LITE socket: held until the avatar says `connected`
        await trio.sleep(self.speak_delay)
        self.audio.append((audio, turn))

    async def end_turn(self, turn: int) -> None:
        self.turn_ends.append(turn)

    async def interrupt(self, turn: int) -> None:
        self.interrupts.append(turn)

    async def keep_alive(self) -> None:
        self.keep_alives += 1

    async def wait_connected(self) -> None:
        await self.connected.wait()

    async def set_listening(self, listening: bool) -> None:
        self.listening.append(listening)


class FakeProvider:
    """Opens FakeSessions and keeps a ledger: every session opened must end up stopped.

    Stopping is a real awaited step (a checkpoint, and `stop_delay` seconds), recorded in `stopped` only once
    it has finished; like the real providers, the fake shields it from cancellation (`shield_stop`). With the shield
    off, a stop that runs in a cancelled scope (the browser left) is lost and never recorded. That the *real*
    providers shield their stop is for their own tests (tests/e2e/test_*_provider.py): here the conversation can
    only show that it leaves the session's context on every path and lets the stop finish."""

    name = "fake"

    def __init__(self, *, takes_audio: bool = False, open_delay: float = 0.0, refuse: AvatarUnavailable | None = None,
                 simulated: bool = False, keep_alive_interval: float = 60.0, stop_delay: float = 0.0,
                 shield_stop: bool = True, withhold_connected: bool = False,
                 session_seconds: float | None = None) -> None:
        self.takes_audio = takes_audio
        self.session_seconds = session_seconds  # what the provider says each session was granted
        self.withhold_connected = withhold_connected
        self.open_delay = open_delay
        self.refuse = refuse
        self.simulated = simulated
        self.keep_alive_interval = keep_alive_interval
        self.stop_delay = stop_delay
        self.shield_stop = shield_stop
        self.open_calls = 0
        self.sessions: list[FakeSession] = []
        self.stopped: list[str] = []
        self.kill: trio.CancelScope | None = None

    @asynccontextmanager
    async def open_session(self, on_event: OnAvatarEvent, *, on_created: OnSessionCreated | None = None,
                           on_stop_failed: OnStopFailed | None = None) -> AsyncIterator[FakeSession]:
        self.open_calls += 1
        await trio.sleep(self.open_delay)
        if self.refuse is not None:
            raise self.refuse
        sid = f"s{len(self.sessions) + 1}"
        if on_created is not None:
            await on_created(sid)
        session = FakeSession(AvatarInfo("fake", sid, "wss://room.example", "tok", self.simulated,
                                         self.session_seconds),
                              self.takes_audio, self.keep_alive_interval, on_event)
        if not self.withhold_connected:
            session.connected.set()
        self.sessions.append(session)
        try:
            yield session
        finally:
            with trio.CancelScope(shield=self.shield_stop):
                await trio.sleep(self.stop_delay)
                self.stopped.append(sid)


# ---------------------------------------------------------------------------------------------------------------
# The harness: one conversation between the fakes.


def make_settings(**overrides: Any) -> Settings:
    """Settings from the defaults and `overrides` only (no environment file)."""
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def metadata(input_format: str = "pcm_16000", output_format: str = "pcm_16000") -> el.ConversationMetadata:
    """The agent's `conversation_initiation_metadata` with the given audio formats."""
    return el.ConversationMetadata("conv_test", output_format, input_format)


class Harness:
    """One conversation between a FakeBrowser, a FakeAgent and a FakeProvider. `cancel_scope` is what quart-trio
    cancels when the browser disconnects, `shutdown_scope` the registry's drain; `ended` is the record `on_end`
    got (also set when the browser left and `run_conversation` returned nothing)."""

    def __init__(self, *, provider: FakeProvider | None = None, agent: FakeAgent | None = None,
                 grant: Grant | None = None, **settings: Any) -> None:
        self.browser = FakeBrowser()
        self.agent = agent or FakeAgent(metadata())
        self.provider = provider if provider is not None else FakeProvider()
        self.settings = make_settings(**settings)
        self.grant = grant
        self.record: ConversationRecord | None = None
        self.ended: ConversationRecord | None = None
        self.cancel_scope = trio.CancelScope()
        self.shutdown_scope = trio.CancelScope()
        self.browser_left: Callable[[], bool] | None = None  # as the web layer passes it (None: not known)
        self.session_limits: dict[str, float] = {}  # the provider's known session limit, by provider name
        self.client_reports: list[Any] = []  # what `on_client_metrics` got: reports taken, and those dropped

    def upstreams(self) -> Upstreams:
        def on_end(record: ConversationRecord) -> None:
            self.ended = record

        return Upstreams(settings=self.settings, http=None, provider=self.provider,  # type: ignore[arg-type]
                         open_agent=self.agent.open,  # type: ignore[arg-type]
                         hooks=ConversationHooks(on_end=on_end, on_client_metrics=lambda _, report:
                                                 self.client_reports.append(report)),
                         session_limits=self.session_limits)

    async def run(self) -> None:
        with self.cancel_scope:
            self.record = await run_conversation(self.browser, self.upstreams(), self.shutdown_scope,
                                                 grant=self.grant, browser_left=self.browser_left)


async def with_conversation(h: Harness, body: Callable[[Harness], Awaitable[None]], *, limit: float = 5) -> None:
    """Run the conversation and `body` (the browser's and the agent's side) together, within `limit` seconds."""
    with trio.fail_after(limit):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.run)
            await body(h)


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds (bounded by the caller's `fail_after`; cheap on the autojump clock)."""
    while not condition():
        await trio.sleep(0.001)


async def start_and_ready(h: Harness, **start: Any) -> dict[str, Any]:
    """Send `start` and return the `ready` message."""
    await h.browser.send_json(type="start", **start)
    return await h.browser.expect("ready")
