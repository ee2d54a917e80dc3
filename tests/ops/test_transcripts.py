"""Transcripts without sockets: final turns are kept, audio never is."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from relay.conversation.record import ConversationRecord
from relay.ops.transcripts import note_agent_event, render
from relay.protocol import elevenlabs as el


def test_transcripts_keep_final_turns_and_never_audio() -> None:
    record = ConversationRecord("r-9", conversation_id="conv_9")
    record.transcript = []
    for event in (el.UserTranscript("hel", 1, False), el.UserTranscript("hello", 1, True),
                  el.AgentResponse("Hi there", 2), el.AgentAudio(b"\x01\x02" * 100, 2), el.Interruption(3),
                  el.AgentResponseCorrection("Hi there", "Hi", 2), el.Ping(4, 20.0)):
        note_agent_event(record, event)
    record.reason = "client_stop"
    lines = [orjson.loads(line) for line in render(record, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)).splitlines()]
    assert [line["type"] for line in lines] == ["conversation", "user", "agent", "interruption", "correction", "end"]
    assert lines[0]["started"] == "2026-01-02T03:04:05.000+00:00" and lines[0]["conversation_id"] == "conv_9"
    assert lines[1]["text"] == "hello" and lines[4]["text"] == "Hi"
    assert lines[-1]["reason"] == "client_stop" and lines[-1]["setup_s"] is None
    assert "audio" not in str(lines)


def test_a_transcript_stops_growing_at_its_cap_and_says_so() -> None:
    """L8 of the security review: a conversation's transcript is bounded in memory (RELAY_TRANSCRIPT_MAX_BYTES)."""
    from relay.ops.transcripts import TranscriptWriter

    record = ConversationRecord("r-10")
    TranscriptWriter("/nonexistent", max_bytes=4096).start(record)
    for n in range(100):
        note_agent_event(record, el.AgentResponse("x" * 500, n))
    assert record.transcript is not None
    assert sum(len(orjson.dumps(turn)) for turn in record.transcript) <= 4096 + 100
    assert record.transcript[-1]["type"] == "truncated"
    assert [turn["type"] for turn in record.transcript].count("truncated") == 1
