"""Our browser protocol without sockets: every client frame parses to its event or to a clear ProtocolError, and every
server frame has the exact shape docs/protocol.md promises."""

from __future__ import annotations

import base64
from typing import get_args

import orjson
import pytest

from relay.avatars import AvatarInfo
from relay.protocol import browser as bp


def parse(frame: object) -> bp.ClientEvent:
    return bp.parse_text_frame(orjson.dumps(frame).decode())


def test_every_text_frame_is_a_client_event_and_every_known_type_is_parsed() -> None:
    # Adding a client message is a frame class plus a member of TextFrame and of ClientEvent; the known types follow
    # from TextFrame, so none can be forgotten (a forgotten one answered "unknown message type").
    # (A dropped `client_metrics` report is the relay's reading of a bad one, not a frame of its own.)
    assert (set(get_args(bp.TextFrame)) - {bp.AudioText}
            == set(get_args(bp.ClientEvent)) - {bp.Audio, bp.DroppedClientMetrics})
    assert len(bp.KNOWN_TYPES) == len(get_args(bp.TextFrame))
    for kind in bp.KNOWN_TYPES:
        try:
            parse({"type": kind})
        except bp.ProtocolError as exc:
            assert "unknown" not in str(exc)


def test_start_with_every_field() -> None:
    event = parse({"type": "start", "dynamic_variables": {"name": "Ana", "visits": 3, "vip": True, "score": 0.5},
                   "overrides": {"agent": {"language": "es"}}, "user_id": "u-1", "token": "t"})
    assert isinstance(event, bp.Start)
    assert event.dynamic_variables == {"name": "Ana", "visits": 3, "vip": True, "score": 0.5}
    assert event.overrides == {"agent": {"language": "es"}}
    assert (event.user_id, event.token) == ("u-1", "t")


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_start_takes_a_w3c_traceparent() -> None:
    event = parse({"type": "start", "traceparent": TRACEPARENT})
    assert isinstance(event, bp.Start) and event.traceparent == TRACEPARENT


@pytest.mark.parametrize("traceparent", [
    TRACEPARENT.upper(),  # the specification's hex is lowercase
    TRACEPARENT.replace("00-", "01-", 1),  # only version 00 is known
    "ff" + TRACEPARENT[2:],
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
    TRACEPARENT + "-extra", TRACEPARENT[:-1], TRACEPARENT.replace("-", "_"), " " + TRACEPARENT[1:],
    "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", "", 1, None.__class__.__name__ * 20,
])
def test_start_refuses_a_malformed_traceparent_clearly(traceparent: object) -> None:
    with pytest.raises(bp.ProtocolError, match="traceparent") as refused:
        parse({"type": "start", "traceparent": traceparent})
    assert len(str(traceparent)) < 2 or str(traceparent) not in str(refused.value)  # never echoed


def test_start_with_no_fields_and_unknown_extra_fields() -> None:
    event = parse({"type": "start", "future_field": 1})
    assert isinstance(event, bp.Start)
    assert event.dynamic_variables == {} and event.overrides == {} and event.user_id is None


@pytest.mark.parametrize(("frame", "expected"), [
    ({"type": "text", "text": "hi"}, bp.Text(type="text", text="hi")),
    ({"type": "context", "text": "on page 2"}, bp.Context(type="context", text="on page 2")),
    ({"type": "activity"}, bp.Activity(type="activity")),
    ({"type": "interrupt"}, bp.Interrupt(type="interrupt")),
    ({"type": "stop"}, bp.Stop(type="stop")),
    ({"type": "ack", "seq": 12}, bp.Ack(type="ack", seq=12)),
    ({"type": "feedback", "score": "dislike", "event_id": 4},
     bp.Feedback(type="feedback", score="dislike", event_id=4)),
    ({"type": "tool_result", "tool_call_id": "c1", "result": {"a": 1}, "is_error": True},
     bp.ToolResult(type="tool_result", tool_call_id="c1", result={"a": 1}, is_error=True)),
])
def test_each_client_message(frame: dict[str, object], expected: bp.ClientEvent) -> None:
    assert parse(frame) == expected


def test_base64_audio_message_is_audio() -> None:
    pcm = b"\x01\x02\x03\x04"
    assert parse({"type": "audio", "audio": base64.b64encode(pcm).decode()}) == bp.Audio(pcm)


@pytest.mark.parametrize(("text", "message"), [
    ("not json", "text frames must be JSON objects"),
    ("[1, 2]", "text frames must be JSON objects"),
    ('"start"', "text frames must be JSON objects"),
    ("{}", "message has no string 'type'"),
    ('{"type": 5}', "message has no string 'type'"),
    ('{"type": "dance"}', "unknown message type 'dance'"),
    ('{"type": "text"}', "invalid 'text' message: text: Field required"),
    ('{"type": "text", "text": ""}', "invalid 'text' message: text: String should have at least 1 character"),
    ('{"type": "text", "text": 5}', "invalid 'text' message: text: Input should be a valid string"),
    ('{"type": "feedback", "score": "meh", "event_id": 1}', "invalid 'feedback' message: score"),
    ('{"type": "feedback", "score": "like", "event_id": "1"}', "event_id: Input should be a valid integer"),
    ('{"type": "start", "user_id": 5}', "invalid 'start' message: user_id"),
    ('{"type": "start", "dynamic_variables": {"a": [1]}}', "invalid 'start' message: dynamic_variables.a"),
    ('{"type": "start", "dynamic_variables": []}', "invalid 'start' message: dynamic_variables"),
    ('{"type": "tool_result", "result": 1}', "invalid 'tool_result' message: tool_call_id: Field required"),
    ('{"type": "audio", "audio": "***"}', "'audio' must be base64"),
    ('{"type": "audio", "audio": "AA=="}', "an even number of bytes"),
    ('{"type": "ack"}', "invalid 'ack' message: seq: Field required"),
    ('{"type": "ack", "seq": -1}', "invalid 'ack' message: seq: Input should be greater than or equal to 0"),
    ('{"type": "ack", "seq": "3"}', "invalid 'ack' message: seq: Input should be a valid integer"),
])
def test_bad_frames_get_a_message_saying_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(bp.ProtocolError) as caught:
        bp.parse_text_frame(text)
    assert message in str(caught.value)


def test_a_long_unknown_type_is_not_echoed_in_full() -> None:
    with pytest.raises(bp.ProtocolError) as caught:
        bp.parse_text_frame(orjson.dumps({"type": "x" * 10_000}).decode())
    assert len(str(caught.value)) < 100


def test_binary_audio_must_be_whole_samples() -> None:
    assert bp.check_audio(b"\x00\x01") == bp.Audio(b"\x00\x01")
    with pytest.raises(bp.ProtocolError):
        bp.check_audio(b"\x00")


def test_tool_results_become_strings_for_the_agent() -> None:
    assert bp.tool_result_text("12:00") == "12:00"
    assert bp.tool_result_text({"time": "12:00"}) == '{"time":"12:00"}'
    assert bp.tool_result_text(None) == "null"


def test_ready_frame() -> None:
    avatar = AvatarInfo("liveavatar", "s1", "wss://lk.example", "viewer-token", False)
    frame = orjson.loads(bp.ready(conversation_id="conv_1", avatar=avatar, input_sample_rate=16000,
                                  output_sample_rate=22050))
    assert frame == {
        "type": "ready", "conversation_id": "conv_1",
        "avatar": {"provider": "liveavatar", "session_id": "s1", "livekit_url": "wss://lk.example",
                   "access_token": "viewer-token", "simulated": False},
        "input_audio": {"encoding": "pcm_s16le", "sample_rate": 16000},
        "output_audio": {"encoding": "pcm_s16le", "sample_rate": 22050},
    }
    voice_only = orjson.loads(bp.ready(conversation_id="c", avatar=None, input_sample_rate=8000,
                                       output_sample_rate=8000))
    assert voice_only["avatar"] is None


@pytest.mark.parametrize(("frame", "expected"), [
    (bp.user_transcript("hi", 3, False), {"type": "user_transcript", "text": "hi", "event_id": 3, "final": False}),
    (bp.agent_response("hello", 4), {"type": "agent_response", "text": "hello", "event_id": 4}),
    (bp.agent_response_correction("hel", "hello", 4),
     {"type": "agent_response_correction", "text": "hel", "original": "hello", "event_id": 4}),
    (bp.interruption(5), {"type": "interruption", "event_id": 5}),
    (bp.tool_call("c1", "get_time", {"tz": "UTC"}),
     {"type": "tool_call", "tool_call_id": "c1", "tool_name": "get_time", "parameters": {"tz": "UTC"}}),
    (bp.avatar_speaking("hello", 900),
     {"type": "avatar_speaking", "text": "hello", "duration_ms": 900, "event_id": None}),
    (bp.avatar_state(True), {"type": "avatar_state", "speaking": True, "event_id": None}),
    (bp.avatar_unavailable("no_credits", "out of credits"),
     {"type": "avatar_unavailable", "reason": "no_credits", "message": "out of credits"}),
    (bp.error("agent_error", "closed", agent_close_code=1002),
     {"type": "error", "code": "agent_error", "message": "closed", "agent_close_code": 1002}),
    (bp.ended("client_stop"), {"type": "ended", "reason": "client_stop"}),
])
def test_server_frames(frame: str, expected: dict[str, object]) -> None:
    assert orjson.loads(frame) == expected


def test_every_error_code_has_a_close_code() -> None:
    assert set(bp.CLOSE_CODE_FOR_ERROR) == set(bp.ERROR_CODES)
    assert bp.CLOSE_CODE_FOR_ERROR["protocol_error"] == 1008
    assert bp.CLOSE_CODE_FOR_ERROR["capacity"] == 1013
    assert bp.CLOSE_CODE_FOR_ERROR["internal"] == 1011
