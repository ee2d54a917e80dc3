"""The LITE `ws_url` protocol without sockets: frame builders, the event parser, the chunking policy."""

from __future__ import annotations

import base64
import json

import pytest

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
