"""The feature frames of our browser protocol both ways (docs/protocol.md) and the caption aligner, without sockets."""

from __future__ import annotations

import json

import pytest

from relay.protocol import browser as bp


def test_new_client_frames_parse() -> None:
    assert bp.parse_text_frame('{"type":"mcp_approval","tool_call_id":"m1","approved":true}') == \
        bp.McpApproval(type="mcp_approval", tool_call_id="m1", approved=True)
    assert bp.parse_text_frame('{"type":"multimodal","text":"look"}') == bp.Multimodal(type="multimodal", text="look")
    text = bp.parse_text_frame('{"type":"text","text":"Yes","rich_content_id":"rc1"}')
    assert isinstance(text, bp.Text) and text.rich_content_id == "rc1"
    context = bp.parse_text_frame('{"type":"context","text":"p2","context_id":"page"}')
    assert isinstance(context, bp.Context) and context.context_id == "page"
    cleared = bp.parse_text_frame('{"type":"feedback","score":null,"event_id":3}')
    assert isinstance(cleared, bp.Feedback) and cleared.score is None
    start = bp.parse_text_frame('{"type":"start","custom_llm_extra_body":{"temperature":0.1}}')
    assert isinstance(start, bp.Start) and start.custom_llm_extra_body == {"temperature": 0.1}


@pytest.mark.parametrize("frame", [
    '{"type":"mcp_approval","tool_call_id":"m1","approved":"yes"}',
    '{"type":"mcp_approval","approved":true}',
    '{"type":"mcp_approval","tool_call_id":"","approved":true}',
    '{"type":"multimodal","text":""}',
    '{"type":"multimodal","text":{"type":"user_message","text":"x"}}',
    '{"type":"text","text":"x","rich_content_id":5}',
    '{"type":"context","text":"x","context_id":""}',
    '{"type":"feedback","event_id":3}',
    '{"type":"feedback","score":"meh","event_id":3}',
    '{"type":"start","custom_llm_extra_body":[1]}',
])
def test_bad_new_client_frames_are_protocol_errors(frame: str) -> None:
    with pytest.raises(bp.ProtocolError):
        bp.parse_text_frame(frame)


def test_new_server_frames() -> None:
    assert json.loads(bp.agent_response_part("delta", "Hel", 4)) == {
        "type": "agent_response_part", "event_id": 4, "part": "delta", "text": "Hel"}
    assert json.loads(bp.tool_status("t1", "lookup_order", "webhook", "running")) == {
        "type": "tool_status", "tool_call_id": "t1", "tool_name": "lookup_order", "tool_type": "webhook",
        "state": "running"}
    assert json.loads(bp.mcp_tool_call(tool_call_id="m1", service_id="s", tool_name="get_weather",
                                       tool_description=None, parameters={"city": "Oslo"}, state="awaiting_approval",
                                       approval_timeout_secs=30, error_message=None)) == {
        "type": "mcp_tool_call", "tool_call_id": "m1", "service_id": "s", "tool_name": "get_weather",
        "tool_description": None, "parameters": {"city": "Oslo"}, "state": "awaiting_approval",
        "approval_timeout_secs": 30, "error_message": None}
    assert json.loads(bp.mcp_connection_status([{"integration_id": "i"}])) == {
        "type": "mcp_connection_status", "integrations": [{"integration_id": "i"}]}
    assert json.loads(bp.queue_status("waiting")) == {"type": "queue_status", "status": "waiting"}
    assert json.loads(bp.human_agent(True)) == {"type": "human_agent", "connected": True}
    assert json.loads(bp.agent_typing(False)) == {"type": "agent_typing", "typing": False}
    assert json.loads(bp.vad_score(0.25)) == {"type": "vad_score", "score": 0.25}
    assert json.loads(bp.context_usage({"model": "m", "context_tokens": 3})) == {
        "type": "context_usage", "model": "m", "context_tokens": 3}
    assert json.loads(bp.rich_content({"rich_content_id": "r", "type": "spoofed"}))["type"] == "rich_content"
    assert json.loads(bp.avatar_state(True, 5)) == {"type": "avatar_state", "speaking": True, "event_id": 5}
    assert json.loads(bp.avatar_speaking("Hi", 900, None)) == {
        "type": "avatar_speaking", "text": "Hi", "duration_ms": 900, "event_id": None}


# -- overrides allow-list -------------------------------------------------------------------------------------------


def test_override_paths_and_the_allow_list() -> None:
    overrides = {"agent": {"language": "fr", "prompt": {"prompt": "be evil"}}, "tts": {"voice_id": "v"}}
    assert bp.override_paths(overrides) == ["agent.language", "agent.prompt.prompt", "tts.voice_id"]
    assert bp.refused_override(overrides, frozenset()) == "agent.language"
    allowed = bp.parse_allowed_paths(" agent.language , tts.voice_id ")
    assert allowed == {"agent.language", "tts.voice_id"}
    assert bp.refused_override(overrides, allowed) == "agent.prompt.prompt"
    assert bp.refused_override(overrides, frozenset({"agent", "tts"})) is None
    assert bp.refused_override(overrides, frozenset({"*"})) is None
    assert bp.refused_override({}, frozenset()) is None
    assert bp.refused_override({"agentx": {"a": 1}}, frozenset({"agent"})) == "agentx.a"


# -- caption aligner ------------------------------------------------------------------------------------------------


def chunk(text: str, step: int = 100) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    return tuple(text), tuple(i * step for i in range(len(text))), (step,) * len(text)


def test_words_are_runs_of_non_space_characters_with_turn_relative_times() -> None:
    aligner = bp.CaptionAligner()
    offset, words = aligner.chunk(3, *chunk("Hi, you "), audio_ms=800) or (None, [])
    assert offset == 0
    assert words == [bp.CaptionWord("Hi,", 0, 300, False), bp.CaptionWord("you", 400, 700, False)]
    offset, words = aligner.chunk(3, *chunk("there"), audio_ms=500) or (None, [])
    assert offset == 800
    assert words == [bp.CaptionWord("there", 800, 1300, False)]


def test_a_word_cut_by_a_chunk_boundary_continues_in_the_next_chunk() -> None:
    aligner = bp.CaptionAligner()
    first = aligner.chunk(1, *chunk("Hello wor"), audio_ms=900)
    assert first is not None and first[1][-1] == bp.CaptionWord("wor", 600, 900, False)
    second = aligner.chunk(1, *chunk("ld again"), audio_ms=800)
    assert second is not None
    assert second == (900, [bp.CaptionWord("ld", 900, 1100, True), bp.CaptionWord("again", 1200, 1700, False)])


def test_offsets_accumulate_per_turn_also_over_chunks_without_alignment() -> None:
    aligner = bp.CaptionAligner()
    assert aligner.chunk(1, None, None, None, audio_ms=250) is None
    assert aligner.chunk(2, *chunk("a"), audio_ms=100) == (0, [bp.CaptionWord("a", 0, 100, False)])
    assert aligner.chunk(1, *chunk("b"), audio_ms=100) == (250, [bp.CaptionWord("b", 250, 350, False)])
    # a chunk without alignment in between breaks a word: the next one does not continue it
    aligner.chunk(1, *chunk("wo"), audio_ms=200)
    aligner.chunk(1, None, None, None, audio_ms=100)
    result = aligner.chunk(1, *chunk("rd"), audio_ms=200)
    assert result is not None and result[1][0].continues is False and result[0] == 650


def test_spaces_only_and_leading_space_chunks() -> None:
    aligner = bp.CaptionAligner()
    assert aligner.chunk(1, *chunk("ab"), audio_ms=200) is not None
    assert aligner.chunk(1, *chunk("  "), audio_ms=200) == (200, [])
    result = aligner.chunk(1, *chunk(" cd"), audio_ms=300)
    assert result == (400, [bp.CaptionWord("cd", 500, 700, False)])


def test_the_aligner_forgets_old_turns() -> None:
    aligner = bp.CaptionAligner()
    for turn in range(1, 40):
        aligner.chunk(turn, *chunk("x"), audio_ms=100)
    assert len(aligner._offset_ms) <= bp.CAPTION_TURNS_KEPT


def test_alignment_frame() -> None:
    frame = json.loads(bp.agent_alignment(2, 800, [bp.CaptionWord("ld", 800, 1000, True)]))
    assert frame == {"type": "agent_alignment", "event_id": 2, "offset_ms": 800,
                     "words": [{"text": "ld", "start_ms": 800, "end_ms": 1000, "continues": True}]}
