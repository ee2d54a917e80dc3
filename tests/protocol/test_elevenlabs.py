"""The ElevenLabs ConvAI protocol without sockets: every server event of the reference, every client message's
exact JSON, and URL derivation."""

from __future__ import annotations

import base64
import json
from typing import get_args, get_type_hints

import pytest

from relay.protocol import elevenlabs as el
from relay.protocol.elevenlabs import parse


def frame(**fields: object) -> str:
    return json.dumps(fields)


# -- server events ------------------------------------------------------------------------------------------------


def test_every_server_event_has_a_parser_and_every_parser_returns_a_server_event() -> None:
    # Adding an agent event is a dataclass, a member of ServerEvent and an @parses parser: a member left without a
    # parser would come out as UnknownEvent and be dropped unseen.
    returned = {get_type_hints(parser)["return"] for parser in parse.PARSERS.values()}
    assert returned == set(get_args(el.ServerEvent)) - {el.UnknownEvent, el.MalformedEvent}


def test_a_second_parser_for_one_type_is_refused() -> None:
    with pytest.raises(ValueError, match="two parsers for 'ping'"):
        parse.parses("ping")(lambda frame: el.UnknownEvent("ping"))


def test_metadata_with_type_last_is_parsed() -> None:
    raw = (
        '{"conversation_initiation_metadata_event":{"conversation_id":"conv_1",'
        '"agent_output_audio_format":"pcm_48000","user_input_audio_format":"ulaw_8000"},'
        '"type":"conversation_initiation_metadata"}'
    )
    assert el.parse_server_event(raw) == el.ConversationMetadata("conv_1", "pcm_48000", "ulaw_8000")


def test_metadata_without_formats_means_the_documented_default() -> None:
    raw = frame(
        type="conversation_initiation_metadata", conversation_initiation_metadata_event={"conversation_id": "c"}
    )
    assert el.parse_server_event(raw) == el.ConversationMetadata("c", "pcm_16000", "pcm_16000")


def test_audio_is_base64_decoded_and_bytes_frames_are_accepted() -> None:
    pcm = bytes(range(256)) * 4
    raw = frame(
        type="audio",
        audio_event={
            "audio_base_64": base64.b64encode(pcm).decode(),
            "event_id": 7,
            "alignment": {"chars": ["H"], "char_start_times_ms": [0], "char_durations_ms": [50]},
        },
    )
    assert el.parse_server_event(raw.encode()) == el.AgentAudio(pcm, 7, el.Alignment(("H",), (0,), (50,)))


def test_audio_with_invalid_base64_is_skipped_not_raised() -> None:
    event = el.parse_server_event(frame(type="audio", audio_event={"audio_base_64": "%%%", "event_id": 1}))
    assert isinstance(event, el.MalformedEvent)
    assert event.type == "audio" and "base64" in event.problem


def test_final_and_tentative_transcripts() -> None:
    final = frame(type="user_transcript", user_transcription_event={"user_transcript": "hi", "event_id": 6})
    tentative = frame(
        type="tentative_user_transcript",
        tentative_user_transcription_event={"user_transcript": "h", "event_id": 6},
    )
    assert el.parse_server_event(final) == el.UserTranscript("hi", 6, final=True)
    assert el.parse_server_event(tentative) == el.UserTranscript("h", 6, final=False)


def test_agent_response_correction_and_interruption() -> None:
    assert el.parse_server_event(
        frame(type="agent_response", agent_response_event={"agent_response": "Hello there", "event_id": 7})
    ) == el.AgentResponse("Hello there", 7)
    assert el.parse_server_event(
        frame(
            type="agent_response_correction",
            agent_response_correction_event={
                "original_agent_response": "Hello there",
                "corrected_agent_response": "Hello",
                "event_id": 7,
            },
        )
    ) == el.AgentResponseCorrection("Hello there", "Hello", 7)
    assert el.parse_server_event(frame(type="interruption", interruption_event={"event_id": 8})) == el.Interruption(8)


def test_first_ping_has_null_ping_ms_and_later_ones_a_number() -> None:
    assert el.parse_server_event(frame(type="ping", ping_event={"event_id": 3, "ping_ms": None})) == el.Ping(3, None)
    assert el.parse_server_event(frame(type="ping", ping_event={"event_id": 4, "ping_ms": 42})) == el.Ping(4, 42.0)
    assert el.parse_server_event(frame(type="ping", ping_event={"event_id": 5})) == el.Ping(5, None)


def test_client_tool_call_with_and_without_event_id() -> None:
    call = {"tool_name": "get_time", "tool_call_id": "t1", "parameters": {"tz": "UTC"}, "event_id": 9}
    assert el.parse_server_event(frame(type="client_tool_call", client_tool_call=call)) == el.ClientToolCall(
        "get_time", "t1", {"tz": "UTC"}, 9
    )
    bare = {"tool_name": "x", "tool_call_id": "t2"}
    assert el.parse_server_event(frame(type="client_tool_call", client_tool_call=bare)) == el.ClientToolCall(
        "x", "t2", {}, None
    )


def test_error_event_in_schema_form() -> None:
    raw = frame(
        type="error",
        error_event={
            "code": 1002,
            "message": "LLM took too long",
            "error_type": "llm_timeout",
            "reason": "r",
            "debug_message": None,
            "details": None,
        },
    )
    assert el.parse_server_event(raw) == el.AgentErrorEvent(1002, "LLM took too long", "llm_timeout")


def test_error_event_in_flat_production_form_reads_the_code_from_the_message() -> None:
    message = "received 1002 (protocol error) This request exceeds your quota limit.; then sent 1002"
    assert el.parse_server_event(frame(type="error", message=message)) == el.AgentErrorEvent(1002, message, None)
    assert el.parse_server_event(frame(type="error", message="boom")) == el.AgentErrorEvent(None, "boom", None)


def test_vad_score_and_chat_response_part() -> None:
    assert el.parse_server_event(frame(type="vad_score", vad_score_event={"vad_score": 0.95})) == el.VadScore(0.95)
    assert el.parse_server_event(
        frame(type="agent_chat_response_part", text_response_part={"text": "Hel", "type": "start", "event_id": 7})
    ) == el.AgentChatResponsePart("Hel", "start", 7)
    assert el.parse_server_event(
        frame(type="agent_chat_response_part", text_response_part={"text": "lo"})
    ) == el.AgentChatResponsePart("lo", "delta", None)


@pytest.mark.parametrize(
    "event_type",
    ["internal_tentative_agent_response", "agent_reasoning_response_part", "asr_initiation_metadata", "brand_new_type"],
)
def test_unknown_event_types_are_returned_not_raised(event_type: str) -> None:
    assert el.parse_server_event(frame(something={"x": 1}, type=event_type)) == el.UnknownEvent(event_type)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"audio"', "not a JSON object"),
        ('{"audio_event": {}}', "no 'type'"),
        ('{"type": 7}', "no 'type'"),
    ],
)
def test_malformed_frames_are_returned_to_skip_not_raised(raw: str, message: str) -> None:
    event = el.parse_server_event(raw)
    assert isinstance(event, el.MalformedEvent)
    assert event.type is None and message in event.problem


@pytest.mark.parametrize(
    "raw",
    [
        frame(type="conversation_initiation_metadata"),
        frame(type="conversation_initiation_metadata", conversation_initiation_metadata_event={}),
        frame(type="audio", audio_event={"event_id": 1}),
        frame(type="audio", audio_event={"audio_base_64": ""}),
        frame(type="audio", audio_event={"audio_base_64": "", "event_id": True}),
        frame(type="user_transcript", user_transcription_event={"event_id": 1}),
        frame(type="agent_response", agent_response_event={"agent_response": "x"}),
        frame(type="agent_response_correction", agent_response_correction_event={"event_id": 1}),
        frame(type="interruption", interruption_event={}),
        frame(type="interruption"),
        frame(type="ping", ping_event={"ping_ms": 3}),
        frame(type="client_tool_call", client_tool_call={"tool_name": "x"}),
        frame(type="vad_score", vad_score_event={}),
        frame(type="vad_score", vad_score_event={"vad_score": "high"}),
    ],
)
def test_known_types_without_a_field_they_need_are_skipped_not_raised(raw: str) -> None:
    """A known event without what it cannot do without (an audio chunk without its turn id, a ping without the id to
    answer, a tool call without the id to answer) is returned as `MalformedEvent` (logged and skipped by the
    connection), never raised: one odd frame must not end a conversation."""
    event = el.parse_server_event(raw)
    assert isinstance(event, el.MalformedEvent)
    assert event.type == json.loads(raw)["type"]
    assert event.problem


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # As the Python SDK: a chat part's text defaults to "" and its type to "delta"; odd event ids are dropped.
        (frame(type="agent_chat_response_part", text_response_part={"type": "start"}),
         el.AgentChatResponsePart("", "start", None)),
        (frame(type="agent_chat_response_part"), el.AgentChatResponsePart("", "delta", None)),
        (frame(type="agent_chat_response_part", text_response_part={"text": 5, "type": 1, "event_id": "x"}),
         el.AgentChatResponsePart("", "delta", None)),
        # An odd ping_ms is no estimate; the ping is still answered.
        (frame(type="ping", ping_event={"event_id": 1, "ping_ms": "fast"}), el.Ping(1, None)),
        (frame(type="ping", ping_event={"event_id": 2, "ping_ms": True}), el.Ping(2, None)),
        # Tool parameters that are not an object: none (the Python SDK defaults to {}).
        (frame(type="client_tool_call", client_tool_call={"tool_name": "x", "tool_call_id": "y", "parameters": 3}),
         el.ClientToolCall("x", "y", {}, None)),
        # A transcript's event id is not needed to show it (the Python SDK never reads it).
        (frame(type="tentative_user_transcript", tentative_user_transcription_event={"user_transcript": "x"}),
         el.UserTranscript("x", 0, False)),
        # Extra fields are ignored.
        (frame(type="interruption", interruption_event={"event_id": 4, "reason": "user", "extra": [1]}, more=1),
         el.Interruption(4)),
    ],
)
def test_known_types_with_odd_optional_fields_are_defaulted(raw: str, expected: el.ServerEvent) -> None:
    assert el.parse_server_event(raw) == expected


# -- endings ------------------------------------------------------------------------------------------------------


def _error(error_type: str | None, code: int | None, message: str = "") -> el.AgentErrorEvent:
    return el.AgentErrorEvent(code=code, message=message, error_type=error_type)


def test_a_1000_close_is_a_normal_end_even_after_an_earlier_error_event() -> None:
    assert el.classify_close(1000, "", None) == el.Ending("agent_ended", "the agent ended the conversation")
    ending = el.classify_close(1000, "", _error("transient", 1002, "a hiccup"))
    assert ending.kind == "agent_ended" and ending.normal


def test_max_duration_is_its_own_normal_end() -> None:
    event = el.parse_server_event(frame(type="error", error_event={
        "code": 1000, "message": "Max duration exceeded", "error_type": "max_duration_exceeded"}))
    assert isinstance(event, el.AgentErrorEvent) and el.is_normal_end(event)
    assert el.classify_close(1000, "max_duration_exceeded", event).kind == "max_duration"
    assert el.classify_close(1000, "", event).kind == "max_duration"
    assert el.classify_close(1000, "max_duration_exceeded").kind == "max_duration"
    assert el.classify_close(1000, "max_duration_exceeded").normal


def test_a_queue_timeout_says_the_agent_is_busy() -> None:
    ending = el.classify_close(3008, "too many concurrent connections")
    assert ending.kind == "agent_busy" and not ending.normal
    assert "busy" in ending.message


@pytest.mark.parametrize(
    ("error_type", "reason", "words"),
    [
        ("override_error", "override_error", "does not allow the overrides"),
        ("missing_dynamic_variable", "missing_dynamic_variable", "dynamic variable"),
        (None, "override_error", "does not allow the overrides"),
        ("telephony_agent_error", "", "telephony only"),
        ("mcp_tool_error", "", "MCP tools has an invalid schema"),
        ("mcp_https_error", "", "HTTPS"),
        ("missing_dynamic_variable_transfer", "", "transferred to needs a dynamic variable"),
    ],
)
def test_set_up_refusals_keep_the_services_words(error_type: str | None, reason: str, words: str) -> None:
    error = None if error_type is None else _error(error_type, 1008, "Missing required dynamic variable 'name'")
    ending = el.classify_close(1008, reason, error, during_setup=True)
    assert ending.kind == "agent_refused" and not ending.normal
    assert words in ending.message
    if error is not None:
        assert "Missing required dynamic variable 'name'" in ending.message


def test_refusal_names_are_the_asyncapis() -> None:
    """`invalid_dynamic_variable` is no asyncapi ErrorType: it gets the generic refusal words."""
    ending = el.classify_close(1008, "invalid_dynamic_variable", during_setup=True)
    assert ending.message == "the agent refused the conversation's set-up: invalid_dynamic_variable"


def test_no_user_input_for_a_minute_is_a_timeout_not_a_failure() -> None:
    """asyncapi ErrorType `transport_receive_timeout`: "No user input for 60 seconds (code 1002)"."""
    by_event = el.classify_close(1002, "", _error("transport_receive_timeout", 1002, "No user input"))
    by_reason = el.classify_close(1002, "transport_receive_timeout")
    assert by_event.kind == by_reason.kind == "timeout"
    assert "without any input from the user" in by_reason.message


@pytest.mark.parametrize("code", [1002, 1008, 1011, 3000, 1006, None])
def test_other_closes_are_failures_with_the_code(code: int | None) -> None:
    ending = el.classify_close(code, "boom", _error("internal", code, "server said no"))
    assert ending.kind == "agent_error" and not ending.normal
    assert f"({code} boom)" in ending.message and "server said no" in ending.message


# -- client messages ----------------------------------------------------------------------------------------------


def test_user_audio_chunk_is_exact_and_has_no_type() -> None:
    assert el.build_user_audio_chunk(b"\x00\x01\xff") == '{"user_audio_chunk":"AAH/"}'
    assert json.loads(el.build_user_audio_chunk(bytes(3200))) == {
        "user_audio_chunk": base64.b64encode(bytes(3200)).decode()
    }


def test_user_audio_chunk_as_utf8_is_the_same_text() -> None:
    for pcm in (b"", b"\x00\x01\xff", bytes(range(256)) * 13):
        assert el.build_user_audio_chunk_utf8(pcm) == el.build_user_audio_chunk(pcm).encode()


def test_initiation_omits_absent_fields() -> None:
    assert el.build_initiation() == '{"type":"conversation_initiation_client_data"}'


def test_initiation_carries_overrides_variables_user_and_extra_body() -> None:
    built = el.build_initiation(
        dynamic_variables={"user_name": "Ana", "visits": 3, "vip": True},
        overrides={"agent": {"first_message": "Olá", "language": "pt"}},
        user_id="u1",
        custom_llm_extra_body={"temperature": 0.2},
    )
    assert json.loads(built) == {
        "type": "conversation_initiation_client_data",
        "conversation_config_override": {"agent": {"first_message": "Olá", "language": "pt"}},
        "custom_llm_extra_body": {"temperature": 0.2},
        "dynamic_variables": {"user_name": "Ana", "visits": 3, "vip": True},
        "user_id": "u1",
    }


def test_initiation_refuses_dynamic_variables_that_are_not_scalars() -> None:
    with pytest.raises(ValueError, match="visits"):
        el.build_initiation(dynamic_variables={"visits": [1, 2]})  # type: ignore[dict-item]


def test_small_messages_are_exact() -> None:
    assert el.build_pong(123) == '{"type":"pong","event_id":123}'
    assert el.build_user_message('say "hi"') == '{"type":"user_message","text":"say \\"hi\\""}'
    assert el.build_contextual_update("page=pricing") == '{"type":"contextual_update","text":"page=pricing"}'
    assert el.build_user_activity() == '{"type":"user_activity"}'
    assert el.build_client_tool_result("t1", "12:00", False) == (
        '{"type":"client_tool_result","tool_call_id":"t1","result":"12:00","is_error":false}'
    )
    assert el.build_feedback("like", 7) == '{"type":"feedback","score":"like","event_id":7}'


def test_feedback_score_must_be_like_or_dislike() -> None:
    with pytest.raises(ValueError):
        el.build_feedback("love", 1)


# -- URLs ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://api.elevenlabs.io", "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=ag_1"),
        ("https://api.elevenlabs.io/", "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=ag_1"),
        ("https://api.us.elevenlabs.io", "wss://api.us.elevenlabs.io/v1/convai/conversation?agent_id=ag_1"),
        (
            "https://api.eu.residency.elevenlabs.io",
            "wss://api.eu.residency.elevenlabs.io/v1/convai/conversation?agent_id=ag_1",
        ),
        ("http://127.0.0.1:8123", "ws://127.0.0.1:8123/v1/convai/conversation?agent_id=ag_1"),
        ("http://proxy.local/eleven/", "ws://proxy.local/eleven/v1/convai/conversation?agent_id=ag_1"),
        (
            "wss://api.in.residency.elevenlabs.io",
            "wss://api.in.residency.elevenlabs.io/v1/convai/conversation?agent_id=ag_1",
        ),
    ],
)
def test_conversation_url_from_base_url(base: str, expected: str) -> None:
    assert el.conversation_ws_url(base, "ag_1") == expected


def test_agent_id_is_url_encoded() -> None:
    assert el.conversation_ws_url("https://h", "a b&c=/d").endswith("?agent_id=a%20b%26c%3D%2Fd")


def test_signed_url_and_agent_details_urls() -> None:
    assert el.signed_url_request("https://api.sg.residency.elevenlabs.io", "ag 1") == (
        "https://api.sg.residency.elevenlabs.io/v1/convai/conversation/get-signed-url?agent_id=ag%201"
    )
    assert el.signed_url_request("http://127.0.0.1:9/p", "x") == (
        "http://127.0.0.1:9/p/v1/convai/conversation/get-signed-url?agent_id=x"
    )
    assert el.agent_details_url("https://api.elevenlabs.io", "ag/1") == (
        "https://api.elevenlabs.io/v1/convai/agents/ag%2F1"
    )


@pytest.mark.parametrize("base", ["ftp://host", "api.elevenlabs.io", ""])
def test_bad_base_urls_are_refused(base: str) -> None:
    with pytest.raises(ValueError):
        el.conversation_ws_url(base, "a")


def test_empty_agent_id_is_refused() -> None:
    with pytest.raises(ValueError):
        el.conversation_ws_url("https://h", "")
