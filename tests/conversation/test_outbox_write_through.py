"""The Outbox writes frames (audio and JSON) through a socket's `send_nowait` when nothing is queued (no wake-up of its
sender task per frame), and never lets a frame pass one queued or being sent before it."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.conversation.endings import ConversationOver
from relay.conversation.outbox import Outbox


class WriteThroughSocket:
    """Records frames in the order the browser would get them; `send` waits while `open` is not set; `send_nowait`
    writes at once unless `takes` is False."""

    def __init__(self) -> None:
        self.wire: list[tuple[str, str | bytes]] = []
        self.open = trio.Event()
        self.open.set()
        self.takes = True
        self.writes = 0

    async def receive(self) -> str | bytes | None:
        await trio.sleep_forever()

    async def send(self, data: str | bytes) -> None:
        await self.open.wait()
        self.wire.append(("send", data))

    def send_nowait(self, *frames: str | bytes) -> bool:
        if self.takes:
            self.wire.extend(("nowait", data) for data in frames)
            self.writes += 1
        return self.takes

    async def close(self, code: int, reason: str = "") -> None:
        pass


async def test_audio_goes_through_at_once_when_nothing_waits_and_queues_behind_what_does() -> None:
    outbox, socket = Outbox(), WriteThroughSocket()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run_sender, socket)
        await trio.testing.wait_all_tasks_blocked()
        outbox.send_audio(b"a1")
        assert socket.wire == [("nowait", b"a1")]  # written before this task yielded

        outbox.send('{"type":"user_transcript"}')  # control frames too
        assert socket.wire[-1] == ("nowait", '{"type":"user_transcript"}')

        socket.open, socket.takes = trio.Event(), False  # the browser is behind: a control frame's send waits
        outbox.send('{"type":"agent_response"}')
        await trio.testing.wait_all_tasks_blocked()
        socket.takes = True
        outbox.send_audio(b"a2")  # must not overtake the frame being sent
        socket.open.set()
        await outbox.wait_sent()
        assert socket.wire[1:] == [("nowait", '{"type":"user_transcript"}'), ("send", '{"type":"agent_response"}'),
                                   ("send", b"a2")]

        socket.takes = False  # the socket cannot take it without waiting: queued, sent by the sender task
        outbox.send_audio(b"a3")
        await outbox.wait_sent()
        assert socket.wire[-1] == ("send", b"a3")
        nursery.cancel_scope.cancel()
    outbox.send_audio(b"a4")  # the sender has ended: nothing is written through any more
    assert socket.wire[-1] == ("send", b"a3")


async def test_a_caption_and_its_audio_are_one_write_or_queue_in_order() -> None:
    outbox, socket = Outbox(), WriteThroughSocket()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run_sender, socket)
        await trio.testing.wait_all_tasks_blocked()
        outbox.send_audio(b"a1", '{"type":"agent_alignment","turn":1}')
        assert socket.writes == 1
        assert socket.wire == [("nowait", '{"type":"agent_alignment","turn":1}'), ("nowait", b"a1")]

        socket.takes = False  # the socket cannot take them without waiting: both queued, caption first
        outbox.send_audio(b"a2", '{"type":"agent_alignment","turn":2}')
        await outbox.wait_sent()
        assert socket.wire[2:] == [("send", '{"type":"agent_alignment","turn":2}'), ("send", b"a2")]
        nursery.cancel_scope.cancel()


class StepCount(trio.abc.Instrument):
    """How many steps each task has taken, by name."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1


async def test_the_send_watchdog_sleeps_while_nothing_is_sent_and_ends_a_send_blocked_too_long(
        autojump_clock: trio.testing.MockClock) -> None:
    outbox, socket = Outbox(), WriteThroughSocket()
    steps = StepCount()
    trio.lowlevel.add_instrument(steps)
    watcher = "relay.conversation.outbox.Outbox.watch_sender"
    with pytest.raises(ExceptionGroup) as group:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run_sender, socket)
            nursery.start_soon(outbox.watch_sender, 10.0)
            await trio.testing.wait_all_tasks_blocked()
            idle = steps.steps.get(watcher, 0)
            for _ in range(60):  # ten minutes of frames written through: the watchdog is never woken
                outbox.send_audio(b"a")
                await trio.sleep(10.0)
            assert steps.steps.get(watcher, 0) == idle
            socket.open, socket.takes = trio.Event(), False  # the browser stops reading: a send blocks
            started = trio.current_time()
            outbox.send('{"type":"agent_response"}')
            await trio.sleep_forever()
    over = group.value.exceptions[0]
    assert isinstance(over, ConversationOver) and over.reason == "timeout"
    assert 10.0 <= trio.current_time() - started <= 12.5
    trio.lowlevel.remove_instrument(steps)
