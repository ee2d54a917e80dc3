"""The message bounds inside hypercorn's WebSocket stream, without sockets: a compressed message inflates at most
one byte past its budget (the `start`'s, then the others'), and only for the relay's own sockets."""

from __future__ import annotations

from wsproto import Connection, ConnectionType
from wsproto.events import Message

from relay.server.ws_limits import BoundedBuffer, BoundedDeflate
from tests.support.wsframes import client_frame, deflated_zeros


def server(limits: tuple[int, int] | None) -> Connection:
    extension = BoundedDeflate()
    extension.accept("permessage-deflate; client_max_window_bits")
    if limits is not None:
        extension.limit(*limits)
    return Connection(ConnectionType.SERVER, [extension])


def inflated(connection: Connection, frame: bytes) -> int:
    connection.receive_data(frame)
    return sum(len(event.data) for event in connection.events() if isinstance(event, Message))


def test_a_bomb_inflates_one_byte_past_the_starts_budget_then_the_others() -> None:
    bomb = client_frame(deflated_zeros(8 * 2**20), rsv1=True)
    assert inflated(server((4096, 1024)), bomb) == 1025
    connection = server((4096, 1024))
    assert inflated(connection, client_frame(deflated_zeros(100), rsv1=True)) == 100  # the start
    assert inflated(connection, bomb) == 4097  # a later message: the frame limit


def test_other_apps_sockets_inflate_as_wsproto_does() -> None:
    assert inflated(server(None), client_frame(deflated_zeros(2 * 2**20), rsv1=True)) == 2 * 2**20


def test_the_buffer_holds_the_start_to_its_own_limit_and_later_messages_to_theirs() -> None:
    buffer = BoundedBuffer(16 * 2**20, 4096, 1024)
    assert buffer.max_length == 1024
    buffer.clear()  # the start was handed over
    assert buffer.max_length == 4096
