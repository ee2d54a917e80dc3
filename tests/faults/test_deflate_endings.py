"""Every frame the relay starts to send reaches the browser whole when the browser negotiated permessage-deflate,
as every browser offers it and hypercorn 0.18 always accepts it.

With compression, each frame moves the connection's shared LZ77 window: wsproto compresses a message inside
hypercorn's `send` before hypercorn takes the socket's send lock and writes it. A send cancelled in between (the
conversation's nursery cancelling the outbox's sender at an ending, or the browser leaving) leaves a frame compressed
but never written, and every later frame (the `ended` message first) fails to decompress in the browser: it closes
with 1002 "decompression failed" or 1007 "invalid start byte" instead of reading `ended` (docs/reliability.md).

The clients here are real WebSocket clients (wsproto on a trio socket, offering `permessage-deflate` as browsers do)
that hold short conversations (a typed message, the agent's reply streaming, then an ending) and end them every way:
`stop` mid-reply, `stop` and a close frame at once, a polite close frame mid-reply, vanishing mid-reply, and the agent
hanging up. Every client that stays to read must read `ended` and the relay's close, never a protocol error.
"""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from tests.support.harness import Relay, running_relay

SETTINGS = {"relay_avatar": "none", "relay_stop_timeout": 2.0, "relay_setup_timeout": 5.0,
            "relay_idle_timeout": 10.0, "relay_max_conversations_per_client": 500,
            "relay_max_starts_per_minute": 100_000, "relay_journal": False,
            "relay_resume_window": 1.0,  # resuming on; the vanished ones are held 1 s, not 20
            # hypercorn's path, which accepts permessage-deflate (the direct socket declines it: test_direct_ws.py)
            "relay_direct_websocket": False}
# A fast agent: 20 ms audio frames streamed as soon as a reply starts, no greeting, replies a few seconds long.
AGENT_FAULTS = {"chunk_duration_ms": 5, "response_latency_ms": 0, "first_message": None, "max_reply_s": 2.0,
                "ping_interval_s": 0.5}
BROWSER_KINDS = ("stop", "ping_stop", "stop_close", "close_mid_reply", "vanish_mid_reply")
CONVERSATIONS = 400  # browser endings, plus AGENT_ENDS agent hang-ups
AGENT_ENDS = 80
CONCURRENCY = 16


class ProtocolErrorSeen(Exception):
    """The client's WebSocket reader failed on a frame from the relay (what a browser reports as 1002/1007)."""


class DeflateClient:
    """A browser-like WebSocket client: wsproto over a trio socket, offering permessage-deflate."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.pending: list[Event] = []
        self.audio_frames = 0
        self.kinds: list[str] = []
        self.close: tuple[int, str] | None = None
        self._text = ""

    @classmethod
    async def connect(cls, relay: Relay) -> DeflateClient:
        host, port = relay.url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        ws = WSConnection(ConnectionType.CLIENT)
        client = cls(stream, ws)
        await client._send(Request(host=f"{host}:{port}", target="/ws", extensions=[PerMessageDeflate()]))
        while True:
            event = await client._event()
            if isinstance(event, AcceptConnection):
                assert [e.name for e in event.extensions] == ["permessage-deflate"], event  # type: ignore[union-attr]
                return client
            if isinstance(event, RejectConnection):
                raise AssertionError(f"refused: {event.status_code}")

    async def _send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def _event(self) -> Event:
        while not self.pending:
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    async def message(self) -> dict[str, object] | None:
        """The next message from the relay: a text message parsed, `{}` for a binary one (counted in
        `audio_frames`); None once the relay closed. Raises ProtocolErrorSeen when a frame fails to parse or
        decompress."""
        while True:
            event = await self._event()
            if isinstance(event, BytesMessage):
                if event.message_finished:
                    self.audio_frames += 1
                    return {}
            elif isinstance(event, TextMessage):
                self._text += event.data
                if event.message_finished:
                    text, self._text = self._text, ""
                    message: dict[str, object] = orjson.loads(text)
                    message.pop("seq", None)  # resuming's numbering (tests/e2e/test_resume.py checks it)
                    self.kinds.append(str(message["type"]))
                    return message
            elif isinstance(event, CloseConnection):
                if self.ws.state.name == "OPEN":  # not the relay's close frame: wsproto failed on a frame
                    raise ProtocolErrorSeen(f"{event.code} {event.reason}")
                self.close = (event.code, event.reason or "")
                return None

    async def expect(self, kind: str) -> dict[str, object]:
        while True:
            message = await self.message()
            if message is None:
                raise AssertionError(f"closed before {kind!r}; seen {self.kinds}")
            if message.get("type") == kind:
                return message

    async def send_json(self, **frame: object) -> None:
        await self._send(TextMessage(data=orjson.dumps(frame).decode()))

    async def send_close(self) -> None:
        await self._send(CloseConnection(code=1000))

    async def read_to_close(self) -> None:
        """Read until the relay's close frame (or the TCP connection ends)."""
        try:
            while await self.message() is not None:
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def wait_for_audio(self, frames: int) -> None:
        while self.audio_frames < frames:
            if await self.message() is None:
                raise AssertionError(f"closed before agent audio; seen {self.kinds}")

    async def abort(self) -> None:
        await self.stream.aclose()


async def one_conversation(relay: Relay, kind: str, outcomes: Counter[str]) -> None:
    """A typed message, the agent's reply streaming back, then the `kind` ending. Counts what the client saw."""
    client = await DeflateClient.connect(relay)
    try:
        await client.send_json(type="start")
        await client.expect("ready")
        if kind != "agent_end":
            await client.send_json(type="text", text="hello, tell me something long")
            await client.expect("agent_response")
            await client.wait_for_audio(3)
        if kind == "stop":
            await client.send_json(type="stop")
        elif kind == "ping_stop":  # a keep-alive ping (a proxy's, a library's) crosses the stop: hypercorn's
            await client._send(Ping())  # pong holds the socket's send lock while the relay's outbox sends
            await client.send_json(type="stop")
        elif kind == "stop_close":
            await client.send_json(type="stop")
            await client.send_close()
        elif kind == "close_mid_reply":
            await client.send_close()
        elif kind == "vanish_mid_reply":
            await client.abort()
            outcomes["vanished"] += 1
            return
        await client.read_to_close()
    except ProtocolErrorSeen as exc:
        outcomes[f"protocol error ({kind}): {exc}"] += 1
        return
    finally:
        await client.stream.aclose()
    if kind in ("stop", "ping_stop", "agent_end"):
        # The relay's `ended` (sent before its close) must reach a client that stays to read.
        outcomes["ended" if "ended" in client.kinds else f"no ended ({kind}): {client.kinds[-3:]}"] += 1
    else:
        outcomes["closed"] += 1


async def run_many(relay: Relay, kinds: list[str], outcomes: Counter[str]) -> None:
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def limited(kind: str) -> None:
        async with limiter:
            await one_conversation(relay, kind, outcomes)

    async with trio.open_nursery() as nursery:
        for kind in kinds:
            nursery.start_soon(limited, kind)


def protocol_errors(outcomes: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in outcomes.items() if k not in ("ended", "closed", "vanished")}


@pytest.mark.timeout(90)
async def test_endings_of_every_kind_with_deflate_never_corrupt_a_frame() -> None:
    outcomes: Counter[str] = Counter()
    async with running_relay(**SETTINGS) as relay:
        await relay.faults("elevenlabs", **AGENT_FAULTS)
        with trio.fail_after(75):  # a hang guard: about 20-30 s on a loaded 2-core machine
            await run_many(relay, [BROWSER_KINDS[i % len(BROWSER_KINDS)] for i in range(CONVERSATIONS)], outcomes)
            # The agent hangs up while its greeting streams: the relay's `ended` follows the last audio frames.
            await relay.faults("elevenlabs", first_message="Hello there, this is a fairly long greeting to stream.",
                               close_code=1000, close_after_ms=150)
            await run_many(relay, ["agent_end"] * AGENT_ENDS, outcomes)
    assert protocol_errors(outcomes) == {}, outcomes
    assert outcomes["ended"] == 2 * CONVERSATIONS // len(BROWSER_KINDS) + AGENT_ENDS, outcomes


@pytest.mark.timeout(60)
async def test_a_compressed_conversation_works_end_to_end() -> None:
    """A browser that offers permessage-deflate gets it, and its conversation works: ready, a reply, ended."""
    async with running_relay(**SETTINGS) as relay:
        await relay.faults("elevenlabs", first_message=None)
        with trio.fail_after(30):
            client = await DeflateClient.connect(relay)
            await client.send_json(type="start")
            await client.expect("ready")
            await client.send_json(type="text", text="hello over a compressed socket")
            response = await client.expect("agent_response")
            assert "compressed" in str(response["text"])
            await client.wait_for_audio(2)
            await client.send_json(type="stop")
            ended = await client.expect("ended")
            assert ended == {"type": "ended", "reason": "client_stop"}
            await client.read_to_close()
            assert client.close is not None and client.close[0] == 1000
            await client.abort()

