"""The conversation's side of the browser when it can be resumed: `BrowserLink`, a `BrowserSocket` whose connection
can drop and be replaced while the conversation (its nursery, the agent, the avatar session) goes on.

After `ready` every JSON message is numbered and kept in a `ReplayBuffer` (relay.protocol.resume); while no
connection is attached the conversation is *held*: JSON messages are kept, agent audio is dropped (stale when the
browser comes back), `receive` waits for the next connection, and the conversation's `scope` gets the resume window
as its deadline (its cancellation ends the conversation with `client_gone`). Before `ready` (no token yet), with
the window at 0, or after a close 1000, a lost connection ends the conversation at once, as it always did.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import NoReturn

import orjson
import trio

from relay.conversation.endings import BrowserSocket, ConversationOver
from relay.protocol.resume import ReplayBuffer, ReplayOverflow, ResumeRefused

log = logging.getLogger("relay.conversation")


class BrowserLink:
    """One conversation's browser, across connections. `scope` is the cancel scope the conversation runs in: the
    link cancels it when the browser is gone for good, and sets its deadline to the end of the window while held.
    `issue_token()` mints the next resume token (called at `ready` and at each resume). Sends are serialised (a
    resume's replay goes out before anything newer)."""

    def __init__(self, window: float, send_timeout: float, issue_token: Callable[[], str],
                 buffer: ReplayBuffer | None = None) -> None:
        self.window = window
        self.scope = trio.CancelScope()
        self.buffer = buffer or ReplayBuffer()
        self.conversation_id: str | None = None
        self.subject: str | None = None  # who started it (a client token's identity); a resume must be them too
        self.held_since: float | None = None
        self.resumes = 0
        self._send_timeout = send_timeout
        self._issue_token = issue_token
        self._socket: BrowserSocket | None = None
        self._attached_at = -math.inf
        self._attached = trio.Event()
        self._detached = trio.Event()  # set when the current connection is let go
        self._reading: trio.CancelScope | None = None  # the scope of a wait for the next frame, while one waits
        self._numbering = False  # after `ready`
        self._gone = False
        self._send_lock = trio.Lock()
        self.ended = trio.Event()

    # -- what the web layer calls -----------------------------------------------------------------------------------

    def attach_first(self, socket: BrowserSocket) -> None:
        self._attach(socket)

    @property
    def resumable(self) -> bool:
        return self._numbering and self.window > 0 and not self._gone and not self.ended.is_set()

    @property
    def held(self) -> bool:
        return self._socket is None and self.held_since is not None and not self._gone

    def gone(self) -> bool:
        """True when nobody is there to tell: the browser left for good, or the conversation is held."""
        return self._gone or self._socket is None

    async def serve(self, socket: BrowserSocket) -> None:
        """Wait while `socket` is this conversation's connection: until the conversation ends or a resume replaces
        it. Cancelled when the connection ends (the web layer then calls `connection_lost`)."""
        if self._socket is socket:
            await self._detached.wait()

    def connection_lost(self, socket: BrowserSocket, *, clean: bool) -> None:
        """`socket` is gone. `clean` (a close 1000 from the browser): the conversation ends at once; otherwise it is
        held if it can be resumed, and ends at once if not."""
        if self._socket is not socket:
            return
        self._let_go()
        if clean or not self.resumable:
            self._gone = True
            self.scope.cancel()
            return
        self.held_since = trio.current_time()
        self.scope.deadline = self.held_since + self.window
        log.info("browser connection lost; conversation held for up to %gs", self.window)

    def give_up(self) -> None:
        """Nobody will come back (the drain): a held conversation ends now (`client_gone`)."""
        self._gone = True
        self.scope.cancel()

    def finish(self) -> None:
        """The conversation is over: whoever waits on this link stops waiting."""
        self.ended.set()
        self._let_go()

    def acknowledge(self, seq: int) -> bool:
        """The browser's `ack`: it has every JSON message up to `seq`, so the replay buffer forgets them. False for a
        `seq` never sent (nothing is forgotten)."""
        return self.buffer.acknowledge(seq)

    def lost_to_idle(self, idle_started: float) -> bool:
        """The idle time-out fired for a wait that began at `idle_started`: True when the conversation goes on (the
        connection is taken as silently lost and the conversation held, or it is held already, or a new connection
        came since), False when it must end (`timeout`)."""
        if self._socket is None:
            return self.held_since is not None and not self._gone
        if self._attached_at > idle_started:
            return True
        if not self.resumable:
            return False
        socket = self._socket
        self.connection_lost(socket, clean=False)
        return True

    async def take_over(self, socket: BrowserSocket, last_seq: int, resumed: Callable[[str, int], str]) -> None:
        """Attach `socket` in place of whatever connection there was (a resume may come before the relay noticed
        the old one was lost): send it `resumed(new_token, newest_seq)`, then every JSON message after `last_seq`, in
        order; the live stream follows. Raises ResumeRefused when the conversation cannot be resumed (ended, or the
        messages since `last_seq` are no longer kept)."""
        if not self.resumable:
            raise ResumeRefused("ended", "this conversation has ended")
        async with self._send_lock:
            missed = self.buffer.since(last_seq)
            self.buffer.acknowledge(last_seq)  # the browser has those: a resume's last_seq is an ack too
            old = self._socket
            if old is not None:
                self._let_go()
                with trio.move_on_after(1.0, shield=True):
                    try:
                        await old.close(1000, "resumed by a new connection")
                    except Exception:
                        log.debug("closing the replaced connection failed", exc_info=True)
            self._attach(socket)
            self.resumes += 1
            log.info("conversation resumed after %s; replaying %d messages", "a take-over" if self.held_since is None
                     else f"{trio.current_time() - self.held_since:.1f}s held", len(missed))
            self.held_since = None
            self.scope.deadline = math.inf
            await self._send_now(socket, resumed(self._issue_token(), self.buffer.last_seq))
            for numbered in missed:
                if self._socket is not socket:
                    return
                await self._send_now(socket, numbered.frame)
                self.buffer.written(numbered.seq)

    # -- the BrowserSocket the conversation sees ----------------------------------------------------------------------

    async def receive(self) -> str | bytes | None:
        """The next frame of the current connection; while held, waits for the next one. Cancelled by the
        conversation. One task receives at a time (as from a socket)."""
        while True:
            socket = self._socket
            if socket is None:
                await self._attached.wait()
                continue
            with trio.CancelScope() as reading:
                self._reading = reading  # cancelled if the connection is let go meanwhile
                try:
                    return await socket.receive()
                except Exception:
                    self.connection_lost(socket, clean=False)
                finally:
                    self._reading = None

    async def each_frame(self, handle: Callable[[str | bytes | None], Awaitable[None]]) -> NoReturn:
        """`handle(frame)` for every frame, in order, across connections: what a loop of `receive` does, with one
        cancel scope per connection instead of one per frame (entering and leaving a scope was ~6 µs of every
        browser frame). A connection let go while a frame is awaited stops the wait; one let go while `handle` runs
        does not interrupt it (the next frame comes from the next connection), and a frame received as the
        connection was let go is handled outside its scope. Exceptions from `handle` propagate; cancelled by the
        conversation."""
        while True:
            socket = self._socket
            if socket is None:
                await self._attached.wait()
                continue
            late = False  # `frame` came as the connection was let go
            with trio.CancelScope() as reading:
                while self._socket is socket:
                    self._reading = reading
                    try:
                        frame = await socket.receive()
                    except Exception:
                        self.connection_lost(socket, clean=False)
                        break
                    finally:
                        self._reading = None
                    if reading.cancel_called:
                        late = True
                        break
                    await handle(frame)
            if late:
                await handle(frame)

    async def send(self, data: str | bytes) -> None:
        """Send one frame. After `ready` a JSON message is numbered and kept; while held it is only kept, and audio
        is dropped. A connection whose send fails or blocks for the send time-out is taken as lost. A numbered
        message whose send was cancelled before it was written (the conversation ending) goes out before the next
        one, so the browser's `seq` run has no hole. Raises ConversationOver (`client_gone`) when the replay buffer
        is over its bound.

        Agent audio (bytes) takes a fast path: it is neither numbered nor replayed, so it needs the lock only to stay
        out of a resume's take-over (taken without a trip through the scheduler; while a take-over holds it, audio
        waits like any frame and follows the replay), and no time-out scope of its own: every browser socket bounds
        or shields its own write (RELAY_SEND_TIMEOUT, TCP_USER_TIMEOUT, the hand-over's bound), and a failed write
        takes the connection as lost, as below."""
        audio_to = self._socket if type(data) is bytes else None
        if audio_to is not None:
            try:
                self._send_lock.acquire_nowait()
            except trio.WouldBlock:
                pass  # a take-over is under way: the full path below waits for it
            else:
                try:
                    await audio_to.send(data)
                except Exception:
                    self.connection_lost(audio_to, clean=False)
                finally:
                    self._send_lock.release()
                return
        async with self._send_lock:
            seq = 0
            if isinstance(data, str):
                data, seq = self._number(data)
            socket = self._socket
            if socket is None or (seq > self.buffer.last_written + 1 and not await self._send_unwritten(socket, seq)):
                return
            if await self._send_now(socket, data) and seq:
                self.buffer.written(seq)

    def send_nowait(self, *frames: str | bytes) -> bool:
        """Write `frames` at once, in order and in one write (the Outbox's write-through), when the current
        connection can take them without waiting (its `ready_to_send()`), no take-over holds the link and no
        numbered message is still unwritten: JSON messages are numbered and kept as in `send`. False when nothing
        was written (nothing numbered: the Outbox queues them). Raises ConversationOver (`client_gone`) as `send`
        does when the replay buffer is full."""
        socket = self._socket
        if socket is None or self._send_lock.locked():
            return False
        ready: Callable[[], bool] | None = getattr(socket, "ready_to_send", None)
        if ready is None or not ready():
            return False
        seq = 0
        written: tuple[str | bytes, ...] | list[str | bytes] = frames
        if len(frames) != 1 or type(frames[0]) is not bytes:  # (one audio frame, the hot path: sent as it is)
            written = []
            for data in frames:
                if type(data) is str:
                    if not seq and self.buffer.last_written != self.buffer.last_seq:
                        return False  # a numbered message whose send was cancelled goes out first (`send`)
                    data, seq = self._number(data)
                written.append(data)
        try:
            socket.send_nowait(*written)  # type: ignore[attr-defined]
        except Exception:
            self.connection_lost(socket, clean=False)
            return True
        if seq:
            self.buffer.written(seq)
        return True

    async def _send_unwritten(self, socket: BrowserSocket, before: int) -> bool:
        """Write the messages numbered before `before` that never went out on a connection (their send was
        cancelled: the conversation ending mid-send), in order, so the browser's `seq` run has no gap. False when
        the connection was lost meanwhile (a resume replays them)."""
        for numbered in self.buffer.since(self.buffer.last_written):
            if numbered.seq >= before:
                break
            if not await self._send_now(socket, numbered.frame):
                return False
            self.buffer.written(numbered.seq)
        return True

    async def _send_now(self, socket: BrowserSocket, data: str | bytes) -> bool:
        with trio.move_on_after(self._send_timeout) as stalled:
            try:
                await socket.send(data)
            except Exception:
                self.connection_lost(socket, clean=False)
                return False
        if stalled.cancelled_caught:
            log.info("a send to the browser blocked for %gs: connection taken as lost", self._send_timeout)
            self.connection_lost(socket, clean=False)
            return False
        return True

    async def close(self, code: int, reason: str = "") -> None:
        self.ended.set()
        socket = self._socket
        try:
            if socket is not None:
                await socket.close(code, reason)
        finally:
            self._let_go()

    def _number(self, frame: str) -> tuple[str, int]:
        if not self._numbering:
            if frame.startswith('{"type":"ready"'):
                return self._ready(frame), 0
            return frame, 0
        try:
            numbered = self.buffer.push(frame)
            return numbered.frame, numbered.seq
        except ReplayOverflow as exc:
            raise ConversationOver("client_gone", message=f"the browser did not come back in time: {exc}") from None

    def _ready(self, frame: str) -> str:
        """`ready` gets the resume token and window; from now on JSON messages are numbered."""
        if self.window <= 0:
            return frame
        ready = orjson.loads(frame)
        self.conversation_id = ready.get("conversation_id")
        ready["resume_token"] = self._issue_token()
        ready["resume_window"] = self.window
        self._numbering = True
        return orjson.dumps(ready).decode()

    def _attach(self, socket: BrowserSocket) -> None:
        self._socket = socket
        self._attached_at = trio.current_time()
        self._detached = trio.Event()
        self._attached.set()

    def _let_go(self) -> None:
        self._socket = None
        if self._reading is not None:  # a wait for the current connection's next frame: it stops
            self._reading.cancel()
        self._detached.set()
        self._attached = trio.Event()
