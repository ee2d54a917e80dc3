"""Agent audio to the browser through a `BrowserLink`: neither numbered nor replayed, so it goes out without the
send lock's trip through the scheduler or a time-out scope, yet never overtakes a resume's replay, never reaches a
connection a resume replaced, and never raises when the connection fails (the conversation is held instead)."""

from __future__ import annotations

import orjson
import trio
import trio.testing

from relay.conversation.link import BrowserLink

PCM = b"\x01\x00" * 1600


class RecordingSocket:
    """A connection that records what is written to it; its sends wait while `open` is not set (a browser behind on
    reading), and fail once `broken` is set."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.open = trio.Event()
        self.open.set()
        self.stalled = trio.Event()
        self.broken = False

    async def receive(self) -> str | bytes | None:
        await trio.sleep_forever()

    async def send(self, data: str | bytes) -> None:
        if self.broken:
            raise trio.BrokenResourceError("the browser's connection broke")
        if not self.open.is_set():
            self.stalled.set()
            await self.open.wait()
        self.sent.append(data)

    async def close(self, code: int, reason: str = "") -> None:
        pass

    def kinds(self) -> list[str]:
        return ["audio" if isinstance(frame, bytes) else orjson.loads(frame)["type"] for frame in self.sent]


async def started_link(socket: RecordingSocket) -> BrowserLink:
    link = BrowserLink(window=20, send_timeout=5, issue_token=lambda: "token")
    link.attach_first(socket)
    await link.send('{"type":"ready","conversation_id":"c1"}')
    return link


async def test_audio_goes_out_without_a_trip_through_the_scheduler() -> None:
    """The fast path: a frame of audio to a socket that writes without waiting lets no other task run (the old path
    parked in the send lock on every frame, audio included)."""
    socket = RecordingSocket()
    link = await started_link(socket)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await trio.lowlevel.checkpoint()
        before = ticks
        for _ in range(10):
            await link.send(PCM)
        assert ticks == before
        nursery.cancel_scope.cancel()
    assert socket.kinds() == ["ready"] + ["audio"] * 10


async def test_audio_during_a_take_over_follows_the_replay_on_the_new_connection() -> None:
    """Audio sent while a resume replays to the new connection waits for the replay and goes to the new connection;
    none reaches the replaced one after the swap."""
    old = RecordingSocket()
    link = await started_link(old)
    await link.send('{"type":"agent_response","text":"hello"}')
    await link.send(PCM)
    new = RecordingSocket()
    new.open = trio.Event()  # the new connection is slow: the replay is under way while audio comes
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.take_over, new, 0, lambda token, seq: orjson.dumps(
                {"type": "resumed", "resume_token": token, "seq": seq}).decode())
            await new.stalled.wait()
            nursery.start_soon(link.send, PCM)
            await trio.testing.wait_all_tasks_blocked()
            new.open.set()
    assert old.kinds() == ["ready", "agent_response", "audio"]
    assert new.kinds() == ["resumed", "agent_response", "audio"]


async def test_audio_to_a_broken_connection_holds_the_conversation_and_later_audio_is_dropped() -> None:
    socket = RecordingSocket()
    link = await started_link(socket)
    socket.broken = True
    await link.send(PCM)  # does not raise
    assert link.held
    socket.broken = False
    await link.send(PCM)
    await link.send('{"type":"agent_response","text":"kept for the resume"}')
    assert socket.kinds() == ["ready"]
    assert [numbered.seq for numbered in link.buffer.since(0)] == [1]


class WriteThroughSocket(RecordingSocket):
    """A connection that can write at once while `ready` (the direct socket's `ready_to_send`/`send_nowait`)."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = True
        self.writes = 0

    def ready_to_send(self) -> bool:
        return self.ready

    def send_nowait(self, *frames: str | bytes) -> bool:
        assert self.ready
        self.sent.extend(frames)
        self.writes += 1
        return True


async def test_a_json_message_written_at_once_is_numbered_and_kept_like_any_other() -> None:
    socket = WriteThroughSocket()
    link = await started_link(socket)
    assert link.send_nowait('{"type":"agent_response","text":"hi"}')
    assert orjson.loads(socket.sent[-1])["seq"] == link.buffer.last_seq == link.buffer.last_written
    socket.ready = False  # a send is under way on the connection: nothing is numbered, the Outbox queues it
    last = link.buffer.last_seq
    assert not link.send_nowait('{"type":"agent_response","text":"later"}')
    assert link.buffer.last_seq == last
    socket.ready = True
    link.buffer.push('{"type":"agent_response","text":"cancelled before it was written"}')
    assert not link.send_nowait('{"type":"agent_response","text":"after"}')  # the unwritten one goes first (`send`)
    assert [frame["seq"] for frame in map(orjson.loads, socket.sent[1:])] == [1]


async def test_nothing_is_written_at_once_while_a_take_over_holds_the_link() -> None:
    old = WriteThroughSocket()
    link = await started_link(old)
    async with link._send_lock:
        assert not link.send_nowait(PCM)
        assert not link.send_nowait('{"type":"agent_response","text":"x"}')
    assert link.send_nowait(PCM)


async def test_a_caption_and_its_audio_go_out_in_one_write_the_caption_numbered() -> None:
    socket = WriteThroughSocket()
    link = await started_link(socket)
    before, writes = len(socket.sent), socket.writes
    caption = '{"type":"agent_alignment","turn":1,"words":[]}'
    assert link.send_nowait(caption, PCM)
    assert socket.writes == writes + 1
    assert socket.sent[before + 1] == PCM
    assert orjson.loads(socket.sent[before])["seq"] == link.buffer.last_seq == link.buffer.last_written
    link.buffer.push('{"type":"agent_response","text":"cancelled before it was written"}')
    last = link.buffer.last_seq
    assert not link.send_nowait(caption, PCM)  # the unwritten one goes first (`send`): nothing numbered, no write
    assert link.buffer.last_seq == last and socket.writes == writes + 1
