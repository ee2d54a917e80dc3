"""A small WebSocket client for Trio over the `websockets` library's sans-I/O `ClientProtocol`.

Why not trio-websocket: it frames and masks in pure Python (wsproto, ~30 µs per 3 KB frame where `websockets`' C
extension takes ~6 µs), takes a lock and wakes a separate reader task for every message. The relay sends ten audio
frames a second per conversation to the agent, so that cost is paid per frame (docs/performance.md). Here there is
no reader task: `receive()` reads the TCP stream and feeds the protocol itself, answering WebSocket pings and the
peer's close frame as it goes, and `send_text()` writes directly. The caller must therefore keep calling `receive()`
while the connection is open (the relay's downstream pump does so continuously).

Concurrency: one task may `receive()` while other tasks `send_text()`; writes are serialised by a lock. Errors:
`WebSocketRejected` (the server answered the upgrade with another HTTP status), `WebSocketConnectError` (anything
else before the connection is open), `WebSocketClosed(code, reason)` once it is closed — after the messages that
arrived before the close have been returned. This module must never log per frame and knows nothing of any
upstream's messages.
"""

from __future__ import annotations

import math
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Final

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from relay.net import spans

_RECEIVE_BYTES: Final = 65536
_ABNORMAL_CLOSURE: Final = 1006


class WebSocketConnectError(Exception):
    """The connection could not be opened (DNS, TCP, TLS, or a malformed or missing upgrade answer)."""


class WebSocketRejected(WebSocketConnectError):
    """The server answered the upgrade request with `status_code` instead of 101."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"the server refused the WebSocket upgrade (HTTP {status_code})")
        self.status_code = status_code


class WebSocketClosed(Exception):
    """The connection is closed. `code` and `reason` come from the peer's close frame; `code` is 1006 when the
    connection was lost without one."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"websocket closed (code {code}{', ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


async def take_lock(lock: trio.StrictFIFOLock) -> None:
    """`lock.acquire()`, without its scheduling point when the lock is free: for a caller whose next step is a send
    (itself a scheduling point), one task switch less per message. Blocks while another task holds the lock;
    cancelled by the caller's scope (only while it waits). Release it with `lock.release()`."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


class ClientWebSocket:
    """An open client connection. Made by `open_websocket`."""

    __slots__ = ("_closed", "_finished", "_fragment_opcode", "_fragments", "_messages", "_protocol", "_read_ended",
                 "_receiving", "_stream", "_write_lock", "subprotocol")

    def __init__(self, stream: trio.abc.Stream, protocol: ClientProtocol, subprotocol: str | None) -> None:
        self._stream = stream
        self._protocol = protocol
        self._messages: deque[str | bytes] = deque()
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None
        self._write_lock = trio.StrictFIFOLock()
        self._receiving = False
        self._closed: WebSocketClosed | None = None
        self._finished = trio.Event()  # set once the closing handshake is over (or the stream is gone)
        self._read_ended = trio.lowlevel.ParkingLot()  # `aclose` waits here while another task is reading
        self.subprotocol = subprotocol

    # ------------------------------------------------------------------------------------------------------------------
    # Sending

    async def send_text(self, text: str | bytes) -> None:
        """Send one text message (`bytes`: its UTF-8 encoding, sent as it is). Blocks while the socket's send
        buffer is full (backpressure); cancelled by the caller's scope (a write cut short leaves the connection
        unusable). Raises `WebSocketClosed` once a close frame was sent or received, or the stream is broken."""
        protocol = self._protocol
        if protocol.state is not State.OPEN:
            raise self._closed_error()
        protocol.send_text(text if type(text) is bytes else text.encode())  # type: ignore[union-attr]
        await self._flush()

    async def send_texts(self, texts: Sequence[str | bytes]) -> None:
        """Send several text messages, in order, in one write (one system call and one wake-up of the peer instead
        of one per message). Same blocking, cancellation and errors as `send_text`; if the connection is closed
        none of them is sent."""
        protocol = self._protocol
        if protocol.state is not State.OPEN:
            raise self._closed_error()
        for text in texts:
            protocol.send_text(text if type(text) is bytes else text.encode())  # type: ignore[union-attr]
        await self._flush()

    async def send_bytes(self, data: bytes | memoryview) -> None:
        """Send one binary message. Same blocking, cancellation and errors as `send_text`."""
        protocol = self._protocol
        if protocol.state is not State.OPEN:
            raise self._closed_error()
        protocol.send_binary(bytes(data))
        await self._flush()

    async def _flush(self) -> None:
        chunks = self._protocol.data_to_send()
        if not chunks:
            return
        data = b"".join(chunks)  # b"" marks "half-close": the stream is closed at the end anyway
        if not data:
            return
        await take_lock(self._write_lock)
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lost()
            raise self._closed_error() from None
        finally:
            self._write_lock.release()

    # ------------------------------------------------------------------------------------------------------------------
    # Receiving

    async def receive(self) -> str | bytes:
        """The next message: `str` for a text message, `bytes` for a binary one. Blocks until one arrives;
        cancelled by the caller's scope (no data is lost). Pings are answered and the peer's close frame is
        acknowledged while waiting. After the close, the messages received before it are returned first, then
        `WebSocketClosed` is raised on every call. Only one task may receive at a time."""
        messages = self._messages
        while not messages:
            if self._closed is not None:
                raise self._closed
            await self._read_once()
        return messages.popleft()

    async def _read_once(self) -> None:
        self._receiving = True
        try:
            try:
                data = await self._stream.receive_some(_RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            protocol = self._protocol
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            for event in protocol.events_received():
                if isinstance(event, Frame):
                    self._take_frame(event)
            with suppress(WebSocketClosed):
                await self._flush()  # pongs, the answer to a close frame
            if protocol.state is State.CLOSED or not data:
                self._lost()
        finally:
            self._receiving = False
            if self._read_ended:
                self._read_ended.unpark_all()

    def _take_frame(self, frame: Frame) -> None:
        """Queue a data frame's message (assembling fragments); note a close. Pings were answered by the
        protocol already."""
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._messages.append(str(frame.data, "utf-8") if opcode is Opcode.TEXT else bytes(frame.data))
            else:
                self._fragment_opcode = opcode
                self._fragments = [bytes(frame.data)]
        elif opcode is Opcode.CONT and self._fragment_opcode is not None:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data = b"".join(self._fragments)
                text = self._fragment_opcode is Opcode.TEXT
                self._messages.append(data.decode() if text else data)
                self._fragments, self._fragment_opcode = [], None
        elif opcode is Opcode.CLOSE:
            self._note_close()

    def _note_close(self) -> None:
        if self._closed is None:
            received = self._protocol.close_rcvd
            if received is not None:
                self._closed = WebSocketClosed(received.code, received.reason)

    def _lost(self) -> None:
        """The stream is over (EOF, broken, or the closing handshake done)."""
        self._note_close()
        if self._closed is None:
            self._closed = WebSocketClosed(_ABNORMAL_CLOSURE, "")
        self._finished.set()

    def _closed_error(self) -> WebSocketClosed:
        self._note_close()
        if self._closed is not None:
            return self._closed
        sent: Close | None = self._protocol.close_sent
        return WebSocketClosed(sent.code if sent is not None else _ABNORMAL_CLOSURE, sent.reason if sent else "")

    # ------------------------------------------------------------------------------------------------------------------
    # Closing

    async def aclose(self, code: int = 1000, reason: str = "", wait: float = 2.0) -> None:
        """Send a close frame (if none was sent yet) and wait at most `wait` seconds for the peer's, reading
        and discarding what still arrives (or, if another task is receiving, letting it do so); then close the
        stream. Idempotent; cancelled by the caller's scope, the stream is closed in every case."""
        try:
            with trio.move_on_after(wait):
                if self._protocol.state is State.OPEN:
                    self._protocol.send_close(code, reason)
                with suppress(WebSocketClosed, trio.BusyResourceError):
                    await self._flush()  # our close frame, or the answer to the peer's
                while not self._finished.is_set():
                    if self._receiving:
                        await self._read_ended.park()
                    else:
                        self._messages.clear()
                        await self._read_once()
        finally:
            self._finished.set()
            if self._closed is None:
                self._closed = self._closed_error()
            with trio.CancelScope(shield=True):
                await self._stream.aclose()


async def _open_stream(host: str, port: int, secure: bool) -> trio.abc.Stream:
    if secure:
        return await trio.open_ssl_over_tcp_stream(host, port, ssl_context=ssl.create_default_context(),
                                                   https_compatible=True)
    return await trio.open_tcp_stream(host, port)


@asynccontextmanager
async def open_websocket(url: str, *, max_message_size: int = 2**20, subprotocols: list[str] | None = None,
                         extra_headers: Mapping[str, str] | None = None,
                         close_timeout: float = 2.0) -> AsyncIterator[ClientWebSocket]:
    """Connect to `url` (ws:// or wss://), perform the upgrade and yield the open connection; on exit close it
    (code 1000, shielded, at most `close_timeout` seconds, less if the caller was cancelled).

    Raises `WebSocketRejected` (another HTTP status), `WebSocketConnectError` (network, TLS or handshake failure).
    No timeout of its own: cancelled by the caller's scope at any point (the stream is closed)."""
    try:
        uri = parse_uri(url)
    except (InvalidURI, ValueError):  # ValueError: a port that is not a number
        raise WebSocketConnectError("invalid WebSocket URL") from None  # never the URL: it carries a signature
    protocol = ClientProtocol(uri, subprotocols=subprotocols, max_size=max_message_size)  # type: ignore[arg-type]
    request = protocol.connect()
    for name, value in (extra_headers or {}).items():
        request.headers[name] = value
    with spans.child("websocket connect", {"server.address": uri.host, "server.port": uri.port}):
        spans.inject_traceparent(request.headers)
        protocol.send_request(request)
        try:
            stream = await _open_stream(uri.host, uri.port, uri.secure)
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise WebSocketConnectError(f"could not connect ({type(exc).__name__})") from None
        try:
            ws = await _upgrade(stream, protocol)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
    try:
        yield ws
    finally:
        cancelled = trio.current_effective_deadline() == -math.inf
        with trio.CancelScope(shield=True):
            await ws.aclose(1000, "", 0.05 if cancelled else close_timeout)


async def _upgrade(stream: trio.abc.Stream, protocol: ClientProtocol) -> ClientWebSocket:
    try:
        await stream.send_all(b"".join(protocol.data_to_send()))
        while True:
            data = await stream.receive_some(_RECEIVE_BYTES)
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            events = protocol.events_received()
            if events or not data:
                break
    except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
        raise WebSocketConnectError(f"connection lost during the upgrade ({type(exc).__name__})") from None
    failure = protocol.handshake_exc
    if isinstance(failure, InvalidStatus):
        raise WebSocketRejected(failure.response.status_code)
    if failure is not None or not events or not isinstance(events[0], Response):
        detail = type(failure).__name__ if failure is not None else "no answer"
        raise WebSocketConnectError(f"the WebSocket upgrade failed ({detail})")
    response = events[0]
    ws = ClientWebSocket(stream, protocol, response.headers.get("Sec-WebSocket-Protocol"))
    for event in events[1:]:  # frames that came in the same read as the answer
        if isinstance(event, Frame):
            ws._take_frame(event)
    with suppress(WebSocketClosed):
        await ws._flush()  # and the answers to them (a pong)
    return ws
