"""Conversation transcripts (optional, off unless RELAY_TRANSCRIPTS_DIR is set): each conversation's turns as JSON
Lines, one file per conversation, written once when it ends.

A file holds a `conversation` line (ids, wall-clock start), then one line per turn in order — `user` (final
transcript, or typed text), `agent` (reply text), `correction` (what was actually spoken of an interrupted reply),
`interruption`, `tool_call` — each with `t`, seconds since the conversation opened (at most
RELAY_TRANSCRIPT_MAX_BYTES of them, then one `truncated` line), and last an `end` line
(reason, error, message, duration, setup time, degraded). Never audio. The turns are collected in memory as the
conversation goes (`note`, `note_agent_event`: plain functions, no I/O) and written in a worker thread at the end,
so the trio loop never waits on the disk.

Transcripts are personal data: files are created 0640 and never overwritten; retention is the operator's.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import trio

from relay.conversation.record import ConversationRecord
from relay.protocol import elevenlabs as el

log = logging.getLogger("relay.transcripts")


def note(record: ConversationRecord, kind: str, **fields: Any) -> None:
    """Append one turn to the record's transcript (a no-op when transcripts are off). A transcript holds at most
    RELAY_TRANSCRIPT_MAX_BYTES (its JSON): the turn that would pass it is replaced by one `truncated` line, and
    nothing more is collected."""
    if record.transcript is None or record.transcript_room < 0:
        return
    turn = {"type": kind, "t": round(time.monotonic() - record.started_at, 3), **fields}
    size = len(orjson.dumps(turn))
    if size > record.transcript_room:
        record.transcript.append({"type": "truncated", "t": turn["t"]})
        record.transcript_room = -1
        return
    record.transcript_room -= size
    record.transcript.append(turn)


def note_agent_event(record: ConversationRecord, event: el.ServerEvent) -> None:
    """Note what an agent event says about the conversation's turns (audio, pings and the rest are skipped)."""
    kind = type(event)
    if kind is el.UserTranscript and event.final:  # type: ignore[union-attr]
        note(record, "user", text=event.text, event_id=event.event_id)  # type: ignore[union-attr]
    elif kind is el.AgentResponse:
        note(record, "agent", text=event.text, event_id=event.event_id)  # type: ignore[union-attr]
    elif kind is el.AgentResponseCorrection:
        note(record, "correction", text=event.corrected, event_id=event.event_id)  # type: ignore[union-attr]
    elif kind is el.Interruption:
        note(record, "interruption", event_id=event.event_id)  # type: ignore[union-attr]
    elif kind is el.ClientToolCall:
        note(record, "tool_call", tool_name=event.tool_name, tool_call_id=event.tool_call_id,  # type: ignore[union-attr]
             parameters=event.parameters, event_id=event.event_id)  # type: ignore[union-attr]


def render(record: ConversationRecord, started_wall: datetime) -> bytes:
    """The whole JSON Lines file for a finished conversation."""
    lines: list[dict[str, Any]] = [{
        "type": "conversation", "relay_id": record.relay_id, "conversation_id": record.conversation_id,
        "avatar_provider": record.avatar_provider, "avatar_session_id": record.avatar_session_id,
        "started": started_wall.isoformat(timespec="milliseconds"),
    }]
    lines.extend(record.transcript or [])
    lines.append({
        "type": "end", "t": round(time.monotonic() - record.started_at, 3), "reason": record.reason,
        "error": record.error, "message": record.message, "degraded": record.degraded,
        "setup_s": None if record.ready_at is None else round(record.ready_at - record.started_at, 3),
    })
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def file_name(record: ConversationRecord, started_wall: datetime) -> str:
    return f"{started_wall.strftime('%Y%m%dT%H%M%S')}_{record.relay_id}.jsonl"


def _write_new_file(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "wb") as out:
        out.write(content)


class TranscriptsDirUnusable(Exception):
    """RELAY_TRANSCRIPTS_DIR cannot be created or written; the message is one line saying what to do."""


class TranscriptWriter:
    """Collects each conversation's turns and writes them to `directory` when it ends."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 4 * 2**20) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._started: dict[str, datetime] = {}

    async def prepare(self) -> None:
        """Create the directory if needed (in a worker thread). Raises TranscriptsDirUnusable (one line naming
        RELAY_TRANSCRIPTS_DIR) if it cannot be made or written."""
        await trio.to_thread.run_sync(self._prepare)

    def _prepare(self) -> None:
        fix = "point RELAY_TRANSCRIPTS_DIR at a directory this user can write, or unset it (no transcripts)"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TranscriptsDirUnusable(f"RELAY_TRANSCRIPTS_DIR={self.directory} cannot be created "
                                         f"({exc.strerror or type(exc).__name__}): {fix}") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise TranscriptsDirUnusable(f"RELAY_TRANSCRIPTS_DIR={self.directory} is not writable by this user: "
                                         f"{fix}")

    def start(self, record: ConversationRecord) -> None:
        """Begin collecting `record`'s turns (a `ConversationHooks.on_start` hook)."""
        record.transcript = []
        record.transcript_room = self.max_bytes
        self._started[record.relay_id] = datetime.now(UTC)

    def agent_event(self, record: ConversationRecord, event: el.ServerEvent) -> None:
        """Note an agent event's turn (the `ConversationHooks.on_agent_event` hook)."""
        note_agent_event(record, event)

    def user_text(self, record: ConversationRecord, text: str) -> None:
        """Note a typed user message (the `ConversationHooks.on_user_text` hook)."""
        note(record, "user", text=text, typed=True)

    async def write(self, record: ConversationRecord) -> Path | None:
        """Write `record`'s transcript file in a worker thread (not cancellable once started, so a file is never
        half-written by a shutdown). Returns its path, or None if writing failed (logged, never raised)."""
        started = self._started.pop(record.relay_id, None) or datetime.now(UTC)
        content = render(record, started)
        path = self.directory / file_name(record, started)
        try:
            await trio.to_thread.run_sync(_write_new_file, path, content)
        except OSError as exc:
            log.error("could not write the transcript %s: %s", path, exc.strerror or exc)
            return None
        return path
