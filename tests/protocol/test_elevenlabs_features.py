"""The ElevenLabs events the relay passes on to the page and the messages it builds for them, without sockets.
Field names from the asyncapi (elevenlabs/packages packages/types/schemas/agent.asyncapi.yaml) and, for
queue_status, convai-widget-core's mocks/browser.ts."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from relay.protocol import elevenlabs as el


def frame(**fields: object) -> str:
    return json.dumps(fields)


def test_audio_alignment_is_kept() -> None:
    raw = frame(type="audio", audio_event={
        "audio_base_64": base64.b64encode(b"\x00\x00").decode(), "event_id": 4,
        "alignment": {"chars": ["H", "i"], "char_start_times_ms": [0, 80], "char_durations_ms": [80, 90]}})
    event = el.parse_server_event(raw)
    assert isinstance(event, el.AgentAudio)
    assert event.alignment == el.Alignment(("H", "i"), (0, 80), (80, 90))


@pytest.mark.parametrize("alignment", [None, "x", {"chars": "Hi"}, {"chars": [], "char_start_times_ms": [],
                                                                     "char_durations_ms": []},
                                       {"chars": [1], "char_start_times_ms": [0], "char_durations_ms": [1]},
                                       {"chars": ["a"], "char_start_times_ms": ["0"], "char_durations_ms": [1]},
                                       {"chars": ["a"], "char_start_times_ms": [True], "char_durations_ms": [1]},
                                       {"chars": ["a"], "char_start_times_ms": [0], "char_durations_ms": [-5]},
                                       {"chars": ["a"], "char_start_times_ms": [0], "char_durations_ms": [None]}])
def test_an_odd_alignment_is_dropped_and_the_audio_kept(alignment: Any) -> None:
    raw = frame(type="audio", audio_event={"audio_base_64": "AAA=", "event_id": 1, "alignment": alignment})
    event = el.parse_server_event(raw)
    assert isinstance(event, el.AgentAudio) and event.alignment is None and event.audio == b"\x00\x00"


def test_a_ragged_alignment_is_cut_to_the_shortest() -> None:
    raw = frame(type="audio", audio_event={"audio_base_64": "AAA=", "event_id": 1, "alignment": {
        "chars": ["a", "b", "c"], "char_start_times_ms": [0, 10], "char_durations_ms": [10, 10, 10]}})
    event = el.parse_server_event(raw)
    assert isinstance(event, el.AgentAudio) and event.alignment == el.Alignment(("a", "b"), (0, 10), (10, 10))


def test_alignment_times_in_fractions_of_a_millisecond_are_rounded() -> None:
    raw = frame(type="audio", audio_event={"audio_base_64": "AAA=", "event_id": 1, "alignment": {
        "chars": ["a", "b"], "char_start_times_ms": [0.4, 10.6], "char_durations_ms": [10.5, 9.49]}})
    event = el.parse_server_event(raw)
    assert isinstance(event, el.AgentAudio) and event.alignment == el.Alignment(("a", "b"), (0, 11), (10, 9))


def test_tool_request_and_response() -> None:
    request = frame(type="agent_tool_request", agent_tool_request={
        "tool_name": "lookup_order", "tool_call_id": "t1", "tool_type": "webhook", "event_id": 3})
    response = frame(type="agent_tool_response", agent_tool_response={
        "tool_name": "lookup_order", "tool_call_id": "t1", "tool_type": "webhook", "is_error": True,
        "is_called": True, "event_id": 3})
    assert el.parse_server_event(request) == el.AgentToolRequest("lookup_order", "t1", "webhook", 3)
    assert el.parse_server_event(response) == el.AgentToolResponse("lookup_order", "t1", "webhook", True, 3)
    assert el.parse_server_event(frame(type="agent_tool_response", agent_tool_response={
        "tool_name": "end_call", "tool_call_id": "e"})) == el.AgentToolResponse("end_call", "e", None, False, None)
    assert isinstance(el.parse_server_event(frame(type="agent_tool_request", agent_tool_request={"x": 1})),
                      el.MalformedEvent)


def test_mcp_tool_call_states() -> None:
    base = {"service_id": "svc", "tool_call_id": "m1", "tool_name": "get_weather", "tool_description": "Weather",
            "parameters": {"city": "Paris"}, "timestamp": "2026-01-01T00:00:00Z"}
    waiting = el.parse_server_event(frame(type="mcp_tool_call", mcp_tool_call={
        **base, "state": "awaiting_approval", "approval_timeout_secs": 30}))
    assert waiting == el.McpToolCall("m1", "svc", "get_weather", "Weather", {"city": "Paris"}, "awaiting_approval",
                                     30, None)
    default = el.parse_server_event(frame(type="mcp_tool_call", mcp_tool_call={**base, "state": "awaiting_approval"}))
    assert isinstance(default, el.McpToolCall) and default.approval_timeout_secs == 300
    failed = el.parse_server_event(frame(type="mcp_tool_call", mcp_tool_call={
        **base, "state": "failure", "error_message": "denied", "parameters": "odd"}))
    assert isinstance(failed, el.McpToolCall)
    assert (failed.state, failed.error_message, failed.parameters, failed.approval_timeout_secs) == \
        ("failure", "denied", {}, None)
    assert isinstance(el.parse_server_event(frame(type="mcp_tool_call", mcp_tool_call={"state": "loading"})),
                      el.MalformedEvent)


def test_mcp_connection_status_keeps_the_integrations() -> None:
    integration = {"integration_id": "i", "integration_type": "mcp_server", "is_connected": True, "tool_count": 2}
    raw = frame(type="mcp_connection_status", mcp_connection_status={"integrations": [integration, "odd"]})
    assert el.parse_server_event(raw) == el.McpConnectionStatus((integration,))
    assert el.parse_server_event(frame(type="mcp_connection_status")) == el.McpConnectionStatus(())


@pytest.mark.parametrize("status", ["waiting", "admitted", "timed_out"])
def test_queue_status(status: str) -> None:
    raw = frame(type="queue_status", queue_status_event={"status": status})
    assert el.parse_server_event(raw) == el.QueueStatus(status)


def test_hand_off_and_typing() -> None:
    assert el.parse_server_event(frame(type="external_agent_connected")) == el.ExternalAgent(True)
    assert el.parse_server_event(frame(type="external_agent_disconnected",
                                       external_agent_disconnected_event={})) == el.ExternalAgent(False)
    assert el.parse_server_event(frame(type="agent_typing", agent_typing_event={"is_typing": True})) == \
        el.AgentTyping(True, None)
    assert el.parse_server_event(frame(type="agent_typing", agent_typing_event={
        "is_typing": False, "duration_ms": 900})) == el.AgentTyping(False, 900)
    assert isinstance(el.parse_server_event(frame(type="agent_typing", agent_typing_event={"is_typing": "yes"})),
                      el.MalformedEvent)


def test_context_usage_and_rich_content_keep_only_their_documented_fields() -> None:
    usage = el.parse_server_event(frame(type="context_usage", context_usage_event={
        "event_id": 5, "model": "gpt", "context_tokens": 1200, "context_limit_tokens": 128000, "secret": "x",
        "context_tokens_bogus": True}))
    assert usage == el.ContextUsage({"event_id": 5, "model": "gpt", "context_tokens": 1200,
                                     "context_limit_tokens": 128000})
    rich = el.parse_server_event(frame(type="rich_content", rich_content={
        "rich_content_id": "rc1", "component": "buttons", "props": {"buttons": []}, "event_id": 2, "extra": 1}))
    assert rich == el.RichContent({"rich_content_id": "rc1", "component": "buttons", "props": {"buttons": []},
                                   "event_id": 2})
    assert isinstance(el.parse_server_event(frame(type="rich_content", rich_content={"component": "x"})),
                      el.MalformedEvent)


@pytest.mark.parametrize("kind", ["agent_tool_request", "agent_tool_response", "mcp_tool_call", "queue_status",
                                  "agent_typing", "context_usage", "rich_content", "mcp_connection_status"])
@pytest.mark.parametrize("body", [None, 3, "x", [], {}])
def test_the_new_events_never_raise(kind: str, body: Any) -> None:
    for key in (kind, f"{kind}_event"):
        event = el.parse_server_event(json.dumps({"type": kind, key: body}))
        assert not isinstance(event, el.UnknownEvent)


# -- client messages -----------------------------------------------------------------------------------------------


def test_new_client_messages_have_the_exact_shapes() -> None:
    assert json.loads(el.build_mcp_tool_approval_result("m1", True)) == {
        "type": "mcp_tool_approval_result", "tool_call_id": "m1", "is_approved": True}
    assert json.loads(el.build_multimodal_message("look")) == {
        "type": "multimodal_message", "text": {"type": "user_message", "text": "look"}}
    assert json.loads(el.build_user_message("Yes", rich_content_id="rc1")) == {
        "type": "user_message", "text": "Yes", "rich_content_id": "rc1"}
    assert json.loads(el.build_user_message("Yes")) == {"type": "user_message", "text": "Yes"}
    assert json.loads(el.build_contextual_update("on page 2", context_id="page")) == {
        "type": "contextual_update", "text": "on page 2", "context_id": "page"}
    assert json.loads(el.build_feedback(None, 4)) == {"type": "feedback", "score": None, "event_id": 4}


def test_initiation_carries_source_info_and_extra_body() -> None:
    message = json.loads(el.build_initiation(custom_llm_extra_body={"temperature": 0.2}, source_version="1.2"))
    assert message["source_info"] == {"source": "avatar-relay", "version": "1.2"}
    assert message["custom_llm_extra_body"] == {"temperature": 0.2}


def test_branch_environment_and_source_on_the_urls() -> None:
    url = el.conversation_ws_url("https://api.elevenlabs.io", "ag 1", environment="staging", version="0.1.0")
    assert url == ("wss://api.elevenlabs.io/v1/convai/conversation?agent_id=ag%201"
                   "&environment=staging&source=avatar-relay&version=0.1.0")
    assert el.signed_url_request("https://api.elevenlabs.io", "a", branch_id="b", environment="prod") == \
        "https://api.elevenlabs.io/v1/convai/conversation/get-signed-url?agent_id=a&branch_id=b&environment=prod"
    assert el.conversation_ws_url("https://x", "a") == "wss://x/v1/convai/conversation?agent_id=a"
    assert el.with_source("wss://x/c?agent_id=a&conversation_signature=s", "0.1.0", "staging") == \
        "wss://x/c?agent_id=a&conversation_signature=s&source=avatar-relay&version=0.1.0&environment=staging"


def test_a_signed_url_that_names_its_environment_does_not_get_a_second_one() -> None:
    """The Python SDK asks get-signed-url for the environment, the JS client appends it: the relay does both, but
    a signed URL that already names one is left alone (it used to get `environment` twice)."""
    signed = "wss://x/c?agent_id=a&environment=staging&conversation_signature=s"
    assert el.with_source(signed, "0.1.0", "staging") == signed + "&source=avatar-relay&version=0.1.0"


def test_the_public_socket_url_never_carries_a_branch() -> None:
    """Neither SDK puts branch_id on the socket URL (elevenlabs-python `_get_wss_url`, packages
    WebSocketConnection.ts): a branch goes through the signed-URL request only."""
    with pytest.raises(TypeError):
        el.conversation_ws_url("https://x", "a", branch_id="b")  # type: ignore[call-arg]
