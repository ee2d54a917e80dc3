"""`relay.server.wsproto_mask`: wsproto's unmasking done in C gives wsproto's own bytes, for every length and for a
payload unmasked in several pieces (the key rolls over), and a frame parsed by wsproto after the switch is the frame
the client sent (no sockets)."""

from __future__ import annotations

import os
import random

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request
from wsproto.frame_protocol import XorMaskerSimple

from relay.server.wsproto_mask import CMasker, use_c_unmasking


def test_the_c_masker_gives_wsprotos_bytes_for_any_length_and_any_split() -> None:
    rng = random.Random(26)
    for length in (*range(0, 20), 125, 126, 3200, 65_537):
        key = os.urandom(4)
        payload = bytearray(os.urandom(length))
        ours, theirs = CMasker(key), XorMaskerSimple(key)
        cuts = sorted(rng.randrange(0, length + 1) for _ in range(3))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, length], strict=True)]
        got = b"".join(ours.process(piece) for piece in pieces)
        assert got == bytes(theirs.process(payload))
        assert isinstance(ours.process(bytearray(b"xy")), bytearray)


def test_hypercorns_parser_reads_a_masked_browser_frame_the_same_after_the_switch() -> None:
    use_c_unmasking()
    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="127.0.0.1", target="/ws")))
    next(server.events())
    client.receive_data(server.send(AcceptConnection()))
    next(client.events())
    pcm = os.urandom(3200)
    wire = client.send(BytesMessage(data=pcm))
    for cut in (1, 7, len(wire) // 2):  # the frame arriving in two reads
        server.receive_data(wire[:cut])
        server.receive_data(wire[cut:])
        (message,) = list(server.events())
        assert isinstance(message, BytesMessage) and bytes(message.data) == pcm
