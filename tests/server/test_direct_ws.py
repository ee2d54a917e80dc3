"""relay.server.direct_ws without a server: the request head's routing, the replayed stream hypercorn gets, and one
`serve_direct` connection on a real loopback socket pair — a browser leaving while the handler reads nothing cancels
it, messages sent meanwhile wait in order, and a frame written without waiting (`send_nowait`) that the kernel takes
only in part is finished before anything else is written."""

from __future__ import annotations

import base64
import os
import socket as socket_module
import struct
from collections.abc import Awaitable, Callable

import trio
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from relay.server.direct_ws import (
    DirectRoute,
    DirectWebSocket,
    ReplayedStream,
    encode_frame,
    read_head,
    serve_direct,
    upgrade_target,
)
from relay.server.request_guard import GuardPolicy

HEAD = (b"GET /ws?token=abc HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")


def test_only_a_websocket_upgrade_of_the_path_is_served_directly() -> None:
    assert upgrade_target(HEAD, "/ws", "")
    assert upgrade_target(HEAD.replace(b"/ws?", b"/relay/ws?"), "/ws", "/relay")
    assert upgrade_target(HEAD.replace(b"/ws?", b"/%77s?"), "/ws", "")  # percent-decoded, as hypercorn routes it
    assert not upgrade_target(HEAD.replace(b"/ws?", b"/other?"), "/ws", "")
    assert not upgrade_target(HEAD.replace(b"Upgrade: websocket", b"Upgrade: h2c"), "/ws", "")
    assert not upgrade_target(HEAD.replace(b"GET ", b"POST "), "/ws", "")
    assert not upgrade_target(HEAD.replace(b"HTTP/1.1", b"HTTP/1.0", 1), "/ws", "")
    assert not upgrade_target(b"\x16\x03\x01\x02\x00", "/ws", "")  # a TLS hello


async def test_the_head_is_read_to_its_end_or_its_bound_and_replayed_whole() -> None:
    left, right = _socket_pair()
    async with left, right:
        await left.send_all(HEAD[:10])
        await left.send_all(HEAD[10:] + b"after")
        head, complete = await read_head(right, 16384)
        assert complete and head.startswith(HEAD)
        replayed = ReplayedStream(right, head)
        again = b""
        while len(again) < len(head):
            again += await replayed.receive_some(7)
        assert again == head
        await left.send_all(b"more")
        assert await replayed.receive_some(100) == b"more"
        assert replayed.socket is right.socket  # hypercorn reads the socket's addresses through it
        await left.send_all(b"x" * 20000)
        head, complete = await read_head(right, 16384)
        assert not complete and len(head) > 16384


def _socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


class Browser:
    """The client side, with `websockets`' client protocol over the other end of the pair."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.protocol = ClientProtocol(parse_uri("ws://127.0.0.1/ws"), max_size=None)
        self.frames: list[Frame] = []

    async def send(self, frame_bytes: Callable[[ClientProtocol], None]) -> None:
        frame_bytes(self.protocol)
        await self.stream.send_all(b"".join(self.protocol.data_to_send()))

    async def frame(self) -> Frame:
        # (frames that came with the handshake's answer are already parsed: taken first)
        self.frames += [e for e in self.protocol.events_received() if isinstance(e, Frame)]
        while not self.frames:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.protocol.receive_data(data)
            self.frames += [e for e in self.protocol.events_received() if isinstance(e, Frame)]
        return self.frames.pop(0)


async def serving(handler: Callable[[DirectWebSocket], Awaitable[None]],
                  test: Callable[[Browser], Awaitable[None]]) -> None:
    route = DirectRoute("/ws", handler, 65536, 4096, GuardPolicy(frozenset({"*"})))
    server_end, client_end = _socket_pair()
    browser = Browser(client_end)
    request = browser.protocol.connect()
    browser.protocol.send_request(request)
    head = b"".join(browser.protocol.data_to_send())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_direct, server_end, head, route, "")
        data = b""
        while b"\r\n\r\n" not in data:
            data += await client_end.receive_some(65536)
        browser.protocol.receive_data(data)
        assert browser.protocol.handshake_exc is None
        await test(browser)
        await client_end.aclose()  # the browser leaves: the handler is cancelled if it still runs


async def test_a_browser_leaving_while_nothing_reads_cancels_the_handler() -> None:
    cancelled = trio.Event()

    async def handler(socket: DirectWebSocket) -> None:
        await socket.accept()
        try:
            await trio.sleep_forever()  # an avatar's set-up: nothing reads the socket
        except trio.Cancelled:
            cancelled.set()
            raise

    async def test(browser: Browser) -> None:
        await browser.send(lambda p: p.send_close(1000))
        with trio.fail_after(10):
            await cancelled.wait()
            closing = await browser.frame()
        assert closing.opcode is Opcode.CLOSE and struct.unpack("!H", closing.data[:2])[0] == 1000

    await serving(handler, test)


async def test_messages_sent_while_nothing_reads_wait_in_order() -> None:
    received: list[str | bytes | None] = []
    proceed = trio.Event()
    sockets: list[DirectWebSocket] = []

    async def handler(socket: DirectWebSocket) -> None:
        sockets.append(socket)
        await socket.accept()
        await proceed.wait()
        for _ in range(4):
            received.append(await socket.receive())
        await socket.send("done")

    async def test(browser: Browser) -> None:
        await browser.send(lambda p: p.send_text(b"one"))
        await browser.send(lambda p: p.send_binary(b"two"))
        await browser.send(lambda p: p.send_binary(b""))
        await browser.send(lambda p: p.send_text(b"four"))
        with trio.fail_after(10):
            while len(sockets[0]._messages) < 4:  # the watcher reads them while the handler does not
                await trio.sleep(0.01)
        proceed.set()
        with trio.fail_after(10):
            assert (await browser.frame()).data == b"done"
        assert received == ["one", b"two", None, "four"]

    await serving(handler, test)


async def test_frames_read_in_a_row_move_the_watchers_timer_at_most_once_per_watch_period() -> None:
    """Moving a Trio deadline re-registers it: done per frame (twice, as round 6 first did) it was 2% of the relay's
    CPU at 50 conversations. A conversation reading frames in a row leaves the watcher's timer alone until it comes
    within WATCH_AFTER."""
    moved = 0
    received: list[str | bytes | None] = []

    async def handler(socket: DirectWebSocket) -> None:
        nonlocal moved
        await socket.accept()
        for _ in range(20):
            before = socket._arm.deadline
            received.append(await socket.receive())
            moved += socket._arm.deadline != before

    async def test(browser: Browser) -> None:
        for i in range(20):
            await browser.send(lambda p, i=i: p.send_binary(bytes([i, i])))
            await trio.sleep(0.005)
        with trio.fail_after(10):
            while len(received) < 20:
                await trio.sleep(0.01)

    await serving(handler, test)
    assert received == [bytes([i, i]) for i in range(20)]
    assert moved <= 1


async def test_a_frame_the_kernel_takes_in_part_is_finished_before_the_next() -> None:
    big = os.urandom(2_000_000)

    async def handler(socket: DirectWebSocket) -> None:
        await socket.accept()
        socket._stream.socket.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_SNDBUF, 4096)
        assert socket.send_nowait(big)  # taken: the rest is written by the connection's task
        assert not socket.send_nowait(b"second")  # a send is under way: the caller must send the ordinary way
        await socket.send(b"second")
        await socket.receive()

    async def test(browser: Browser) -> None:
        with trio.fail_after(20):
            first = await browser.frame()
            second = await browser.frame()
        assert first.data == big and second.data == b"second"

    await serving(handler, test)



async def test_frames_sent_together_leave_in_one_write_in_order() -> None:
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    async def handler(socket: DirectWebSocket) -> None:
        await socket.accept()
        os.write = counting_write  # what `send_nowait` writes with, for this one call
        try:
            assert socket.send_nowait('{"type":"agent_alignment","turn":1}', b"\x01\x02" * 800)
        finally:
            os.write = real_write
        await socket.receive()

    async def test(browser: Browser) -> None:
        with trio.fail_after(20):
            caption = await browser.frame()
            audio = await browser.frame()
        assert (caption.opcode, caption.data) == (Opcode.TEXT, b'{"type":"agent_alignment","turn":1}')
        assert (audio.opcode, audio.data) == (Opcode.BINARY, b"\x01\x02" * 800)

    await serving(handler, test)
    assert len(writes) == 1


def test_a_frame_is_encoded_as_websockets_protocol_writes_it() -> None:
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    for size in (0, 1, 125, 126, 127, 65535, 65536, 70000):
        for data in ("é" * (size // 2) + "a" * (size % 2), bytes(range(256)) * (size // 256) + bytes(size % 256)):
            protocol = ServerProtocol(state=State.OPEN, max_size=None)
            if isinstance(data, str):
                protocol.send_text(data.encode())
            else:
                protocol.send_binary(data)
            assert encode_frame(data) == b"".join(protocol.data_to_send()), (type(data), size)
