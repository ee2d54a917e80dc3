"""`/ws` served on the connection's own socket: the conversation's task reads the browser's frames from the TCP stream
and parses them with `websockets`' sans-I/O protocol (C-accelerated), with no hypercorn reader task, channel, wsproto
or ASGI message in between (docs/performance.md, "Round 6"; docs/decisions.md, "`/ws` on its own socket").

hypercorn hands every accepted connection to its `TCPServer`; `serve_websocket_directly(app, path, ...)` puts
`direct_door` there instead (once per process, `hypercorn.trio.run.TCPServer`). For an app that carries a direct
route (`app.direct_websocket`, the relay's; the simulators and any other app keep hypercorn's own server), the door
reads the connection's request head: a plain-TCP WebSocket upgrade for the route's path is served here; anything else
(the page, the API, the probes, another path, TLS, HTTP/2, a head that is not complete within
`h11_max_incomplete_size` bytes) goes to hypercorn's `TCPServer` with what was read put back in front of the stream, and
is served exactly as before. Under `avatar-relay serve`, its workers and `hypercorn -k trio relay.web:app` alike.

`DirectWebSocket` is the same small interface `relay.server.asgi_ws.ASGIWebSocket` gives the handler (`headers`, `args`,
`remote_addr`, `scope`, `accept`, `refuse`, `receive`, `send`, `close`) and keeps every rule of that path: the request
guard (Host, canonical path: refused 403 before accepting), the first message bounded by RELAY_MAX_START_BYTES and the
others by RELAY_MAX_FRAME_BYTES (close 1009), an empty binary frame read as None, the browser's close code noted for
`relay.server.departures` (a close the relay started, or its 1002/1007/1009 for a bad frame, noted as the relay's), and
the browser leaving cancels the handler, even while nothing reads: once no `receive` has run for `WATCH_AFTER` to twice
that (an avatar's set-up, a seat's wait), the connection's watcher task reads on the handler's behalf — it buffers at
most `BUFFERED` messages, as hypercorn's queue did — and gives the socket back the moment a `receive` starts. While the
conversation reads, the watcher sleeps on a deadline that the end of a `receive` moves at most once per `WATCH_AFTER`:
no wake-up and no timer change per frame. A frame to the browser is written whole (shielded, under the connection's send
lock, as hypercorn wrote it: a cancelled send writes nothing, a begun one cannot be cut short; TCP_USER_TIMEOUT breaks a
stalled one). permessage-deflate is declined (audio does not compress; the extension costs ~0.27 MB of zlib state per
conversation; decisions.md); hypercorn's path keeps it, bounded (`relay.server.ws_limits`).

Nothing here decides who may connect (`relay.server.auth`) or knows the browser protocol.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import trio
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from relay.server.asgi_ws import UpgradeRequest, departed, run_until_departed
from relay.server.departures import mark_closed_by_relay, note_departure
from relay.server.request_guard import GuardPolicy, refusal

log = logging.getLogger("relay.web")
# websockets' protocol logs every opening and closing at INFO; the relay logs its own lines.
_protocol_log = logging.getLogger("relay.server.direct_ws.protocol")
_protocol_log.setLevel(logging.WARNING)

WATCH_AFTER = 0.25  # the watcher reads for the handler 1-2 x this many seconds after the last `receive` ended
BUFFERED = 10  # messages the watcher holds for the handler before it stops reading (hypercorn's app queue)
CLOSE_WAIT = 5.0  # seconds to wait for the browser's answer to the relay's close before cutting the connection
_READ = 65536


def encode_frame(data: str | bytes) -> bytes:
    """One unfragmented, unmasked server frame (text for str, binary for bytes), the bytes `websockets`' protocol
    would write for it with no extension (this route declines them all) — without its `Frame` object, its checks and
    its output buffer, on the path every agent audio chunk and caption takes to the browser."""
    if type(data) is str:
        payload, first = data.encode(), 0x81
    else:
        payload, first = data, 0x82  # type: ignore[assignment]
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


@dataclass(frozen=True, slots=True)
class DirectRoute:
    """What an app serves on its own socket: WebSocket upgrades of `path` run `handler(socket)`. `first_bytes` and
    `most_bytes` bound the first message and the others; `guard` is the request guard's policy."""

    path: str
    handler: Callable[[DirectWebSocket], Awaitable[None]]
    most_bytes: int
    first_bytes: int
    guard: GuardPolicy


def route_of(app: Any) -> DirectRoute | None:
    """The direct route of the app hypercorn serves (its wrapper holds it as `.app`), if it has one."""
    route = getattr(getattr(app, "app", app), "direct_websocket", None)
    return route if isinstance(route, DirectRoute) else None


# ----------------------------------------------------------------------------------------------------------------------
# The connection's first bytes


class ReplayedStream:
    """A stream whose first reads give back `head` (bytes already read from `stream`), then read `stream`; every
    other attribute is the stream's own (hypercorn's server reads `.socket`, writes, closes through it)."""

    def __init__(self, stream: trio.SocketStream, head: bytes) -> None:
        self._stream = stream
        self._head = head

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._head:
            size = len(self._head) if max_bytes is None else max_bytes
            data, self._head = self._head[:size], self._head[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


async def read_head(stream: trio.SocketStream, limit: int) -> tuple[bytes, bool]:
    """Read until the end of the request head (an empty line) or `limit` bytes: (what was read, whether the head is
    complete). Blocks on the socket; the caller bounds it in time. A peer that closes first gives (read, False)."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > limit:
            return data, False
        chunk = await stream.receive_some(_READ)
        if not chunk:
            return data, False
        data += chunk
    return data, True


def upgrade_target(head: bytes, path: str, root_path: str) -> bool:
    """Whether the request head is `GET <path>[?query] HTTP/1.1` asking for a WebSocket (`Upgrade: websocket`), the
    path as the app routes it (below hypercorn's `root_path`, percent-decoded)."""
    line, _, rest = head.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
        return False
    raw_path = parts[1].partition(b"?")[0]
    try:
        target = unquote(raw_path.decode("ascii"))
    except UnicodeDecodeError:
        return False
    if root_path and target.startswith(root_path):
        target = target[len(root_path):] or "/"
    if target != path:
        return False
    for header in rest.split(b"\r\n"):
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.strip().lower():
            return True
    return False


# ----------------------------------------------------------------------------------------------------------------------
# One browser's socket


class DirectWebSocket(UpgradeRequest):
    """One browser's WebSocket on its own TCP stream; see the module docstring. One task receives at a time (the
    doorway, then the conversation's pump); any task may send."""

    __slots__ = ("_arm", "_fd", "_fragments", "_gone", "_gone_code", "_limits", "_messages", "_protocol",
                 "_receiving", "_response", "_send_lock", "_stream", "_takeover", "_tasks", "_text", "_watching")

    def __init__(self, stream: trio.SocketStream, protocol: ServerProtocol, response: Response, scope: dict[str, Any],
                 most_bytes: int) -> None:
        super().__init__(scope)
        self._stream = stream
        self._protocol = protocol
        self._response = response  # the 101 answer, sent by `accept`
        self._limits = most_bytes  # the bound of every message after the first
        self._send_lock = trio.Semaphore(1)  # a semaphore: `send_nowait`'s flusher releases what it acquired
        self._fd = stream.socket.fileno()
        self._tasks: trio.Nursery | None = None  # the connection's nursery (`serve_direct`), for `send_nowait`
        self._messages: deque[str | bytes | None] = deque()
        self._fragments: list[bytes] = []
        self._text = False  # the message being read is text (its first frame's opcode)
        self._gone = False  # the connection has ended (close frame, EOF, a protocol failure)
        self._gone_code = 1006
        self._receiving = False
        self._arm = trio.CancelScope()  # the watcher's sleep; its deadline is pushed by each `receive`
        self._watching: trio.CancelScope | None = None  # the watcher's read, while it reads
        self._takeover: trio.Event | None = None

    # -- the handshake ------------------------------------------------------------------------------------------------

    async def accept(self, subprotocol: str | None = None) -> None:
        """Complete the upgrade (idempotent), naming `subprotocol` when given (one the browser offered)."""
        if self._accepted or self._closed:
            return
        self._accepted = True
        if subprotocol is not None:
            self._response.headers["Sec-WebSocket-Protocol"] = subprotocol
        self._protocol.send_response(self._response)
        await self._flush()

    async def refuse(self, status: int) -> None:
        """Answer the upgrade with a plain HTTP `status` instead of accepting it; the connection then ends."""
        if self._accepted or self._closed:
            return
        self._closed = True
        response = self._protocol.reject(status, f"{status} {HTTPStatus(status).phrase}\n")
        self._protocol.send_response(response)
        await self._flush()

    # -- receiving ----------------------------------------------------------------------------------------------------

    async def receive(self) -> str | bytes | None:
        """The next message: text as str, binary as bytes (None when empty). Blocks until one arrives; cancelled by
        the caller's scope (nothing read is lost). When the browser has left it notes the departure (which cancels
        the handler: `serve_direct`) and waits to be cancelled."""
        if not self._accepted:
            await self.accept()
        self._receiving = True
        try:
            if self._watching is not None:  # the watcher is reading for us: take the socket back
                self._takeover = taken = trio.Event()
                self._watching.cancel()
                await taken.wait()
            while not self._messages:
                if self._gone:
                    departed(self.scope, self._gone_code)
                    await trio.sleep_forever()
                await self._read_once()
            return self._messages.popleft()
        finally:
            self._receiving = False
            arm = self._arm
            now = trio.current_time()
            if arm.deadline - now < WATCH_AFTER:  # moved at most once per WATCH_AFTER, not per frame
                arm.deadline = now + 2 * WATCH_AFTER

    async def watch(self) -> None:
        """The connection's watcher (a task of `serve_direct`, cancelled when the handler ends): reads for the
        handler once no `receive` has run for WATCH_AFTER to 2 x WATCH_AFTER seconds, so that a browser leaving is
        seen then; stops reading with BUFFERED messages held, and gives the socket back when a `receive` starts.
        It sleeps on `_arm`, whose deadline the end of a `receive` moves when it is less than WATCH_AFTER away (the
        deadline is then always at least WATCH_AFTER after the last `receive` ended); a `receive` still running
        when it passes is looked at again WATCH_AFTER later (a browser sending nothing for a while)."""
        self._arm.deadline = trio.current_time() + 2 * WATCH_AFTER
        while not self._gone:
            with self._arm:
                await trio.sleep_forever()
            self._arm = trio.CancelScope(deadline=trio.current_time() + (WATCH_AFTER if self._receiving
                                                                           else 2 * WATCH_AFTER))
            if self._receiving:
                continue
            with trio.CancelScope() as watching:
                self._watching = watching
                try:
                    while len(self._messages) < BUFFERED and not self._gone:
                        await self._read_once()
                    if self._gone:
                        departed(self.scope, self._gone_code)
                    await trio.sleep_forever()  # full (or gone): until a `receive` takes the socket back
                finally:
                    self._watching = None
                    if self._takeover is not None:
                        self._takeover.set()
                        self._takeover = None
        departed(self.scope, self._gone_code)

    async def _read_once(self) -> None:
        """One read from the socket into the protocol; whole messages land in `_messages`, pongs and close answers
        are written. At the end of the connection `_gone` is set with the code to note."""
        try:
            received = await self._stream.receive_some(_READ)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            received = b""
        protocol = self._protocol
        if received:
            protocol.receive_data(received)
        else:
            protocol.receive_eof()
        for frame in protocol.events_received():
            if type(frame) is not Frame:  # pragma: no cover - the request was read before this socket existed
                continue
            opcode = frame.opcode
            if opcode is Opcode.BINARY or opcode is Opcode.TEXT or opcode is Opcode.CONT:
                if opcode is not Opcode.CONT:
                    self._text = opcode is Opcode.TEXT
                data = bytes(frame.data)  # bytes already (no copy): websockets unmasks into new bytes
                if not frame.fin:
                    self._fragments.append(data)
                    continue
                if self._fragments:
                    self._fragments.append(data)
                    data = b"".join(self._fragments)
                    self._fragments.clear()
                self._message(data)
            elif opcode is Opcode.CLOSE:
                self._ending(protocol.close_rcvd)
        if protocol.parser_exc is not None or not received:
            self._ending(None)
        if protocol.writes:
            await self._flush()

    def _message(self, payload: bytes) -> None:
        protocol = self._protocol
        if protocol.max_message_size != self._limits:  # the first message is in: the later bound applies
            protocol.max_message_size = self._limits
        if self._text:
            try:
                self._messages.append(payload.decode())
            except UnicodeDecodeError:
                protocol.fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                self._ending(None)
        else:
            self._messages.append(bytes(payload) or None)

    def _ending(self, close: Close | None) -> None:
        """The connection is ending: by the browser's close frame (`close`: its code is noted), or otherwise (EOF:
        1006; the relay's own close or protocol failure: noted as the relay's)."""
        if self._gone:
            return
        self._gone = True
        protocol = self._protocol
        if protocol.close_sent is not None and not protocol.close_rcvd_then_sent:
            mark_closed_by_relay(self.scope)  # the relay closed first (its close, or 1002/1007/1009 for a bad frame)
            self._gone_code = 1000
        elif close is not None:
            self._gone_code = close.code
            note_departure(self.scope, close.code)
        else:
            self._gone_code = 1006

    # -- sending ------------------------------------------------------------------------------------------------------

    async def send(self, data: str | bytes) -> None:
        """One frame to the browser, written whole (see the module docstring). Blocks while the socket takes it."""
        if not self._accepted:
            await self.accept()
        if self._protocol.state is not State.OPEN:  # closing or gone: nothing more is written (as on hypercorn)
            await trio.lowlevel.checkpoint()
            return
        self._frame(data)
        await self._flush()

    def _frame(self, data: str | bytes) -> None:
        """Frame one message into the protocol's output (text for str, binary for bytes); nothing is written. (Not
        `encode_frame`: framed here, at the call, the message keeps its place ahead of a close frame another task
        queues while this one waits for the send lock, so a last message before a close is never dropped.)"""
        if type(data) is str:
            self._protocol.send_text(data.encode())
        else:
            self._protocol.send_binary(data)  # type: ignore[arg-type]

    def ready_to_send(self) -> bool:
        """Whether `send_nowait` would start now: open, accepted, and no send under way."""
        return (self._accepted and self._tasks is not None and self._protocol.state is State.OPEN
                and self._send_lock.value == 1)

    def send_nowait(self, *frames: str | bytes) -> bool:
        """Write `frames` now, in order and in one write, without waiting, if nothing else is being sent: True when
        they were written (or the connection turned out broken: it is then gone, as after a failed `send`), False
        when it could not start (see `ready_to_send`): the caller sends them the ordinary way. What the kernel takes
        only in part is finished by a task of the connection, which holds the send lock until then. (One write for
        frames that leave together, such as a chunk's caption timing and its audio: one system call and one
        wake-up of the browser's side instead of two.)"""
        if not self.ready_to_send():
            return False
        assert self._tasks is not None
        self._send_lock.acquire_nowait()
        pending = self._protocol.data_to_send()  # a pong the protocol owes, if any, goes first
        if len(frames) == 1 and not pending:
            frame = encode_frame(frames[0])
        else:
            frame = b"".join([*pending, *map(encode_frame, frames)])
        try:
            written = os.write(self._fd, frame)
        except BlockingIOError:
            written = 0
        except OSError:
            self._ending(None)
            self._send_lock.release()
            return True
        if written == len(frame):
            self._send_lock.release()
        else:
            self._tasks.start_soon(self._finish_write, frame[written:])
        return True

    async def _finish_write(self, rest: bytes) -> None:
        """The rest of a frame `send_nowait` began: written whole (shielded), then the send lock is released."""
        try:
            with trio.CancelScope(shield=True):
                try:
                    await self._stream.send_all(rest)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._ending(None)
        finally:
            self._send_lock.release()

    async def close(self, code: int, reason: str = "") -> None:
        """Close with `code` (before accepting: answered 403, as hypercorn answers a close before the upgrade).
        Twice is an error, as in quart."""
        if self._closed:
            raise RuntimeError("Cannot close websocket multiple times")
        if not self._accepted:
            await self.refuse(403)
            return
        self._closed = True
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(code, reason)
            await self._flush()

    async def _flush(self) -> None:
        """Write what the protocol has to send, whole: under the send lock, shielded (a begun write is never cut).
        The end-of-stream marker shuts the write side down."""
        lock = self._send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            writes = self._protocol.data_to_send()
            if not writes:
                return
            eof = writes[-1] == b""
            data = b"".join(writes)
            with trio.CancelScope(shield=True):
                try:
                    if data:
                        await self._stream.send_all(data)
                    if eof:
                        await self._stream.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._ending(None)
        finally:
            lock.release()

    async def finish(self) -> None:
        """After the handler: wait (at most CLOSE_WAIT seconds) for the browser to answer the relay's close, then
        close the connection."""
        with trio.move_on_after(CLOSE_WAIT):
            while self._accepted and not self._gone:
                await self._read_once()
        await self._stream.aclose()


# ----------------------------------------------------------------------------------------------------------------------
# The connection


def websocket_scope(request: Request, stream: trio.SocketStream, root_path: str) -> dict[str, Any]:
    """The ASGI-shaped scope of the upgrade request, as hypercorn would give it (the handshake checks and
    `relay.server.departures` read it)."""
    raw_path, _, query = request.path.partition("?")
    sock = stream.socket
    try:
        client = sock.getpeername()[:2]
        server = sock.getsockname()[:2]
    except OSError:
        client = server = None
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1"))
               for name, value in request.headers.raw_items()]
    subprotocols = [p.strip() for value in request.headers.get_all("Sec-WebSocket-Protocol")
                    for p in value.split(",") if p.strip()]
    return {"type": "websocket", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "scheme": "ws", "path": unquote(raw_path), "raw_path": raw_path.encode("latin-1"),
            "query_string": query.encode("latin-1"), "root_path": root_path, "headers": headers,
            "client": client, "server": server, "subprotocols": subprotocols, "extensions": {}}


async def serve_direct(stream: trio.SocketStream, head: bytes, route: DirectRoute, root_path: str) -> None:
    """Serve one WebSocket upgrade (`head`: its request, read whole) on `stream` until the handler ends or the
    browser leaves (the handler is cancelled then, reading or not), then close the connection: as
    `relay.server.asgi_ws.serve_websocket` does on hypercorn's callables (a socket accepted and not closed is closed
    1000; an exception is logged and answered 500 before accepting, close 1000 after)."""
    protocol = ServerProtocol(max_size=route.first_bytes, logger=_protocol_log)
    protocol.receive_data(head)
    requests = [event for event in protocol.events_received() if isinstance(event, Request)]
    if not requests:  # not a request websockets can read: answered (4xx) or cut, as hypercorn would
        await _write_and_close(stream, protocol)
        return
    request = requests[0]
    response = protocol.accept(request)
    if response.status_code != 101:  # not a valid WebSocket handshake
        protocol.send_response(response)
        await _write_and_close(stream, protocol)
        return
    scope = websocket_scope(request, stream, root_path)
    socket = DirectWebSocket(stream, protocol, response, scope, route.most_bytes)
    try:
        if refusal(scope["path"], scope["raw_path"], scope["headers"], route.guard) is not None:
            await socket.refuse(403)  # the request guard's answer to a WebSocket, as on hypercorn's path
            return
        async with trio.open_nursery() as watcher:
            socket._tasks = watcher
            watcher.start_soon(socket.watch)
            await run_until_departed(socket, route.handler, route.path)
            socket._tasks = None
            watcher.cancel_scope.cancel()
        if socket.accepted and not socket.closed:
            await socket.close(1000)
        await socket.finish()
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _write_and_close(stream: trio.SocketStream, protocol: ServerProtocol) -> None:
    data = b"".join(protocol.data_to_send())
    with trio.move_on_after(CLOSE_WAIT):
        try:
            if data:
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await stream.aclose()


# ----------------------------------------------------------------------------------------------------------------------
# hypercorn's connection handler


_hypercorns_server: Any = None


async def direct_door(app: Any, config: Any, context: Any, state: Any, stream: Any) -> None:
    """hypercorn's per-connection handler (in place of its `TCPServer`): the relay's `/ws` upgrades on plain TCP are
    served by `serve_direct`; everything else by hypercorn's `TCPServer`, with what was read replayed. Reading the
    request head is bounded by hypercorn's keep-alive timeout (an idle connection is closed, as hypercorn closes it)
    and its `h11_max_incomplete_size`."""
    server = _hypercorns_server
    route = route_of(app)
    if route is None or not isinstance(stream, trio.SocketStream):
        await server(app, config, context, state, stream)
        return
    head, complete = b"", False
    with trio.move_on_after(config.keep_alive_timeout):
        try:
            head, complete = await read_head(stream, config.h11_max_incomplete_size)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            head = b""
    if complete and upgrade_target(head, route.path, config.root_path):
        await serve_direct(stream, head, route, config.root_path)
    elif head:
        await server(app, config, context, state, ReplayedStream(stream, head))
    else:  # idle past the keep-alive time-out, or gone: closed, as hypercorn closes an idle connection
        await stream.aclose()


def install_direct_door() -> None:
    """Put `direct_door` where hypercorn's trio server looks its connection handler up (once per process); an app
    without a direct route keeps hypercorn's `TCPServer`. A hypercorn without that name is left alone (`/ws` is
    then served on hypercorn's callables, relay.server.asgi_ws)."""
    global _hypercorns_server
    if _hypercorns_server is not None:
        return
    try:
        from hypercorn.trio import run
    except ImportError:  # pragma: no cover - hypercorn's layout changed
        return
    if not hasattr(run, "TCPServer"):  # pragma: no cover
        return
    _hypercorns_server = run.TCPServer
    run.TCPServer = direct_door


def serve_websocket_directly(app: Any, path: str, handler: Callable[[DirectWebSocket], Awaitable[None]],
                             most_bytes: int, first_bytes: int, guard: GuardPolicy) -> None:
    """Serve WebSocket upgrades of `path` for `app` on their own sockets (see the module docstring)."""
    install_direct_door()
    app.direct_websocket = DirectRoute(path, handler, most_bytes, min(most_bytes, first_bytes), guard)
