"""The agent's frames as the real service writes them (`type` last), and `Close`: end the socket with a code."""

from __future__ import annotations

import base64
from typing import Any

import orjson


def frame(event_type: str, key: str, body: dict[str, Any]) -> str:
    return orjson.dumps({key: body, "type": event_type}).decode()


def audio_frame(audio: bytes, event_id: int, alignment: str = "") -> str:
    return (
        '{"audio_event":{"audio_base_64":"'
        + base64.b64encode(audio).decode("ascii")
        + '","event_id":'
        + str(event_id)
        + alignment
        + '},"type":"audio"}'
    )


def alignment_field(chars: str, char_ms: float, first_start_ms: float) -> str:
    """`,"alignment":{...}` for an audio frame in which `chars` start, the first `first_start_ms` after the chunk's
    start: per-character timings relative to the chunk, exactly as its audio says them (`_speech`)."""
    return ',"alignment":' + orjson.dumps({
        "chars": list(chars),
        "char_start_times_ms": [round(first_start_ms + i * char_ms) for i in range(len(chars))],
        "char_durations_ms": [round(first_start_ms + (i + 1) * char_ms) - round(first_start_ms + i * char_ms)
                              for i in range(len(chars))],
    }).decode()


class Close(Exception):
    """Close the socket with `code`/`reason`; `message`, when given, is sent first as an `error` event (the real
    service announces contract errors and max duration that way)."""

    def __init__(self, code: int, reason: str, message: str | None = None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.message = message


def error_frame(code: int, error_type: str, message: str) -> str:
    return frame("error", "error_event", {"code": code, "message": message, "error_type": error_type,
                                           "reason": message, "debug_message": None, "details": None})
