"""The Outbox writes frames (audio and JSON) through a socket's `send_nowait` when nothing is queued (no wake-up of its
sender task per frame), and never lets a frame pass one queued or being sent before it."""

from __future__ import annotations

import trio
import trio.testing

from relay.conversation.outbox import Outbox


class WriteThroughSocket:
    """Records frames in the order the browser would get them; `send` waits while `open` is not set; `send_nowait`
    writes at once unless `takes` is False."""

    def __init__(self) -> None:
        self.wire: list[tuple[str, str | bytes]] = []
        self.open = trio.Event()
        self.open.set()
        self.takes = True

    async def receive(self) -> str | bytes | None:
        await trio.sleep_forever()

    async def send(self, data: str | bytes) -> None:
        await self.open.wait()
        self.wire.append(("send", data))

    def send_nowait(self, data: str | bytes) -> bool:
        if self.takes:
            self.wire.append(("nowait", data))
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
