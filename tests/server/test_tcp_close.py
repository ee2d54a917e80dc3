"""hypercorn's trio connection closing while another task writes (relay.server.tcp_close), on a real socket pair:
with hypercorn 0.18's own `_close` the write raises BusyResourceError out of `protocol_send` (which, in a
connection's reader, cancels every connection of the server); with the write side shut under the send lock, the
write fails as a closed connection, which hypercorn handles, and the peer sees the close."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.trio.tcp_server import TCPServer

from relay.server.tcp_close import close_under_send_lock, hypercorns_close, serialise_tcp_close


class Protocol:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def handle(self, event: Any) -> None:
        self.events.append(event)


def connection() -> tuple[TCPServer, trio.SocketStream]:
    ours, theirs = trio.socket.socketpair()
    server = TCPServer(None, Config(), None, None, trio.SocketStream(ours))  # type: ignore[arg-type]
    server.protocol = Protocol()  # type: ignore[assignment]
    return server, trio.SocketStream(theirs)


async def close_while_writing(server: TCPServer, close: Callable[[TCPServer], Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(close, server)
        nursery.start_soon(server.protocol_send, RawData(b"late frame"))


async def race(times: int, close: Callable[[TCPServer], Awaitable[None]]) -> list[BaseException]:
    """Close while writing on `times` fresh connections (trio runs the two tasks in either order, at random: the
    write falls into send_eof's checkpoint in about half of the runs); what each raised, and each peer read to its
    end."""
    raised: list[BaseException] = []
    for _ in range(times):
        server, peer = connection()
        try:
            await close_while_writing(server, close)
        except BaseException as exc:
            raised.append(exc)
            await server.stream.aclose()  # the failed close never got there
        with trio.fail_after(5):
            while await peer.receive_some(100):
                pass
    return raised


async def test_hypercorns_own_close_lets_a_write_raise_busy_resource_error() -> None:
    raised = await race(40, hypercorns_close())
    assert raised and all(isinstance(exc, BaseExceptionGroup) and exc.subgroup(trio.BusyResourceError) is not None
                          for exc in raised)


async def test_a_close_under_the_send_lock_makes_the_racing_write_a_closed_connection() -> None:
    assert await race(40, close_under_send_lock) == []


async def test_a_close_during_a_write_does_not_wait_for_it() -> None:
    serialise_tcp_close()
    server, _peer = connection()
    await server.send_lock.acquire()  # a write in progress (a stalled browser holds it until TCP_USER_TIMEOUT)
    with trio.fail_after(5):
        await server._close()
    server.send_lock.release()
    with pytest.raises(trio.ClosedResourceError):
        await server.stream.send_all(b"x")
