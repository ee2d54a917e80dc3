"""The LITE `ws_url` protocol without sockets: frame builders, the event parser, the chunking policy."""

from __future__ import annotations

import base64
import json

import pytest
import trio
import trio.testing

from relay.avatars import AvatarStateChanged
from relay.avatars.lite import (
    LiteAudioStream,
    avatar_event_for,
)
from relay.protocol.audio import AudioFormat
from relay.protocol.lite import (
    MAX_FRAME_BYTES,
    MAX_SPEAK_PCM_BYTES,
    AgentStateUpdated,
    AudioBufferAppended,
    AudioBufferCleared,
    AudioBufferCommitted,
    LiteProtocolError,
    ServerError,
    ServerWarning,
    SessionStateUpdated,
    SpeakEnded,
    SpeakInterrupted,
    SpeakStarted,
    build_interrupt,
    build_keep_alive,
    build_speak,
    build_speak_end,
    build_start_listening,
    build_stop_listening,
    parse_server_event,
    split_speak_audio,
    turn_event_id,
    turn_from_event_id,
)


def test_speak_frame_carries_base64_pcm_and_event_id() -> None:
    pcm = bytes(range(256)) * 4
    frame = json.loads(build_speak("turn-7", pcm))
    assert frame == {"type": "agent.speak", "event_id": "turn-7", "audio": base64.b64encode(pcm).decode()}


def test_speak_frame_accepts_a_memoryview_slice() -> None:
    pcm = b"\x01\x02\x03\x04\x05\x06"
    frame = json.loads(build_speak("turn-1", memoryview(pcm)[2:]))
    assert base64.b64decode(frame["audio"]) == pcm[2:]


def test_speak_frame_refuses_half_a_sample() -> None:
    with pytest.raises(ValueError):
        build_speak("turn-1", b"\x00\x01\x02")


@pytest.mark.parametrize(
    ("builder", "kind"),
    [
        (build_speak_end, "agent.speak_end"),
        (build_interrupt, "agent.interrupt"),
        (build_start_listening, "agent.start_listening"),
        (build_stop_listening, "agent.stop_listening"),
        (build_keep_alive, "session.keep_alive"),
    ],
)
def test_command_frames_are_exactly_type_and_event_id(builder, kind) -> None:  # type: ignore[no-untyped-def]
    assert json.loads(builder("x-3")) == {"type": kind, "event_id": "x-3"}


def test_turn_event_ids_round_trip_and_foreign_ids_give_none() -> None:
    assert turn_event_id(7) == "turn-7"
    assert turn_from_event_id("turn-7") == 7
    assert turn_from_event_id(turn_event_id(12, "hg"), "hg") == 12
    assert turn_from_event_id("turn-7", "hg") is None
    assert turn_from_event_id("keep-alive-1") is None
    assert turn_from_event_id("turn-") is None
    assert turn_from_event_id("turn-x") is None
    assert turn_from_event_id(None) is None


@pytest.mark.parametrize(
    ("message", "event"),
    [
        ({"type": "session.state_updated", "state": "connected"}, SessionStateUpdated("connected")),
        ({"type": "session.state_updated", "state": "closing"}, SessionStateUpdated("closing")),
        ({"type": "agent.speak_started", "event_id": "turn-7", "task": {"id": "t1"}},
         SpeakStarted("turn-7", "t1")),
        ({"type": "agent.speak_ended", "event_id": "turn-7", "task": {"id": "t1"}},
         SpeakEnded("turn-7", "t1")),
        ({"type": "agent.speak_ended", "event_id": "turn-7"}, SpeakEnded("turn-7", None)),
        ({"type": "agent.speak_interrupted", "event_id": "turn-7"}, SpeakInterrupted("turn-7", None)),
        ({"type": "agent.audio_buffer_appended", "event_id": "turn-2"}, AudioBufferAppended("turn-2")),
        ({"type": "agent.audio_buffer_committed", "event_id": "turn-2"}, AudioBufferCommitted("turn-2")),
        ({"type": "agent.audio_buffer_cleared"}, AudioBufferCleared(None)),
        ({"type": "agent.state_updated", "previous_state": "idle", "new_state": "talking"},
         AgentStateUpdated("idle", "talking")),
        ({"type": "error", "error": {"type": "invalid_audio", "message": "bad"}},
         ServerError("invalid_audio", "bad")),
        ({"type": "error", "message": "plain"}, ServerError(None, "plain")),
        ({"type": "warning", "warning": {"type": "slow", "message": "lagging"}},
         ServerWarning("slow", "lagging")),
        ({"type": "warning", "message": "lagging"}, ServerWarning(None, "lagging")),
    ],
)
def test_every_server_event_parses_to_its_dataclass(message, event) -> None:  # type: ignore[no-untyped-def]
    assert parse_server_event(json.dumps(message)) == event
    assert parse_server_event(json.dumps(message).encode()) == event


def test_unknown_event_types_are_ignored() -> None:
    assert parse_server_event('{"type":"agent.something_new","x":1}') is None


@pytest.mark.parametrize("frame", ["not json", "[1,2]", '{"no_type":1}', '{"type":5}'])
def test_malformed_frames_raise_a_protocol_error(frame: str) -> None:
    with pytest.raises(LiteProtocolError):
        parse_server_event(frame)


def test_wrong_field_types_do_not_crash_the_parser() -> None:
    frame = '{"type":"agent.speak_started","event_id":5,"task":"x"}'
    assert parse_server_event(frame) == SpeakStarted(None, None)
    assert parse_server_event('{"type":"session.state_updated"}') == SessionStateUpdated("")


def test_speak_started_and_ended_become_avatar_state_changes() -> None:
    assert avatar_event_for(SpeakStarted("turn-3", None)) == AvatarStateChanged(speaking=True, turn=3)
    assert avatar_event_for(SpeakEnded("turn-3", None)) == AvatarStateChanged(speaking=False, turn=3)
    assert avatar_event_for(SpeakInterrupted("turn-3", None)) == AvatarStateChanged(speaking=False, turn=3)
    assert avatar_event_for(SpeakStarted("other", None)) == AvatarStateChanged(speaking=True, turn=None)
    assert avatar_event_for(AudioBufferAppended("turn-3")) is None
    assert avatar_event_for(AgentStateUpdated("idle", "talking")) is None


def test_a_small_chunk_goes_out_whole_and_at_once() -> None:
    pcm = b"\x01\x00" * 2400  # 100 ms
    assert [bytes(p) for p in split_speak_audio(pcm)] == [pcm]


def test_empty_audio_gives_no_packet() -> None:
    assert list(split_speak_audio(b"")) == []


def test_a_long_chunk_is_split_into_whole_sample_packets_that_rejoin_exactly() -> None:
    pcm = bytes(range(256)) * 1000  # 256 000 bytes, ~5.3 s
    packets = list(split_speak_audio(pcm, max_bytes=48_001))
    assert all(len(p) % 2 == 0 and len(p) <= 48_000 for p in packets)
    assert b"".join(packets) == pcm


def test_the_largest_packet_stays_far_below_the_one_megabyte_frame_limit() -> None:
    pcm = b"\x00\x01" * (MAX_SPEAK_PCM_BYTES * 3)
    sizes = [len(build_speak("turn-999999", p)) for p in split_speak_audio(pcm)]
    assert max(sizes) < MAX_FRAME_BYTES / 10


# ---------------------------------------------------------------------------------------------------------
# LiteAudioStream ordering, with a fake socket (no network)


class FakeSocket:
    """Records sent frames; `gate` (when set) holds every send until opened, like a peer that reads slowly."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []
        self.gate: trio.Event | None = None

    async def send_text(self, message: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.sent.append(json.loads(message))


def make_speaker(*, connected: bool = True) -> tuple[LiteAudioStream, FakeSocket]:
    sock = FakeSocket()
    speaker = LiteAudioStream(sock, "turn")  # type: ignore[arg-type]
    if connected:
        speaker.connected.set()
    return speaker, sock


PCM24K = AudioFormat("pcm", 24000)


async def test_a_chunk_queued_behind_an_interrupt_is_never_sent() -> None:
    speaker, sock = make_speaker()
    sock.gate = trio.Event()
    three_packets = b"\x01\x00" * (MAX_SPEAK_PCM_BYTES * 3 // 2)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(speaker.speak_audio, three_packets, PCM24K, 1)
            await trio.testing.wait_all_tasks_blocked()  # the first packet is stuck in send
            nursery.start_soon(speaker.interrupt, 1)
            await trio.testing.wait_all_tasks_blocked()
            sock.gate.set()
    assert [(f["type"], f["event_id"]) for f in sock.sent] == [("agent.speak", "turn-1"),
                                                               ("agent.interrupt", "turn-1")]


async def test_after_an_interrupt_older_turns_are_dropped_and_newer_ones_flow() -> None:
    speaker, sock = make_speaker()
    chunk = b"\x00\x01" * 2400
    await speaker.speak_audio(chunk, PCM24K, 5)
    await speaker.interrupt(5)
    await speaker.speak_audio(chunk, PCM24K, 5)
    await speaker.speak_audio(chunk, PCM24K, 4)
    await speaker.end_turn(5)
    await speaker.speak_audio(chunk, PCM24K, 6)
    await speaker.end_turn(6)
    assert [(f["type"], f["event_id"]) for f in sock.sent] == [
        ("agent.speak", "turn-5"), ("agent.interrupt", "turn-5"),
        ("agent.speak", "turn-6"), ("agent.speak_end", "turn-6"),
    ]


async def test_end_turn_flushes_the_resampler_tail_before_speak_end() -> None:
    speaker, sock = make_speaker()
    pcm = b"\x10\x00" * 1600
    await speaker.speak_audio(pcm, AudioFormat("pcm", 16000), 2)
    await speaker.end_turn(2)
    speaks = [f for f in sock.sent if f["type"] == "agent.speak"]
    total = sum(len(base64.b64decode(str(f["audio"]))) for f in speaks)
    assert sock.sent[-1] == {"type": "agent.speak_end", "event_id": "turn-2"}
    assert len(speaks) == 2  # the chunk itself, then the filter's tail
    assert total == 2400 * 2  # 0.1 s at 24 kHz, no more, no less


async def test_a_turn_without_audio_sends_no_speak_end() -> None:
    speaker, sock = make_speaker()
    await speaker.end_turn(9)
    assert sock.sent == []


async def test_keep_alive_and_listening_frames_have_distinct_event_ids() -> None:
    speaker, sock = make_speaker()
    await speaker.keep_alive()
    await speaker.keep_alive()
    await speaker.set_listening(True)
    await speaker.set_listening(False)
    assert [f["type"] for f in sock.sent] == ["session.keep_alive", "session.keep_alive",
                                              "agent.start_listening", "agent.stop_listening"]
    assert len({f["event_id"] for f in sock.sent}) == 4


async def test_each_agent_chunk_goes_out_immediately_as_one_packet() -> None:
    speaker, sock = make_speaker()
    await speaker.speak_audio(b"\x00\x01" * 2400, PCM24K, 1)
    assert len(sock.sent) == 1
    await speaker.speak_audio(b"\x00\x01" * 240, PCM24K, 1)
    assert len(sock.sent) == 2


async def test_frames_before_connected_are_held_in_order_and_sent_once_it_comes() -> None:
    speaker, sock = make_speaker(connected=False)
    chunk = b"\x00\x01" * 2400
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            async def speak_turn() -> None:
                await speaker.set_listening(False)
                await speaker.speak_audio(chunk, PCM24K, 1)
                await speaker.end_turn(1)

            nursery.start_soon(speak_turn)
            await trio.testing.wait_all_tasks_blocked()
            assert sock.sent == []  # LiveAvatar: "wait for connected before sending any command"
            speaker.connected.set()
    assert [(f["type"], f.get("event_id")) for f in sock.sent] == [
        ("agent.stop_listening", "listen-1"), ("agent.speak", "turn-1"), ("agent.speak_end", "turn-1")]
