"""Doctor findings without sockets: agent and avatar answers become plain problems."""

from __future__ import annotations

import orjson
import pytest

from relay.ops.doctor import ALL_FEATURE_EVENTS, agent_findings, mcp_findings
from relay.providers.heygen import avatar_findings as heygen_avatar_findings
from relay.providers.liveavatar import avatar_findings as liveavatar_avatar_findings


def agent_body(input_format: str = "pcm_16000", output_format: str = "pcm_22050",
               client_events: list[str] | None = None, mcp_server_ids: list[str] | None = None) -> bytes:
    config: dict[str, object] = {
        "asr": {"user_input_audio_format": input_format}, "tts": {"agent_output_audio_format": output_format},
        "agent": {"prompt": {"mcp_server_ids": mcp_server_ids or []}}}
    if client_events is not None:
        config["conversation"] = {"client_events": client_events}
    return orjson.dumps({"agent_id": "a1", "name": "Shop", "conversation_config": config})


DEFAULT_EVENTS = ["audio", "interruption", "agent_response", "user_transcript", "tentative_user_transcript",
                  "conversation_initiation_metadata", "ping"]


@pytest.mark.parametrize(("status", "body", "expected"), [
    (401, b'{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}',
     "ELEVENLABS_API_KEY was refused (HTTP 401: Invalid API key)"),
    (404, b'{"detail":{"status":"agent_not_found"}}', "ELEVENLABS_AGENT_ID=a1 does not exist"),
    (500, b"oops", "reading the agent's configuration failed: HTTP 500."),
    (200, agent_body(output_format="opus_48000"), "output format 'opus_48000' is not one the relay knows"),
])
def test_agent_answers_become_plain_problems(status: int, body: bytes, expected: str) -> None:
    found = [f.text for f in agent_findings(status, body, "a1") if f.level == "problem"]
    assert len(found) == 1 and expected in found[0]


def test_a_good_agent_reports_its_formats() -> None:
    findings = agent_findings(200, agent_body(client_events=[*DEFAULT_EVENTS, *ALL_FEATURE_EVENTS]), "a1")
    assert [f.level for f in findings] == ["ok", "ok", "ok", "ok"]
    assert "(Shop)" in findings[0].text and "pcm_22050" in findings[2].text
    assert "every client event the relay's features use" in findings[3].text


def test_a_mu_law_agent_passes() -> None:
    """The relay encodes the page's PCM to mu-law for a ulaw_8000 agent: no problem (it used to be one, exit 1)."""
    findings = agent_findings(200, agent_body("ulaw_8000", "ulaw_8000"), "a1")
    assert [f for f in findings if f.level == "problem"] == []
    assert any("user input format ulaw_8000" in f.text and f.level == "ok" for f in findings)


def test_a_default_agent_is_told_each_feature_it_loses_and_the_setting_to_change() -> None:
    notes = [f.text for f in agent_findings(200, agent_body(), "a1") if f.level == "note"]
    features = {text.split(" — ")[0]: text for text in notes}
    assert set(features) == {"streaming replies", "tool status", "MCP approvals", "corrections", "client tools",
                             "the listening pose", "guardrail notices"}
    assert "agent_chat_response_part" in features["streaming replies"]
    assert "Advanced → Client events" in features["tool status"]
    assert "conversation_config.conversation.client_events" in features["corrections"]
    enabled = agent_findings(200, agent_body(client_events=[*DEFAULT_EVENTS, "agent_tool_response_full_payload",
                                                            "vad_score"]), "a1")
    left = {f.text.split(" — ")[0] for f in enabled if f.level == "note"}
    assert "tool status" not in left and "the listening pose" not in left and "streaming replies" in left


def test_an_mcp_server_that_needs_approval_without_mcp_tool_call_is_a_problem() -> None:
    server = orjson.dumps({"id": "s1", "config": {"name": "Weather", "approval_policy": "require_approval_all"}})
    (found,) = mcp_findings(agent_body(mcp_server_ids=["s1"]), {"s1": (200, server)})
    assert found.level == "problem" and "Weather requires approval" in found.text and "mcp_tool_call" in found.text
    (fine,) = mcp_findings(agent_body(client_events=[*DEFAULT_EVENTS, "mcp_tool_call"], mcp_server_ids=["s1"]),
                           {"s1": (200, server)})
    assert fine.level == "ok"
    auto = orjson.dumps({"id": "s1", "config": {"approval_policy": "auto_approve_all"}})
    assert mcp_findings(agent_body(mcp_server_ids=["s1"]), {"s1": (200, auto)}) == []
    per_tool = orjson.dumps({"id": "s1", "config": {"approval_policy": "require_approval_per_tool",
                                                   "tool_approval_hashes": [{"tool_name": "t", "tool_hash": "h",
                                                                             "approval_policy": "auto_approved"}]}})
    assert mcp_findings(agent_body(mcp_server_ids=["s1"]), {"s1": (200, per_tool)}) == []
    needs = per_tool.replace(b'"auto_approved"', b'"requires_approval"')
    assert mcp_findings(agent_body(mcp_server_ids=["s1"]), {"s1": (200, needs)})[0].level == "problem"


def test_inactive_avatars_are_problems() -> None:
    heygen = heygen_avatar_findings(200, orjson.dumps({"code": 100, "data": [
        {"avatar_id": "Ann", "status": "INACTIVE"}]}), "Ann")
    assert heygen[-1].level == "problem" and "status is INACTIVE" in heygen[-1].text
    live = liveavatar_avatar_findings(200, orjson.dumps({"code": 1000, "message": "ok", "data": {
        "id": "x", "status": "DEPLOYING"}}), "x", False)
    assert live[-1].level == "problem" and "status is DEPLOYING" in live[-1].text


def test_the_doctor_reads_400112_as_an_avatar_not_enabled_for_streaming_not_a_bad_key() -> None:
    (finding,) = heygen_avatar_findings(401, orjson.dumps({"code": 400112, "message": "not allowed for streaming"}),
                                        "Wayne_20240711")
    assert finding.level == "problem"
    assert "not enabled for streaming" in finding.text and "HEYGEN_AVATAR_ID" in finding.text
    assert "refused" not in finding.text
