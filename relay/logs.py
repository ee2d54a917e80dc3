"""Logging set-up: plain text by default, JSON lines with RELAY_LOG_FORMAT=json. Never logs payloads or secrets."""

from __future__ import annotations

import logging
import sys

import orjson

from relay.config import Settings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(settings: Settings) -> None:
    """Install one stderr handler on the `relay` logger (idempotent)."""
    logger = logging.getLogger("relay")
    logger.setLevel(settings.relay_log_level.upper())
    if any(getattr(h, "_relay", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._relay = True  # type: ignore[attr-defined]
    if settings.relay_log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
