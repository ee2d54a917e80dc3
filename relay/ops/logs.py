"""Logging set-up: plain text by default, JSON lines with RELAY_LOG_FORMAT=json. Never logs payloads or secrets.

Every line written while a conversation runs carries its ids — `relay_id` (ours, always known),
`conversation_id` (the agent's, once it answered) and `avatar_session_id` (once the avatar session exists) — even
lines from modules that know nothing of conversations (the providers, the agent client). They come from
`relay.conversation.record.current_conversation`, a context variable the conversation sets once: trio copies the
context into every task the conversation starts, so its pumps, speech router and avatar session all log under its
ids. In text the ids follow the message in brackets; in JSON they are fields. A traced conversation's lines
(`relay.ops.tracing`) also carry its `trace_id` and the current `span_id` (the root `conversation` span's, or the
step's being recorded), so a line can be found from its trace and back.

Under `avatar-relay serve --workers N` each worker process calls `set_worker(index)` first: every line it writes then
carries `worker` (a JSON field; `[worker N]` after the logger name in text). A single relay's lines are unchanged.

This module must never format audio or secrets into a line; callers pass ids, codes and short messages only.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import orjson

from relay.config import Settings
from relay.conversation.record import current_conversation
from relay.conversation.spans import current_trace

ID_FIELDS = ("relay_id", "conversation_id", "avatar_session_id")
TRACE_FIELDS = ("trace_id", "span_id")  # only in lines of a traced conversation (relay.ops.tracing)

_worker: int | None = None


def set_worker(index: int | None) -> None:
    """Mark every later line of this process as written by worker `index` (None: a single relay)."""
    global _worker
    _worker = index


class ConversationIdsFilter(logging.Filter):
    """Puts the current conversation's ids on each record (`record.relay_id` ... and `record.conversation_ids`,
    the text suffix). Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = _worker
        record.worker_tag = "" if _worker is None else f" [worker {_worker}]"
        ids = current_conversation.get()
        traced = current_trace.get()
        if traced is None:
            record.trace_id = record.span_id = None
            trace_suffix = ""
        else:
            trace_id, span_id = traced.log_ids()
            record.trace_id, record.span_id = trace_id, span_id
            trace_suffix = f" trace_id={trace_id} span_id={span_id}"
        if ids is None:
            record.relay_id = record.conversation_id = record.avatar_session_id = None
            record.conversation_ids = f" [{trace_suffix.strip()}]" if trace_suffix else ""
        else:
            record.relay_id = ids.relay_id
            record.conversation_id = ids.conversation_id
            record.avatar_session_id = ids.avatar_session_id
            record.conversation_ids = (f" [relay_id={ids.relay_id} conversation_id={ids.conversation_id} "
                                       f"avatar_session_id={ids.avatar_session_id}{trace_suffix}]")
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(worker_tag)s: %(message)s%(conversation_ids)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the conversation ids (null outside one), and
    `worker` in a worker process."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {"time": self.formatTime(record), "level": record.levelname,
                                    "logger": record.name, "message": record.getMessage()}
        for name in ID_FIELDS:
            entry[name] = getattr(record, name, None)
        for name in TRACE_FIELDS:
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        worker = getattr(record, "worker", None)
        if worker is not None:
            entry["worker"] = worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def make_handler(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing `log_format` ("text" or "json") lines, with the conversation ids, to `stream`
    (default stderr)."""
    handler: logging.Handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ConversationIdsFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(settings: Settings) -> None:
    """Install one stderr handler on the `relay` logger (idempotent).

    The operator's level (RELAY_LOG_LEVEL) is set on the handler; the logger itself passes WARNING and above
    whatever that level, so the metrics can see warnings they count (a failed avatar stop) even when the
    operator only wants errors printed."""
    level = logging.getLevelName(settings.relay_log_level.upper())
    if not isinstance(level, int):
        level = logging.INFO
    logger = logging.getLogger("relay")
    logger.setLevel(min(level, logging.WARNING))
    logger.propagate = False
    for existing in logger.handlers:
        if getattr(existing, "_relay", False):
            existing.setLevel(level)
            return
    handler = make_handler(settings.relay_log_format)
    handler._relay = True  # type: ignore[attr-defined]
    handler.setLevel(level)
    logger.addHandler(handler)
