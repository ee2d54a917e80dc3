"""`relay.net.wsclient` against a scripted WebSocket server on loopback (the `websockets` sans-I/O `ServerProtocol`
over a Trio TCP listener), so each test controls exactly which frames the client sees."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from relay.net.wsclient import WebSocketClosed, WebSocketRejected, open_websocket

pytestmark = pytest.mark.timeout(60)


class Peer:
    """The server side of one connection."""

    def __init__(self, stream: trio.SocketStream, protocol: ServerProtocol) -> None:
        self.stream = stream
        self.protocol = protocol
        self.frames: list[Frame] = []

    async def flush(self) -> None:
        data = b"".join(self.protocol.data_to_send())
        if data:
            await self.stream.send_all(data)

    async def next_frame(self) -> Frame:
        while not self.frames:
            data = await self.stream.receive_some(65536)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            self.frames.extend(e for e in self.protocol.events_received() if isinstance(e, Frame))
            await self.flush()
            if not data and not self.frames:
                raise EOFError
        return self.frames.pop(0)


Handler = Callable[[Peer], Awaitable[None]]
Serve = Callable[..., Awaitable[str]]


async def _serve(handler: Handler, status: int, stream: trio.SocketStream) -> None:
    protocol = ServerProtocol()
    request: Request | None = None
    while request is None:
        protocol.receive_data(await stream.receive_some(65536))
        request = next((e for e in protocol.events_received() if isinstance(e, Request)), None)
    if status == 101:
        protocol.send_response(protocol.accept(request))
    else:
        protocol.send_response(protocol.reject(status, "no\n"))
    peer = Peer(stream, protocol)
    await peer.flush()
    if status == 101:
        await handler(peer)
    await stream.aclose()


@pytest.fixture
async def serve(nursery: trio.Nursery) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    async def start(handler: Handler, status: int = 101) -> str:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, functools.partial(_serve, handler, status), 0,
                                                           host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        return f"ws://127.0.0.1:{port}/path?x=1"

    yield start


async def test_messages_before_the_close_are_returned_then_the_close_code_on_every_call(serve: Serve) -> None:
    async def handler(peer: Peer) -> None:
        peer.protocol.send_text(b'{"n":1}')
        peer.protocol.send_binary(b"\x00\x01")
        peer.protocol.send_close(4001, "bye now")
        await peer.flush()
        with trio.move_on_after(2):
            await peer.next_frame()  # the client's answering close

    url = await serve(handler)
    with trio.fail_after(5):
        async with open_websocket(url) as ws:
            assert await ws.receive() == '{"n":1}'
            assert await ws.receive() == b"\x00\x01"
            for _ in range(2):
                with pytest.raises(WebSocketClosed) as caught:
                    await ws.receive()
                assert (caught.value.code, caught.value.reason) == (4001, "bye now")
            with pytest.raises(WebSocketClosed):
                await ws.send_text("late")


async def test_a_ping_is_answered_while_receive_waits(serve: Serve) -> None:
    pongs: list[bytes] = []

    async def handler(peer: Peer) -> None:
        peer.protocol.send_ping(b"are you there")
        await peer.flush()
        frame = await peer.next_frame()
        if frame.opcode is Opcode.PONG:
            pongs.append(bytes(frame.data))
        peer.protocol.send_text(b"after the pong")
        await peer.flush()
        with trio.move_on_after(2):
            await peer.next_frame()

    url = await serve(handler)
    with trio.fail_after(5):
        async with open_websocket(url) as ws:
            assert await ws.receive() == "after the pong"
    assert pongs == [b"are you there"]


async def test_a_fragmented_text_message_is_reassembled(serve: Serve) -> None:
    async def handler(peer: Peer) -> None:
        peer.protocol.send_text("héllo ".encode(), fin=False)
        peer.protocol.send_continuation(b"wor", fin=False)
        peer.protocol.send_continuation(b"ld", fin=True)
        await peer.flush()
        with trio.move_on_after(2):
            await peer.next_frame()

    url = await serve(handler)
    with trio.fail_after(5):
        async with open_websocket(url) as ws:
            assert await ws.receive() == "héllo world"


async def test_sent_text_arrives_and_leaving_closes_with_1000(serve: Serve) -> None:
    seen: list[tuple[Opcode, bytes]] = []

    async def handler(peer: Peer) -> None:
        with trio.move_on_after(3):
            while True:
                frame = await peer.next_frame()
                seen.append((frame.opcode, bytes(frame.data)))
                if frame.opcode is Opcode.CLOSE:
                    return

    url = await serve(handler)
    with trio.fail_after(5):
        async with open_websocket(url) as ws:
            await ws.send_text("one")
            await ws.send_text("two " * 5000)
    assert seen[:2] == [(Opcode.TEXT, b"one"), (Opcode.TEXT, b"two " * 5000)]
    assert seen[2][0] is Opcode.CLOSE and seen[2][1][:2] == (1000).to_bytes(2, "big")


async def test_several_texts_sent_together_go_out_in_order_in_one_write(serve: Serve) -> None:
    reads: list[list[bytes]] = []
    read = trio.Event()

    async def handler(peer: Peer) -> None:
        data = await peer.stream.receive_some(65536)  # one small write is one read on loopback
        peer.protocol.receive_data(data)
        reads.append([bytes(e.data) for e in peer.protocol.events_received() if isinstance(e, Frame)])
        read.set()
        with trio.move_on_after(3):
            while (await peer.next_frame()).opcode is not Opcode.CLOSE:
                pass

    url = await serve(handler)
    with trio.fail_after(5):
        async with open_websocket(url) as ws:
            writes: list[bytes] = []
            stream_send_all = ws._stream.send_all

            async def counted_send_all(data: bytes) -> None:
                writes.append(bytes(data))
                await stream_send_all(data)

            ws._stream.send_all = counted_send_all  # type: ignore[method-assign,assignment]
            await ws.send_texts(["one", b"two", "three"])
            await read.wait()  # (the close frame comes after)
    assert reads == [[b"one", b"two", b"three"]]
    assert len(writes[0]) == 3 * (2 + 4) + len("onetwothree")  # one write: three masked frames' headers and data


async def test_closing_while_another_task_receives_is_prompt(serve: Serve) -> None:
    # "Prompt" without a wall-clock threshold: the close may wait 30 s for the peer's answer, and the peer would
    # hold the connection 30 s; a close that did not see the answer the receiving task got would take that long,
    # so the generous 10 s bound tells the two apart however slow the machine is.
    async def handler(peer: Peer) -> None:
        with trio.move_on_after(30):
            await peer.next_frame()  # the client's close: answered by the protocol on flush

    url = await serve(handler)
    with trio.fail_after(10):
        async with open_websocket(url) as ws, trio.open_nursery() as nursery:
            async def receive_until_closed() -> None:
                with pytest.raises(WebSocketClosed) as caught:
                    while True:
                        await ws.receive()
                assert caught.value.code == 1000

            nursery.start_soon(receive_until_closed)
            await trio.testing.wait_all_tasks_blocked()
            await ws.aclose(1000, "done", wait=30)


async def test_a_refused_upgrade_carries_the_http_status(serve: Serve) -> None:
    async def handler(peer: Peer) -> None:
        raise AssertionError("not reached")

    url = await serve(handler, status=403)
    with trio.fail_after(5), pytest.raises(WebSocketRejected) as caught:
        async with open_websocket(url):
            pass
    assert caught.value.status_code == 403


async def test_a_connection_lost_without_a_close_frame_is_1006(serve: Serve) -> None:
    async def handler(peer: Peer) -> None:
        peer.protocol.send_text(b"last words")
        await peer.flush()

    url = await serve(handler)
    with trio.fail_after(5):
        async with open_websocket(url) as ws:
            assert await ws.receive() == "last words"
            with pytest.raises(WebSocketClosed) as caught:
                await ws.receive()
            assert caught.value.code == 1006
