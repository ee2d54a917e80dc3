"""The outbox: everything the relay sends to the browser goes through one bounded queue and one sender task, so a
slow browser never blocks the agent pump (which must keep answering pings). A socket that can write a frame without
waiting (`send_nowait`, relay.server.direct_ws) gets it at once while nothing is queued: no wake-up of the sender task
per frame, and still never a wait in the pump.

A full queue drops agent audio (counted) and ends the conversation for control frames ("the browser stopped
reading"); a send blocked for RELAY_SEND_TIMEOUT ends it too (`watch_sender`).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from relay.conversation.endings import BrowserSocket, ConversationOver

OUTBOX_FRAMES = 512


class Outbox:
    def __init__(self, capacity: int = OUTBOX_FRAMES) -> None:
        self._tx, self._rx = trio.open_memory_channel[str | bytes](capacity)
        self.dropped_audio = 0
        self.sending_since: float | None = None
        self._unsent = 0  # queued or being sent
        self._all_sent = trio.Event()
        self._sender_busy = trio.Event()  # set when the sender task starts a send: `watch_sender` wakes
        # The browser socket's `send_nowait` while the sender runs, if it has one (relay.server.direct_ws): a frame
        # (audio or JSON) is written at once when nothing is queued and the socket takes it without waiting.
        self._write_through: Callable[..., bool] | None = None  # `send_nowait(*frames)`

    def _written_through(self, *frames: str | bytes) -> bool:
        """Whether `frames` were written at once, in one write (nothing queued or being sent, and a socket that
        takes them without waiting); False: the caller queues them."""
        return not self._unsent and self._write_through is not None and self._write_through(*frames)

    def send(self, frame: str) -> None:
        """Queue a control frame (or write it at once, as `send_audio` does). A full queue means the browser stopped
        reading: the conversation ends."""
        if self._written_through(frame):
            return
        try:
            self._tx.send_nowait(frame)
        except trio.WouldBlock:
            raise ConversationOver.failed("timeout", "the browser stopped reading; conversation ended") from None
        self._unsent += 1

    def send_lossy(self, frame: str) -> None:
        """Queue a control frame that may be lost when the browser is behind, like the audio it goes with
        (caption timings, VAD scores): dropped and counted with the audio, never an end."""
        if not self._written_through(frame):
            self._queue_lossy(frame)

    def _queue_lossy(self, frame: str | bytes) -> None:
        """Queue a frame that may be lost: dropped and counted when the queue is full."""
        try:
            self._tx.send_nowait(frame)
        except trio.WouldBlock:
            self.dropped_audio += 1
            return
        self._unsent += 1

    def send_audio(self, pcm: bytes, caption: str | None = None) -> None:
        """Queue agent audio for the browser, after `caption` (its caption timing, lossy like it) when given; each
        is dropped (and counted) when the browser is behind. With nothing queued and a socket that takes frames
        without waiting, they are written at once, without the sender task's wake-up, the two in one write (order
        is kept: only an empty queue with no send under way lets a frame past it)."""
        if caption is None:
            if not self._written_through(pcm):
                self._queue_lossy(pcm)
        elif not self._written_through(caption, pcm):
            # Refused together, refused apart (the same socket, the same moment): both are queued, in order.
            self._queue_lossy(caption)
            self._queue_lossy(pcm)

    async def wait_sent(self) -> None:
        """Until everything queued so far has been written to the browser (cancelled by the caller's scope)."""
        while self._unsent:
            await self._all_sent.wait()

    async def run_sender(self, browser: BrowserSocket) -> None:
        """Send queued frames in order until cancelled (by the conversation's end). A send to a browser that stopped
        reading may not be cancellable (hypercorn writes inside a shielded scope): `watch_sender` ends the
        conversation around it, and the socket's TCP_USER_TIMEOUT (relay.server.limits) finally breaks the write."""
        self._write_through = getattr(browser, "send_nowait", None)
        try:
            async for frame in self._rx:
                self.sending_since = trio.current_time()
                self._sender_busy.set()  # (a no-op while the watcher is already awake)
                await browser.send(frame)
                self.sending_since = None
                self._unsent -= 1
                if not self._unsent:
                    self._all_sent.set()
                    self._all_sent = trio.Event()
        finally:
            self._write_through = None

    async def watch_sender(self, send_timeout: float) -> None:
        """End the conversation (`timeout`) when one send has been blocked for `send_timeout` seconds, so the avatar
        session is stopped promptly even though that send cannot be interrupted. Cancelled by the conversation's
        end. Sleeps while the sender task sends nothing (frames written through never wake it), and checks four
        times per `send_timeout` while it does."""
        while True:
            if self.sending_since is None:
                self._sender_busy = trio.Event()
                await self._sender_busy.wait()
            await trio.sleep(send_timeout / 4)
            since = self.sending_since
            if since is not None and trio.current_time() - since >= send_timeout:
                raise ConversationOver.failed("timeout", "the browser stopped reading; conversation ended")
