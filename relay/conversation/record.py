"""What one conversation is, as data: its `ConversationRecord` (ids, timings, how it ended, its `Traffic`), and
`current_conversation`, the context variable that names the conversation a task works for.

Plain data, no I/O: the operations modules (metrics, transcripts, logs) read records without importing the engine.
The conversation sets `current_conversation` once; trio copies the context into every task it starts, so every log
line and metric from its pumps, speech router and avatar session knows its conversation.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Traffic:
    """Audio relayed by one conversation, counted in plain ints on the hot path (the metrics read them at
    scrape time and at the end; no metrics library call per frame)."""

    audio_in_frames: int = 0  # browser -> agent
    audio_in_bytes: int = 0
    audio_out_frames: int = 0  # agent -> relay (then browser and/or avatar)
    audio_out_bytes: int = 0


@dataclass
class ConversationRecord:
    """What happened, for logs and metrics; filled in as the conversation goes."""

    relay_id: str
    started_at: float = field(default_factory=time.monotonic)
    conversation_id: str | None = None
    subject: str | None = None  # the client token's verified `sub` (never a page's own user_id); None without
    avatar_provider: str | None = None
    avatar_session_id: str | None = None
    degraded: bool = False
    ready_at: float | None = None
    reason: str = "unknown"
    error: str | None = None
    message: str = ""
    traffic: Traffic = field(default_factory=Traffic)
    # Set by the transcript writer when RELAY_TRANSCRIPTS_DIR is on: the turns, in order (never audio).
    transcript: list[dict[str, Any]] | None = None
    transcript_room: int = 4 * 2**20  # bytes the transcript may still grow by (RELAY_TRANSCRIPT_MAX_BYTES); < 0: cut


current_conversation: ContextVar[ConversationRecord | None] = ContextVar("current_conversation", default=None)
