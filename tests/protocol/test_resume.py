"""The resume token and the replay buffer (relay.protocol.resume), with no sockets."""

from __future__ import annotations

import gc

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol.resume import (
    MAX_TOKEN_CHARS,
    ReplayBuffer,
    ReplayOverflow,
    ResumeRefused,
    issue_token,
    new_key,
    read_token,
    token_route,
    with_seq,
)

SECRET = b"k" * 32


def test_a_token_names_its_route_readably_and_nothing_else() -> None:
    key = new_key()
    token = issue_token(SECRET, "relay-a-w1", key, expires=2_000_000_000)
    assert len(token) <= MAX_TOKEN_CHARS
    assert token_route(token) == "relay-a-w1"
    assert read_token(SECRET, "relay-a-w1", token, now=1_000_000_000) == key


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), "unknown"),  # a forged MAC
    (lambda t: t.replace(".2000000000.", ".2100000000."), "unknown"),  # a longer life, same MAC
    (lambda t: "not a token", "unknown"),
    (lambda t: t.replace("relay-a", "relay-b", 1), "elsewhere"),
])
def test_a_token_that_is_not_this_relays_is_refused(mutate: object, reason: str) -> None:
    token = issue_token(SECRET, "relay-a", new_key(), expires=2_000_000_000)
    with pytest.raises(ResumeRefused) as refused:
        read_token(SECRET, "relay-a", mutate(token), now=1_000_000_000)  # type: ignore[operator]
    assert refused.value.reason == reason


def test_another_secret_cannot_read_it_and_an_old_one_is_expired() -> None:
    token = issue_token(SECRET, "r", new_key(), expires=100)
    with pytest.raises(ResumeRefused, match="not valid"):
        read_token(b"x" * 32, "r", token, now=50)
    with pytest.raises(ResumeRefused) as refused:
        read_token(SECRET, "r", token, now=101)
    assert refused.value.reason == "expired"


def test_seq_is_the_first_member_of_the_json_object() -> None:
    assert orjson.loads(with_seq('{"type":"x","a":1}', 7)) == {"seq": 7, "type": "x", "a": 1}
    assert orjson.loads(with_seq("{}", 1)) == {"seq": 1}


# The property: a browser reading over connections that drop at any point, resuming each time with the newest seq
# it has, reads every message exactly once and in order, while the buffer stays within its bound; the only way it
# can fail is an explicit one (ReplayOverflow while held, "expired" on a resume), never a silent loss.
Op = st.one_of(st.tuples(st.just("push"), st.integers(min_value=0, max_value=300)),
               st.tuples(st.just("deliver"), st.integers(min_value=0, max_value=5)),
               st.tuples(st.just("drop"), st.just(0)),
               st.tuples(st.just("resume"), st.just(0)),
               st.tuples(st.just("ack"), st.just(0)))


@settings(max_examples=400, deadline=None)
@given(ops=st.lists(Op, max_size=120), max_messages=st.integers(1, 12), max_bytes=st.integers(40, 2000))
def test_any_drops_and_resumes_deliver_every_message_once_in_order(ops: list[tuple[str, int]], max_messages: int,
                                                                  max_bytes: int) -> None:
    buffer = ReplayBuffer(max_messages=max_messages, max_bytes=max_bytes)
    attached = True
    in_flight: list[str] = []  # written on the connection, not yet read by the browser
    read: list[int] = []
    sent: list[int] = []
    written = 0  # the newest seq ever written on a connection

    def expired_is_explained() -> bool:
        """A resume may only be refused as expired when the first message the browser misses was written (and lost
        in flight): one never written must never be dropped."""
        return (read[-1] if read else 0) + 1 <= written
    for op, n in ops:
        if op == "push":
            try:
                numbered = buffer.push(f'{{"type":"t","pad":"{"x" * n}"}}')
            except ReplayOverflow:
                assert not attached or n + 40 > max_bytes  # only while nobody reads, or one message over the bound
                return
            sent.append(numbered.seq)
            if attached:
                in_flight.append(numbered.frame)
                buffer.written(numbered.seq)
                written = numbered.seq
        elif op == "deliver" and attached:
            for frame in in_flight[:n]:
                read.append(orjson.loads(frame)["seq"])
            del in_flight[:n]
        elif op == "drop" and attached:
            attached, in_flight = False, []  # what was in flight is lost with the connection
        elif op == "ack" and attached:  # the page's `ack` of the newest it read
            assert buffer.acknowledge(read[-1] if read else 0)
        elif op == "resume":
            try:
                missed = buffer.since(read[-1] if read else 0)
            except ResumeRefused as refused:
                assert refused.reason == "expired" and expired_is_explained()
                return
            assert buffer.acknowledge(read[-1] if read else 0)  # as `BrowserLink.take_over` does
            in_flight = [numbered.frame for numbered in missed]
            for numbered in missed:
                buffer.written(numbered.seq)
                written = max(written, numbered.seq)
            attached = True
        assert len(buffer) <= max_messages and buffer.bytes <= max_bytes
        assert read == list(range(1, len(read) + 1))  # no gap, no duplicate
    # At the end, a last resume reads the rest: everything sent, exactly once.
    try:
        read += [numbered.seq for numbered in buffer.since(read[-1] if read else 0)]
    except ResumeRefused as refused:
        assert refused.reason == "expired" and expired_is_explained()
        return
    assert read == sent


def test_an_ack_forgets_what_the_browser_has_and_only_what_was_written() -> None:
    buffer = ReplayBuffer()
    for _ in range(100):
        buffer.written(buffer.push('{"type":"caption","text":"0123456789"}').seq)
    assert buffer.acknowledge(60)
    assert len(buffer) == 40 and buffer.bytes == sum(len(numbered.frame) for numbered in buffer.since(60))
    assert [numbered.seq for numbered in buffer.since(60)] == list(range(61, 101))
    with pytest.raises(ResumeRefused) as refused:
        buffer.since(59)  # the browser said it had 60: it cannot miss 60
    assert refused.value.reason == "expired"
    assert buffer.acknowledge(30)  # an older ack: nothing more to forget
    assert len(buffer) == 40
    assert not buffer.acknowledge(101)  # never sent: refused, nothing forgotten
    assert len(buffer) == 40
    for _ in range(10):
        buffer.push('{"type":"caption","text":"0123456789"}')  # 101..110, never written (the connection is gone)
    assert buffer.acknowledge(105)  # only what went out can be forgotten
    assert [numbered.seq for numbered in buffer.since(100)] == list(range(101, 111))
    assert buffer.acknowledge(100) and len(buffer) == 10


def test_the_kept_messages_are_no_objects_the_garbage_collector_tracks() -> None:
    # Every JSON message after `ready` is kept: were each kept as an object the collector tracks, a growing buffer
    # would fill its young generation and make the whole process collect more often (docs/performance.md, round 12).
    buffer = ReplayBuffer()
    for _ in range(200):  # the deque's first blocks
        buffer.written(buffer.push('{"type":"caption"}').seq)
    gc.disable()
    try:
        before = len(gc.get_objects())
        for _ in range(1000):
            buffer.written(buffer.push('{"type":"caption","text":"hello"}').seq)
        grown = len(gc.get_objects()) - before
    finally:
        gc.enable()
    assert len(buffer) == 1200
    assert grown < 50  # a deque block now and then, not one object per message
    assert [numbered.seq for numbered in buffer.since(1198)] == [1199, 1200]
