"""`BrowserLink.each_frame`, the conversation's read loop across connections with one cancel scope per connection:
a connection let go while its next frame is awaited stops the wait and the frames come from the next connection; one
let go while a frame is being handled does not interrupt the handling; a frame that arrived as its connection was let
go is still handled; a connection that fails is taken as lost (the conversation held) and the next one read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.testing

from relay.conversation.link import BrowserLink


class FrameSocket:
    """A connection whose `receive` gives what is put in `frames` (waiting while it is empty); `fail` makes the next
    `receive` raise, as a broken connection's does."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tx, self._rx = trio.open_memory_channel[str | bytes | None](100)
        self.fail = False
        self.waiting = 0

    def put(self, frame: str | bytes | None) -> None:
        self._tx.send_nowait(frame)

    async def receive(self) -> str | bytes | None:
        if self.fail:
            raise trio.BrokenResourceError("the browser's connection broke")
        self.waiting += 1
        try:
            return await self._rx.receive()
        finally:
            self.waiting -= 1

    async def send(self, data: str | bytes) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self, code: int, reason: str = "") -> None:
        await trio.lowlevel.checkpoint()


def resumed(token: str, seq: int) -> str:
    return '{"type":"resumed"}'


def recorder() -> tuple[list[str | bytes | None], Callable[[str | bytes | None], Awaitable[None]]]:
    """What `each_frame` handled, in order, and the handler that records it."""
    handled: list[str | bytes | None] = []

    async def handle(frame: str | bytes | None) -> None:
        handled.append(frame)
        await trio.lowlevel.checkpoint()

    return handled, handle


async def started_link(socket: FrameSocket) -> BrowserLink:
    link = BrowserLink(window=20, send_timeout=5, issue_token=lambda: "token")
    link.attach_first(socket)
    await link.send('{"type":"ready","conversation_id":"c1"}')  # from now on the conversation can be resumed
    return link


async def test_a_connection_taken_over_while_a_frame_is_awaited_stops_the_wait() -> None:
    old, new = FrameSocket("old"), FrameSocket("new")
    link = await started_link(old)
    handled, handle = recorder()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.each_frame, handle)
        old.put(b"a")
        await trio.testing.wait_all_tasks_blocked()
        assert handled == [b"a"] and old.waiting == 1
        await link.take_over(new, 0, resumed)
        await trio.testing.wait_all_tasks_blocked()
        assert old.waiting == 0  # the wait on the replaced connection stopped
        old.put(b"stale")  # never read: that connection is gone
        new.put(b"b")
        await trio.testing.wait_all_tasks_blocked()
        assert handled == [b"a", b"b"] and new.waiting == 1
        nursery.cancel_scope.cancel()


async def test_a_connection_let_go_while_a_frame_is_handled_does_not_interrupt_it() -> None:
    old, new = FrameSocket("old"), FrameSocket("new")
    link = await started_link(old)
    handled: list[str | bytes | None] = []
    release = trio.Event()

    async def handle(frame: str | bytes | None) -> None:
        if frame == b"slow":
            await release.wait()  # the agent's socket is full, say
        handled.append(frame)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.each_frame, handle)
        old.put(b"slow")
        old.put(b"after, on the old connection")
        await trio.testing.wait_all_tasks_blocked()
        link.connection_lost(old, clean=False)  # the Outbox's send timed out, say: the conversation is held
        assert link.held
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert handled == [b"slow"]  # handled whole; the old connection is not read again
        await link.take_over(new, 0, resumed)
        new.put("text")
        await trio.testing.wait_all_tasks_blocked()
        assert handled == [b"slow", "text"]
        nursery.cancel_scope.cancel()


async def test_a_frame_that_came_as_its_connection_was_let_go_is_handled() -> None:
    """A receive that returns although its scope was cancelled (a shielded write inside it, e.g. a pong) gives a
    frame: it is handled, outside the let-go connection's scope (so its handling is not cancelled)."""
    link: BrowserLink

    class LateSocket(FrameSocket):
        async def receive(self) -> str | bytes | None:
            frame = await super().receive()
            link.connection_lost(self, clean=False)  # let go while the frame was on its way
            with trio.CancelScope(shield=True):
                await trio.lowlevel.checkpoint()
            return frame

    old, new = LateSocket("old"), FrameSocket("new")
    link = await started_link(old)
    handled: list[str | bytes | None] = []

    async def handle(frame: str | bytes | None) -> None:
        await trio.lowlevel.checkpoint()  # would raise Cancelled inside the let-go connection's scope
        handled.append(frame)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.each_frame, handle)
        old.put(b"late")
        await trio.testing.wait_all_tasks_blocked()
        assert handled == [b"late"] and link.held
        await link.take_over(new, 0, resumed)
        new.put(b"next")
        await trio.testing.wait_all_tasks_blocked()
        assert handled == [b"late", b"next"]
        nursery.cancel_scope.cancel()


async def test_a_connection_that_fails_is_lost_and_the_next_one_read() -> None:
    old, new = FrameSocket("old"), FrameSocket("new")
    link = await started_link(old)
    handled, handle = recorder()

    async with trio.open_nursery() as nursery:
        old.fail = True
        nursery.start_soon(link.each_frame, handle)
        await trio.testing.wait_all_tasks_blocked()
        assert link.held and handled == []
        await link.take_over(new, 0, resumed)
        new.put(None)
        new.put(b"x")
        await trio.testing.wait_all_tasks_blocked()
        assert handled == [None, b"x"]
        nursery.cancel_scope.cancel()
