"""The hand-over between workers (relay.server.handover) over real Unix sockets in one process, with fake browsers
on both sides: frames cross both ways, the browser's way of leaving reaches the holder, the holder's close reaches
the browser, a holder that is not there is `ended`, and a peer that breaks the wire is cut without harm."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from relay.conversation.endings import BrowserSocket
from relay.protocol import browser as bp
from relay.protocol import handover as wire
from relay.protocol.resume import ResumeRefused
from relay.server.handover import relay_resume, serve_handovers

RESUME = bp.Resume(type="resume", resume_token="rt1.r-w0.k.0.m", last_seq=3)


class FakeBrowser:
    """The accepting worker's browser: `inbox` feeds `receive`, what is sent and the close are recorded."""

    def __init__(self) -> None:
        self.to_inbox, self.inbox = trio.open_memory_channel[str | bytes](10)
        self.sent: list[str | bytes] = []
        self.closed: tuple[int, str] | None = None
        self.got = trio.Event()

    async def receive(self) -> str | bytes:
        return await self.inbox.receive()

    async def send(self, data: str | bytes) -> None:
        self.sent.append(data)
        self.got.set()

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)


class Holder:
    """What the holding worker saw of one relayed connection."""

    def __init__(self) -> None:
        self.resume: bp.Resume | None = None
        self.subject: str | None = None
        self.received: list[str | bytes] = []
        self.left: bool | str | None = "not yet"
        self.done = trio.Event()

    async def take_over(self, browser: BrowserSocket, resume: bp.Resume, subject: str | None,
                        left_cleanly: Callable[[], bool | None]) -> None:
        self.resume, self.subject = resume, subject
        try:
            await browser.send('{"type":"resumed"}')
            while True:
                data = await browser.receive()
                assert data is not None
                self.received.append(data)
                if data == "close me":
                    await browser.close(1008, "resume_failed")
                    return
                await browser.send(data)  # echo
        finally:
            self.left = left_cleanly()
            self.done.set()


@pytest.mark.parametrize(("left", "expected"), [(True, True), (False, False), (None, None)])
async def test_frames_cross_both_ways_and_the_way_the_browser_left_reaches_the_holder(
        tmp_path: Path, left: bool | None, expected: bool | None) -> None:
    path = tmp_path / "handover-0.sock"
    holder, browser = Holder(), FakeBrowser()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_handovers, path, holder.take_over, 1024)
        async with trio.open_nursery() as accepting:
            accepting.start_soon(relay_resume, path, browser, RESUME, "alice", lambda: left, 1024)
            await browser.got.wait()
            await browser.to_inbox.send(b"\x01\x02")
            await browser.to_inbox.send("hello")
            with trio.fail_after(5):
                while len(browser.sent) < 3:
                    await trio.sleep(0.01)
            accepting.cancel_scope.cancel()  # the browser's connection ends (the web layer cancels the handler)
        with trio.fail_after(5):
            await holder.done.wait()
        nursery.cancel_scope.cancel()
    assert holder.resume == RESUME and holder.subject == "alice"
    assert browser.sent == ['{"type":"resumed"}', b"\x01\x02", "hello"]
    assert holder.received == [b"\x01\x02", "hello"]
    assert holder.left is expected


async def test_the_holders_close_is_the_browsers_close(tmp_path: Path) -> None:
    path = tmp_path / "handover-0.sock"
    holder, browser = Holder(), FakeBrowser()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_handovers, path, holder.take_over, 1024)
        await browser.to_inbox.send("close me")
        with trio.fail_after(5):
            await relay_resume(path, browser, RESUME, None, lambda: False, 1024)  # returns once closed
        nursery.cancel_scope.cancel()
    assert browser.closed == (1008, "resume_failed")


async def test_a_holder_that_is_not_there_is_ended(tmp_path: Path) -> None:
    with pytest.raises(ResumeRefused) as refused:
        await relay_resume(tmp_path / "handover-1.sock", FakeBrowser(), RESUME, None, lambda: False, 1024)
    assert refused.value.reason == "ended"


@pytest.mark.parametrize("garbage", [b"", b"Z\x00\x00\x00\x00", wire.message("no hello"), wire.frame(wire.HELLO, b"{}"),
                                     wire.frame(wire.TEXT, b"x" * 9000)])
async def test_a_peer_that_breaks_the_wire_is_cut_and_the_server_goes_on(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "handover-0.sock"
    holder, browser = Holder(), FakeBrowser()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_handovers, path, holder.take_over, 1024)
        async with await trio.open_unix_socket(str(path)) as bad:
            if garbage:
                await bad.send_all(garbage)
            else:
                await bad.send_eof()
            with trio.fail_after(5):
                assert await bad.receive_some(100) == b""  # cut
        assert holder.resume is None
        await browser.to_inbox.send("close me")  # a good hand-over after it is served
        with trio.fail_after(5):
            await relay_resume(path, browser, RESUME, None, lambda: False, 1024)
        nursery.cancel_scope.cancel()
    assert browser.closed == (1008, "resume_failed")


async def test_a_browser_whose_send_fails_is_a_dropped_connection_for_the_holder(tmp_path: Path) -> None:
    """The accepting worker's send to the browser fails (stalled past RELAY_SEND_TIMEOUT, the socket gone bad):
    the holder hears `dropped` (it holds the conversation), not that the relay cut it (which would end it)."""
    path = tmp_path / "handover-0.sock"
    holder, browser = Holder(), FakeBrowser()

    async def failing_send(data: str | bytes) -> None:
        raise RuntimeError("the browser stopped reading; conversation ended")

    browser.send = failing_send  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_handovers, path, holder.take_over, 1024)
        with trio.fail_after(5):
            await relay_resume(path, browser, RESUME, None, lambda: None, 1024)  # the browser is still "there"
            await holder.done.wait()
        nursery.cancel_scope.cancel()
    assert holder.left is False
