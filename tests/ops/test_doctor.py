"""Doctor findings without sockets: agent and avatar answers become plain problems."""

from __future__ import annotations

import orjson
import pytest

from relay.ops.doctor import agent_findings
from relay.providers.heygen import avatar_findings as heygen_avatar_findings
from relay.providers.liveavatar import avatar_findings as liveavatar_avatar_findings


def agent_body(input_format: str = "pcm_16000", output_format: str = "pcm_22050") -> bytes:
    return orjson.dumps({"agent_id": "a1", "name": "Shop", "conversation_config": {
        "asr": {"user_input_audio_format": input_format}, "tts": {"agent_output_audio_format": output_format}}})


@pytest.mark.parametrize(("status", "body", "expected"), [
    (401, b'{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}',
     "ELEVENLABS_API_KEY was refused (HTTP 401: Invalid API key)"),
    (404, b'{"detail":{"status":"agent_not_found"}}', "ELEVENLABS_AGENT_ID=a1 does not exist"),
    (500, b"oops", "reading the agent's configuration failed: HTTP 500."),
    (200, agent_body("ulaw_8000"), "expects ulaw_8000 input"),
    (200, agent_body(output_format="opus_48000"), "output format 'opus_48000' is not one the relay knows"),
])
def test_agent_answers_become_plain_problems(status: int, body: bytes, expected: str) -> None:
    found = [f.text for f in agent_findings(status, body, "a1") if f.level == "problem"]
    assert len(found) == 1 and expected in found[0]


def test_a_good_agent_reports_its_formats() -> None:
    findings = agent_findings(200, agent_body(), "a1")
    assert [f.level for f in findings] == ["ok", "ok", "ok"]
    assert "(Shop)" in findings[0].text and "pcm_22050" in findings[2].text


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
