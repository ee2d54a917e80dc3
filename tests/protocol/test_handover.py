"""The private wire between workers for a relayed resume (relay.protocol.handover), no sockets: frames survive any
split of the byte stream, a frame over the bound or of an unknown kind is refused from its header, and the JSON
frames read back what was written."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.protocol import handover as wire


@given(st.lists(st.one_of(st.text(max_size=50), st.binary(max_size=50)), max_size=20),
       st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=10))
def test_messages_come_out_whole_and_in_order_however_the_bytes_are_split(messages: list[str | bytes],
                                                                       cuts: list[int]) -> None:
    data = b"".join(wire.message(m) for m in messages)
    reader = wire.FrameReader(1000)
    out: list[tuple[bytes, bytes]] = []
    at, i = 0, 0
    while at < len(data):
        step = cuts[i % len(cuts)]
        out += reader.feed(data[at:at + step])
        at, i = at + step, i + 1
    assert [payload.decode() if kind == wire.TEXT else payload for kind, payload in out] == messages
    kinds = [wire.TEXT if isinstance(m, str) else wire.BINARY for m in messages]
    assert [kind for kind, _ in out] == kinds


def test_a_frame_over_the_bound_is_refused_from_its_header_alone() -> None:
    reader = wire.FrameReader(10)
    assert reader.feed(wire.message(b"x" * 10)) == [(wire.BINARY, b"x" * 10)]
    with pytest.raises(wire.HandoverError, match="over the bound"):
        reader.feed(wire.message(b"x" * 11)[:5])  # the header says 11: refused before the payload is kept


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(wire.HandoverError, match="unknown frame kind"):
        wire.FrameReader(10).feed(b"Z\x00\x00\x00\x00")


def test_the_json_frames_read_back() -> None:
    (kind, payload), = wire.FrameReader(1000).feed(wire.hello({"type": "resume", "last_seq": 3}, "alice"))
    assert kind == wire.HELLO and wire.read_hello(payload) == ({"type": "resume", "last_seq": 3}, "alice")
    for left in (True, False, None):
        (_, payload), = wire.FrameReader(100).feed(wire.ended(left))
        assert wire.read_ended(payload) is left
    (_, payload), = wire.FrameReader(100).feed(wire.close(1008, "resume_failed"))
    assert wire.read_close(payload) == (1008, "resume_failed")


@pytest.mark.parametrize("payload", [b"", b"[]", b'{"resume":[],"subject":null}', b'{"resume":{},"subject":3}'])
def test_a_bad_hello_is_refused(payload: bytes) -> None:
    with pytest.raises(wire.HandoverError):
        wire.read_hello(payload)


@pytest.mark.parametrize("payload", [b'{"code":99,"reason":""}', b'{"code":"x","reason":""}', b"{}"])
def test_a_bad_close_is_refused(payload: bytes) -> None:
    with pytest.raises(wire.HandoverError):
        wire.read_close(payload)
