"""A resume that lands on the wrong worker of `serve --workers N` (the kernel hands each new connection to whichever
worker accepts first): the accepting worker relays the connection to the worker that holds the conversation, whose
route the resume token names (`<relay>-w<index>`), over that worker's private Unix socket `handover-<index>.sock` in
the supervisor's 0700 directory (wire: relay.protocol.handover). The holding worker takes the relayed connection over
exactly as it takes a direct one (`relay.server.resuming.resume_connection`): same token checks, same replay, same
hold when it drops. The holder trusts what the hand-over says (the resume frame as read, the subject of the client
token the accepting worker verified): only the relay's own user can reach a socket in that directory. Why relaying
rather than passing the socket: docs/decisions.md ("Resume across workers").

`relay_resume` (accepting side) runs for as long as the browser's connection does; `serve_handovers` (holding side)
runs in the app's nursery until shutdown. Neither blocks on the other worker without a bound: a holder that does not
answer within CONNECT_TIMEOUT is a dead one (its conversations died with it), a peer that breaks the wire is cut.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from pathlib import Path

import orjson
import trio
from pydantic import ValidationError

from relay.conversation.endings import BrowserSocket
from relay.net.unix_server import serve_unix_socket
from relay.protocol import browser as bp
from relay.protocol import handover as wire
from relay.protocol.resume import ResumeRefused

log = logging.getLogger("relay.web")

CONNECT_TIMEOUT = 2.0  # a live worker accepts at once; past this it is dead or wedged
HELLO_TIMEOUT = 5.0
WRITE_BOUND = 10.0  # one message to the accepting worker; it bounds its own browser's sends (RELAY_SEND_TIMEOUT)
_READ = 65536
_JSON_ROOM = 4096  # the bound of one wire frame beyond RELAY_MAX_FRAME_BYTES (a hand-over's JSON, a close reason)


def _holder_gone() -> ResumeRefused:
    return ResumeRefused("ended", "the worker that held this conversation has stopped")


# ----------------------------------------------------------------------------------------------------------------------
# The accepting worker


async def relay_resume(path: Path, browser: BrowserSocket, resume: bp.Resume, subject: str | None,
                       left_cleanly: Callable[[], bool | None], max_frame_bytes: int) -> None:
    """Relay `browser` (whose first frame was `resume`) to the worker listening on `path`, until either side ends
    it: the holder's close is the browser's close; the browser's end (cancelled by the web layer when it leaves, or
    by the drain) is told to the holder with how it left (`left_cleanly()`), so a drop holds the conversation there
    and a close 1000 ends it. Raises ResumeRefused (`ended`) when the holder does not answer (a dead worker: its
    conversations died with it); a holder that dies later closes the browser with 1011."""
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await trio.open_unix_socket(str(path))
    except (OSError, trio.TooSlowError):
        raise _holder_gone() from None
    async with stream:
        try:
            await stream.send_all(wire.hello(resume.model_dump(), subject))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _holder_gone() from None
        relayed = _Relayed(browser, stream, wire.FrameReader(max_frame_bytes + _JSON_ROOM))
        try:
            async with trio.open_nursery() as both:
                both.start_soon(relayed.pump, relayed.browser_to_holder, both.cancel_scope)
                both.start_soon(relayed.pump, relayed.holder_to_browser, both.cancel_scope)
        except BaseException:  # the browser's connection ended (or was cut): the holder decides what that means
            await relayed.tell_holder(left_cleanly())
            raise


class _Relayed:
    """The two pumps of one relayed connection, and the one `ended` frame that tells the holder how it ended."""

    def __init__(self, browser: BrowserSocket, stream: trio.SocketStream, reader: wire.FrameReader) -> None:
        self.browser, self.stream, self.reader = browser, stream, reader
        self.sending = trio.Lock()
        self.told = False

    async def pump(self, run: Callable[[], Awaitable[None]], both: trio.CancelScope) -> None:
        """Run one direction; when it ends, both do. A failure on the browser's socket (a send stalled past
        RELAY_SEND_TIMEOUT, a socket gone bad) is a dropped connection: the holder holds the conversation."""
        try:
            await run()
        except Exception:
            log.info("a relayed browser connection failed; taken as dropped", exc_info=True)
            await self.tell_holder(False)
        both.cancel()

    async def tell_holder(self, left: wire.Left) -> None:
        if self.told:
            return
        self.told = True
        with trio.move_on_after(1.0, shield=True), suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with self.sending:
                await self.stream.send_all(wire.ended(left))

    async def browser_to_holder(self) -> None:
        while True:
            data = await self.browser.receive()
            if data is None:
                continue
            try:
                async with self.sending:
                    await self.stream.send_all(wire.message(data))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await trio.sleep_forever()  # the holder is gone: `holder_to_browser` sees its end and closes

    async def holder_to_browser(self) -> None:
        """Forward the holder's frames to the browser until its close (or its end: 1011)."""
        while True:
            try:
                data = await self.stream.receive_some(_READ)
                frames = self.reader.feed(data) if data else None
            except (trio.BrokenResourceError, trio.ClosedResourceError, wire.HandoverError):
                frames = None
            if frames is None:
                log.warning("the worker holding a handed-over conversation stopped answering")
                self.told = True  # nobody to tell
                with trio.move_on_after(1.0, shield=True), suppress(Exception):
                    await self.browser.close(1011, "the relay worker holding this conversation stopped")
                return
            for kind, payload in frames:
                if kind == wire.CLOSE:
                    code, reason = wire.read_close(payload)
                    self.told = True  # the holder ended it
                    with trio.move_on_after(1.0, shield=True), suppress(Exception):
                        await self.browser.close(code, reason)
                    return
                if kind in (wire.TEXT, wire.BINARY):
                    await self.browser.send(payload.decode() if kind == wire.TEXT else payload)


# ----------------------------------------------------------------------------------------------------------------------
# The holding worker


class HandedBrowser:
    """A browser connection relayed by another worker, as the `BrowserSocket` a conversation talks to. `serve`
    reads the wire: frames go to `receive`; the browser's end (or the wire's) sets `left` and cancels `scope`, which
    is how the web layer's cancellation reaches `relay.server.resuming` for a direct connection."""

    def __init__(self, stream: trio.SocketStream, reader: wire.FrameReader, scope: trio.CancelScope) -> None:
        self._stream = stream
        self._reader = reader
        self._scope = scope
        self._sending = trio.Lock()
        self._to_receive, self._received = trio.open_memory_channel[str | bytes](64)
        self.left: bool | None = None
        self._ended = False

    def left_cleanly(self) -> bool | None:
        return self.left if self._ended else None

    async def serve(self, first: list[tuple[bytes, bytes]]) -> None:
        """Read the wire until the browser's end, then cancel `scope`. A broken wire or a vanished accepting worker
        is a dropped connection (held)."""
        frames: list[tuple[bytes, bytes]] | None = first
        while frames is not None:
            for kind, payload in frames:
                if kind == wire.ENDED:
                    try:
                        self._end(wire.read_ended(payload))
                    except wire.HandoverError:
                        self._end(False)
                    return
                if kind in (wire.TEXT, wire.BINARY):
                    await self._to_receive.send(payload.decode() if kind == wire.TEXT else payload)
            try:
                data = await self._stream.receive_some(_READ)
                frames = self._reader.feed(data) if data else None
            except (trio.BrokenResourceError, trio.ClosedResourceError, wire.HandoverError):
                frames = None
        self._end(False)

    def _end(self, left: bool | None) -> None:
        self.left, self._ended = left, True
        self._scope.cancel()

    async def receive(self) -> str | bytes | None:
        """The browser's next message; after its end, waits until the caller is cancelled (the conversation lets
        this connection go)."""
        return await self._received.receive()

    async def send(self, data: str | bytes) -> None:
        """Write one message whole: a write cut in the middle would break the wire, so it is shielded from the
        caller's cancellation and bounded by WRITE_BOUND instead (the accepting worker stopped reading: its browser
        stalled, which it reports itself); past that the wire is closed and the connection taken as lost."""
        async with self._sending:
            with trio.CancelScope(deadline=trio.current_time() + WRITE_BOUND, shield=True) as writing:
                await self._stream.send_all(wire.message(data))
            if writing.cancelled_caught:
                self._stream.socket.close()
                raise trio.BrokenResourceError("the accepting worker stopped reading")

    async def close(self, code: int, reason: str = "") -> None:
        with trio.move_on_after(1.0, shield=True), suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with self._sending:
                await self._stream.send_all(wire.close(code, reason))


TakeOver = Callable[[BrowserSocket, bp.Resume, str | None, Callable[[], bool | None]], Awaitable[None]]


async def serve_handovers(path: Path, take_over: TakeOver, max_frame_bytes: int, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Take over the connections other workers relay here, on the Unix socket `path`: each is served by
    `take_over(browser, resume, subject, left_cleanly)` (`relay.server.resuming.resume_connection`, which hands it
    to the held conversation) until it ends. Runs until cancelled (the app's nursery, at shutdown); removes the
    socket file then."""
    await serve_unix_socket(path, partial(_take_handed, take_over, max_frame_bytes), backlog=64,
                            task_status=task_status)


async def _take_handed(take_over: TakeOver, max_frame_bytes: int, stream: trio.SocketStream) -> None:
    try:
        await _take_handed_over(take_over, max_frame_bytes, stream)
    except Exception:  # never out into serve_listeners: that would end this worker's hand-overs
        log.exception("internal error around a handed-over connection")


async def _take_handed_over(take_over: TakeOver, max_frame_bytes: int, stream: trio.SocketStream) -> None:
    reader = wire.FrameReader(max_frame_bytes + _JSON_ROOM)
    async with stream:
        frames: list[tuple[bytes, bytes]] = []
        with trio.move_on_after(HELLO_TIMEOUT):
            while not frames:
                try:
                    data = await stream.receive_some(_READ)
                    if not data:
                        return
                    frames = reader.feed(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, wire.HandoverError):
                    return
        if not frames or frames[0][0] != wire.HELLO:
            log.warning("a hand-over connection without a hand-over: cut")
            return
        try:
            raw, subject = wire.read_hello(frames[0][1])
            resume = bp.Resume.model_validate_json(orjson.dumps(raw))
        except (wire.HandoverError, ValidationError):
            log.warning("a hand-over connection with a bad hand-over: cut")
            return
        async with trio.open_nursery() as relayed:
            browser = HandedBrowser(stream, reader, relayed.cancel_scope)
            relayed.start_soon(browser.serve, frames[1:])
            await take_over(browser, resume, subject, browser.left_cleanly)
            relayed.cancel_scope.cancel()
