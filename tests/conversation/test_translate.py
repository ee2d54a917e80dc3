"""The browser <-> agent translation (relay/conversation/translate.py) as pure functions: no trio, no sockets.
Every browser message has its meaning for the agent, and every agent event either has its browser frame or is
listed here as not the browser's (so a new event cannot be forgotten unseen)."""

from __future__ import annotations

from typing import Any, get_args

import orjson
import pytest

from relay.conversation.gates import McpApprovals
from relay.conversation.translate import (
    Acknowledge,
    EndConversation,
    InterruptSpeech,
    StaleApproval,
    ToAgent,
    browser_frame,
    client_step,
)
from relay.protocol import browser as bp
from relay.protocol import elevenlabs as el


def step(frame: dict[str, Any], approvals: McpApprovals | None = None, now: float = 0.0) -> object:
    event = bp.parse_text_frame(orjson.dumps(frame).decode())
    return client_step(event, lambda pcm: f"audio:{len(pcm)}", approvals or McpApprovals(), now)


def test_typed_messages_go_to_the_agent_and_to_the_transcript() -> None:
    assert step({"type": "text", "text": "hi", "rich_content_id": "rc_1"}) == \
        ToAgent(el.build_user_message("hi", "rc_1"), user_text="hi")
    assert step({"type": "multimodal", "text": "look"}) == ToAgent(el.build_multimodal_message("look"),
                                                                    user_text="look")


def test_the_other_messages_become_their_agent_message() -> None:
    assert step({"type": "audio", "audio": "AAAAAA=="}) == ToAgent("audio:4")  # decoded PCM, by the builder
    assert step({"type": "context", "text": "on page 2", "context_id": "page"}) == \
        ToAgent(el.build_contextual_update("on page 2", "page"))
    assert step({"type": "activity"}) == ToAgent(el.build_user_activity())
    assert step({"type": "tool_result", "tool_call_id": "c1", "result": {"t": 1}}) == \
        ToAgent(el.build_client_tool_result("c1", '{"t":1}', False))
    assert step({"type": "tool_result", "tool_call_id": "c1", "result": "boom", "is_error": True}) == \
        ToAgent(el.build_client_tool_result("c1", "boom", True))
    assert step({"type": "feedback", "score": "like", "event_id": 4}) == ToAgent(el.build_feedback("like", 4))


def test_interrupt_stop_and_a_second_start() -> None:
    assert step({"type": "interrupt"}) == InterruptSpeech()
    assert step({"type": "stop"}) == EndConversation("client_stop")
    assert step({"type": "start"}) == EndConversation("protocol_error", "'start' was already received")


def test_an_mcp_answer_reaches_the_agent_only_while_the_call_awaits_approval() -> None:
    approvals = McpApprovals()
    answer = {"type": "mcp_approval", "tool_call_id": "mcp_1", "approved": True}
    assert step(answer, approvals) == StaleApproval("mcp_1")
    call = el.McpToolCall(tool_call_id="mcp_1", service_id="s", tool_name="w", tool_description=None,
                          parameters={}, state="awaiting_approval", approval_timeout_secs=30, error_message=None)
    assert browser_frame(call, approvals, now=100.0) is not None
    assert step(answer, approvals, now=129.0) == ToAgent(el.build_mcp_tool_approval_result("mcp_1", True))
    assert step(answer, approvals, now=129.5) == StaleApproval("mcp_1")  # answered already


def test_every_browser_message_but_start_means_something_for_the_conversation() -> None:
    samples: dict[type, bp.ClientEvent] = {bp.Audio: bp.Audio(b"\0\0"),
                                           bp.DroppedClientMetrics: bp.DroppedClientMetrics("malformed")}
    for kind in bp.KNOWN_TYPES:
        frame = {"start": {}, "audio": {"audio": ""}, "text": {"text": "x"}, "context": {"text": "x"},
                 "multimodal": {"text": "x"}, "mcp_approval": {"tool_call_id": "c", "approved": False},
                 "tool_result": {"tool_call_id": "c"}, "feedback": {"score": None, "event_id": 1},
                 "ack": {"seq": 3}}.get(kind, {})
        event = bp.parse_text_frame(orjson.dumps({"type": kind, **frame}).decode())
        samples[type(event)] = event
    assert set(samples) == set(get_args(bp.ClientEvent))
    for kind, event in samples.items():
        result = client_step(event, lambda pcm: "audio", McpApprovals(), 0.0)
        assert (result == EndConversation("protocol_error", "'start' was already received")) == (kind is bp.Start)
    assert client_step(samples[bp.Ack], lambda pcm: "audio", McpApprovals(), 0.0) == Acknowledge(3)


AGENT_EVENTS: dict[type, tuple[el.ServerEvent, dict[str, Any] | None]] = {
    el.AgentResponse: (el.AgentResponse("Hello", 3), {"type": "agent_response", "text": "Hello", "event_id": 3}),
    el.UserTranscript: (el.UserTranscript("hi", 2, False),
                        {"type": "user_transcript", "text": "hi", "event_id": 2, "final": False}),
    el.Interruption: (el.Interruption(5), {"type": "interruption", "event_id": 5}),
    el.AgentResponseCorrection: (el.AgentResponseCorrection("Hello there", "Hello", 3),
                                 {"type": "agent_response_correction", "text": "Hello", "original": "Hello there",
                                  "event_id": 3}),
    el.ClientToolCall: (el.ClientToolCall("get_time", "c1", {"tz": "UTC"}, 4),
                        {"type": "tool_call", "tool_call_id": "c1", "tool_name": "get_time",
                         "parameters": {"tz": "UTC"}}),
    el.AgentChatResponsePart: (el.AgentChatResponsePart("Hi ", "delta", 3),
                               {"type": "agent_response_part", "event_id": 3, "part": "delta", "text": "Hi "}),
    el.AgentToolRequest: (el.AgentToolRequest("lookup", "t1", "webhook", 3),
                          {"type": "tool_status", "tool_call_id": "t1", "tool_name": "lookup",
                           "tool_type": "webhook", "state": "running"}),
    el.AgentToolResponse: (el.AgentToolResponse("lookup", "t1", "webhook", True, 3),
                           {"type": "tool_status", "tool_call_id": "t1", "tool_name": "lookup",
                            "tool_type": "webhook", "state": "failed"}),
    el.McpToolCall: (el.McpToolCall("m1", "svc", "w", "Weather", {"city": "Oslo"}, "failure", None, "denied"),
                     {"type": "mcp_tool_call", "tool_call_id": "m1", "service_id": "svc", "tool_name": "w",
                      "tool_description": "Weather", "parameters": {"city": "Oslo"}, "state": "failure",
                      "approval_timeout_secs": None, "error_message": "denied"}),
    el.McpConnectionStatus: (el.McpConnectionStatus(({"integration_id": "i"},)),
                             {"type": "mcp_connection_status", "integrations": [{"integration_id": "i"}]}),
    el.QueueStatus: (el.QueueStatus("waiting"), {"type": "queue_status", "status": "waiting"}),
    el.ExternalAgent: (el.ExternalAgent(True), {"type": "human_agent", "connected": True}),
    el.GuardrailTriggered: (el.GuardrailTriggered(), {"type": "guardrail_triggered"}),
    el.AgentTyping: (el.AgentTyping(True, None), {"type": "agent_typing", "typing": True}),
    el.ContextUsage: (el.ContextUsage({"model": "m"}), {"type": "context_usage", "model": "m"}),
    el.RichContent: (el.RichContent({"rich_content_id": "r"}), {"type": "rich_content", "rich_content_id": "r"}),
    # Not the browser's (or the pump's own business: audio, pings, errors, the rate-limited voice activity score).
    el.ConversationMetadata: (el.ConversationMetadata("c", "pcm_16000", "pcm_16000"), None),
    el.AgentAudio: (el.AgentAudio(b"\0\0", 1), None),
    el.Ping: (el.Ping(1, None), None),
    el.AgentErrorEvent: (el.AgentErrorEvent(1002, "x", None), None),
    el.VadScore: (el.VadScore(0.5), None),
    el.UnknownEvent: (el.UnknownEvent("new_thing"), None),
    el.MalformedEvent: (el.MalformedEvent("ping", "no id"), None),
}


def test_every_agent_event_is_listed_here() -> None:
    assert set(AGENT_EVENTS) == set(get_args(el.ServerEvent))


@pytest.mark.parametrize("kind", sorted(AGENT_EVENTS, key=lambda k: k.__name__), ids=lambda k: k.__name__)
def test_each_agent_event_gives_its_browser_frame_or_none(kind: type) -> None:
    event, expected = AGENT_EVENTS[kind]
    frame = browser_frame(event, McpApprovals(), 0.0)
    assert (None if frame is None else orjson.loads(frame)) == expected
