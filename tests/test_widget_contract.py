"""The widget's published contract against the relay's own definitions, so neither can drift from the other:
embed.d.ts (the TypeScript declarations the relay ships) declares every text frame of the browser protocol with
exactly the fields the relay sends (every builder of relay.protocol.browser, called here) and reads (every client
frame model), and the vocabularies of relay.protocol.vocab; the widget's word tables (i18n.js) have plain words for
every reason a conversation can end."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, get_args

import pytest

from relay.conversation.link import BrowserLink
from relay.protocol import browser as bp
from relay.protocol import vocab
from relay.protocol.elevenlabs import parse as el
from relay.protocol.resume import ResumeFailure

STATIC = Path(__file__).resolve().parents[1] / "relay" / "static"
DTS = (STATIC / "embed.d.ts").read_text()

# One call of every relay -> browser frame builder, with every optional part present.
AVATAR = bp.AvatarInfo(provider="liveavatar", session_id="s", livekit_url="wss://x", access_token="t", simulated=False)
SERVER_FRAMES: dict[str, str] = {
    # as sent with resuming on: the link adds the resume token and window (relay.conversation.link)
    "ready": BrowserLink(20.0, 5.0, lambda: "rt1.r.k.1.m")._number(
        bp.ready(conversation_id="c", avatar=AVATAR, input_sample_rate=16000, output_sample_rate=16000))[0],
    "user_transcript": bp.user_transcript("hi", 1, True),
    "agent_response": bp.agent_response("hi", 1),
    "agent_response_correction": bp.agent_response_correction("h", "hi", 1),
    "interruption": bp.interruption(1),
    "tool_call": bp.tool_call("id", "name", {"a": 1}),
    "avatar_speaking": bp.avatar_speaking("hi", 100, 1),
    "avatar_state": bp.avatar_state(True, 1),
    "agent_response_part": bp.agent_response_part("delta", "h", 1),
    "tool_status": bp.tool_status("id", "name", "webhook", "running"),
    "mcp_tool_call": bp.mcp_tool_call(tool_call_id="id", service_id="s", tool_name="t", tool_description="d",
                                      parameters={}, state="loading", approval_timeout_secs=None, error_message=None),
    "mcp_connection_status": bp.mcp_connection_status([]),
    "queue_status": bp.queue_status("waiting"),
    "human_agent": bp.human_agent(True),
    "agent_typing": bp.agent_typing(True),
    "vad_score": bp.vad_score(0.5),
    "context_usage": bp.context_usage({name: 1 for name in el._CONTEXT_USAGE_FIELDS}),
    "rich_content": bp.rich_content({name: 1 for name in el._RICH_CONTENT_FIELDS}),
    "agent_alignment": bp.agent_alignment(1, 0, [bp.CaptionWord("hi", 0, 10, False)]),
    "avatar_unavailable": bp.avatar_unavailable("no_credits", "m"),
    "avatar_changed": bp.avatar_changed(AVATAR, "session_ended"),
    "guardrail_triggered": bp.guardrail_triggered(),
    "error": bp.error("agent_refused", "m", agent_error_type="x", agent_close_code=1008, agent_close_reason="r",
                      reason="expired"),
    "ended": bp.ended("client_stop"),
    "resumed": bp.resumed(conversation_id="c", resume_token="rt1.r.k.1.m", seq=3),
}
# Fields the relay sends only sometimes (the agent's own optional fields; the agent's refusal details on `error`).
SOMETIMES = {"context_usage": set(el._CONTEXT_USAGE_FIELDS),
             "rich_content": set(el._RICH_CONTENT_FIELDS) - {"rich_content_id"},
             "error": {"agent_error_type", "agent_close_code", "agent_close_reason", "reason"},
             "ready": {"resume_token", "resume_window"}}
NOT_FRAME_BUILDERS = {"parse_text_frame", "check_audio", "parse_allowed_paths", "override_paths", "refused_override",
                      "tool_result_text", "nested_deeper_than", "parse_resume"}
# Every frame the relay parses (a new one joins `bp.TextFrame`, and so this list), and `resume`, read before it.
CLIENT_MODELS = [bp.Resume, *get_args(bp.TextFrame)]


def declared_interfaces() -> dict[str, dict[str, bool]]:
    """The interfaces of embed.d.ts that have a literal `type`: type -> {field: optional}."""
    found: dict[str, dict[str, bool]] = {}
    for body in re.findall(r"export interface \w+ \{(.*?)\n\}", DTS, re.S):
        fields = dict(re.findall(r"^\s+(\w+)(\??):", body, re.M))
        literal = re.search(r"^\s+type: '(\w+)';", body, re.M)
        if literal:
            found[literal.group(1)] = {name: bool(optional) for name, optional in fields.items()}
    return found


def declared_union(name: str) -> set[str]:
    """The members of `export type <name> = ...;` (string literals, and those of unions it names)."""
    body = re.search(rf"export type {name} =(.*?);", DTS, re.S)
    assert body is not None, f"embed.d.ts declares no type {name}"
    members = set(re.findall(r"'(\w+)'", body.group(1)))
    for other in re.findall(r"\b([A-Z]\w+)\b", body.group(1)):
        members |= declared_union(other)
    return members


def union_names(name: str) -> set[str]:
    body = re.search(rf"export type {name} =(.*?);", DTS, re.S)
    assert body is not None
    return set(re.findall(r"\b([A-Z]\w+Message)\b", body.group(1)))


def literals(alias: Any) -> set[str]:
    out: set[str] = set()
    for arg in get_args(alias):
        out |= literals(arg) if get_args(arg) else {arg}
    return out


def test_every_frame_builder_of_the_relay_is_checked_here() -> None:
    builders = {name for name, fn in inspect.getmembers(bp, inspect.isfunction)
                if fn.__module__ == bp.__name__ and not name.startswith("_")} - NOT_FRAME_BUILDERS
    assert builders == set(SERVER_FRAMES), "a new relay message: declare it in embed.d.ts and call it here"


@pytest.mark.parametrize("frame_type", sorted(SERVER_FRAMES))
def test_each_relay_message_is_declared_with_exactly_its_fields(frame_type: str) -> None:
    sent = json.loads(SERVER_FRAMES[frame_type])
    assert sent["type"] == frame_type
    declared = declared_interfaces().get(frame_type)
    assert declared is not None, f"embed.d.ts does not declare the relay's `{frame_type}`"
    assert set(declared) == set(sent), f"`{frame_type}`: declared {sorted(declared)}, the relay sends {sorted(sent)}"
    optional = {name for name, is_optional in declared.items() if is_optional}
    assert optional == SOMETIMES.get(frame_type, set()), f"`{frame_type}`: optional fields"


@pytest.mark.parametrize("model", CLIENT_MODELS, ids=lambda m: m.__name__)
def test_each_client_message_is_declared_with_exactly_the_fields_the_relay_reads(model: Any) -> None:
    frame_type = get_args(model.model_fields["type"].annotation)[0]
    declared = declared_interfaces().get(frame_type)
    assert declared is not None, f"embed.d.ts does not declare the client's `{frame_type}`"
    assert set(declared) == set(model.model_fields), frame_type
    for name, field in model.model_fields.items():
        assert declared[name] == (not field.is_required()), f"`{frame_type}.{name}`: optional in one, not the other"


def test_the_unions_name_every_message() -> None:
    interfaces = re.findall(r"export interface (\w+Message) \{(.*?)\n\}", DTS, re.S)
    by_type = {re.search(r"type: '(\w+)'", body).group(1): name for name, body in interfaces}  # type: ignore[union-attr]
    client = {get_args(m.model_fields["type"].annotation)[0] for m in CLIENT_MODELS}
    assert union_names("ClientMessage") == {by_type[t] for t in client}
    assert union_names("RelayMessage") == {by_type[t] for t in SERVER_FRAMES}


def test_the_vocabularies_are_the_relays() -> None:
    assert declared_union("ErrorCode") == literals(vocab.ErrorCode)
    assert declared_union("EndReason") == literals(vocab.EndReason)
    assert declared_union("AvatarUnavailableReason") == literals(vocab.AvatarUnavailableReason)
    assert set(re.findall(r"'(\w+)'", re.search(r"export type AvatarRelayState =(.*?);", DTS, re.S).group(1))) \
        == {"idle", "connecting", "live", "reconnecting", "ended"}  # type: ignore[union-attr]
    assert declared_union("ResumeFailure") == literals(ResumeFailure)


def test_every_reason_a_conversation_can_end_has_plain_words_in_every_language() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (scripts/test installs it)")
    script = f"import({json.dumps((STATIC / 'i18n.js').as_uri())}).then((m) => console.log(JSON.stringify(m.STRINGS)))"
    tables = json.loads(subprocess.run([node, "--input-type=module", "-e", script], check=True, capture_output=True,
                                       text=True, timeout=30).stdout)
    reasons = literals(vocab.EndReason) | {"connection_lost", "page_closed", "token_failed"}
    for lang, table in tables.items():
        missing = sorted(reason for reason in reasons if f"reason.{reason}" not in table)
        assert missing == [], f"{lang}: no words for {missing}"
