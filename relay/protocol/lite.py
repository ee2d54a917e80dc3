"""The LITE-mode audio WebSocket (`ws_url`), sans-I/O: LiveAvatar LITE and HeyGen v1's `realtime_endpoint` speak it.

The relay sends the agent's speech as base64 PCM16 LE mono 24 kHz in `agent.speak` frames (one `event_id`
per agent turn, `turn-7`), ends a turn with `agent.speak_end`, barges in with `agent.interrupt`, and keeps
the session alive with `session.keep_alive`. The server answers with `agent.speak_started` /
`agent.speak_ended` and a handful of bookkeeping events (docs/reference: LiveAvatar, "The ws_url websocket").

Frame builders, a parser that turns every server frame into a frozen dataclass (unknown types become `None`), and
the chunking policy. The socket client around them is `relay.avatars.lite`.

Chunking policy (`split_speak_audio`): the relay holds nothing back. Each chunk of agent audio is resampled
to 24 kHz and sent at once as one `agent.speak` packet, so the relay adds no buffering latency: the first
packet of a turn leaves as soon as the first agent chunk arrives. (pipecat holds 400 ms, livekit 600 ms, the
web SDK sends ~15 ms pieces, so the server takes small packets; the docs' "about 1 s per packet" is advice,
1 MB the hard limit.) A chunk longer than `MAX_SPEAK_PCM_BYTES` (1 s of audio, ~64 KB of base64) is split
into 1 s packets, so no frame comes near the 1 MB limit and an `agent.interrupt` never waits behind a huge
frame. This module must never do I/O or import trio.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from relay._util import dumps as _dumps

LITE_SAMPLE_RATE = 24_000
LITE_BYTES_PER_SECOND = LITE_SAMPLE_RATE * 2
# The server may close the connection on a frame over 1 MB; base64 grows data by 4/3.
MAX_FRAME_BYTES = 1_000_000
MAX_SPEAK_PCM_BYTES = LITE_BYTES_PER_SECOND  # 1 s per packet at most (~64 KB of base64)


class LiteProtocolError(Exception):
    """A frame from the server that is not a JSON object with a string `type`."""


# ----------------------------------------------------------------------------------------------------------------------
# Client -> server frames


def build_speak(event_id: str, pcm24k: bytes | memoryview) -> str:
    """`agent.speak`: one packet of PCM16 LE mono 24 kHz audio for the utterance `event_id`."""
    if len(pcm24k) % 2:
        raise ValueError("PCM16 audio must have an even number of bytes")
    audio = base64.b64encode(pcm24k).decode("ascii")
    return _dumps({"type": "agent.speak", "event_id": event_id, "audio": audio})


def build_speak_end(event_id: str) -> str:
    """`agent.speak_end`: the utterance `event_id` has no more audio; the server commits its buffer."""
    return _dumps({"type": "agent.speak_end", "event_id": event_id})


def build_interrupt(event_id: str) -> str:
    """`agent.interrupt`: stop speaking now and clear the audio buffer."""
    return _dumps({"type": "agent.interrupt", "event_id": event_id})


def build_start_listening(event_id: str) -> str:
    """`agent.start_listening`: show the listening pose."""
    return _dumps({"type": "agent.start_listening", "event_id": event_id})


def build_stop_listening(event_id: str) -> str:
    """`agent.stop_listening`: leave the listening pose."""
    return _dumps({"type": "agent.stop_listening", "event_id": event_id})


def build_keep_alive(event_id: str) -> str:
    """`session.keep_alive`: reset the server's idle timer (5 minutes)."""
    return _dumps({"type": "session.keep_alive", "event_id": event_id})


def turn_event_id(turn: int, prefix: str = "turn") -> str:
    """The `event_id` shared by every frame of agent turn `turn`: `turn-7`."""
    return f"{prefix}-{turn}"


def turn_from_event_id(event_id: str | None, prefix: str = "turn") -> int | None:
    """Inverse of `turn_event_id`; None for an event id the relay did not make."""
    if event_id is None:
        return None
    head, sep, tail = event_id.rpartition("-")
    if not sep or head != prefix or not tail.isdigit():
        return None
    return int(tail)


# ----------------------------------------------------------------------------------------------------------------------
# Server -> client events


@dataclass(frozen=True, slots=True)
class SessionStateUpdated:
    """`session.state_updated`: connecting | connected | closing | closed."""

    state: str


@dataclass(frozen=True, slots=True)
class SpeakStarted:
    """`agent.speak_started`: the avatar began speaking utterance `event_id`."""

    event_id: str | None
    task_id: str | None


@dataclass(frozen=True, slots=True)
class SpeakEnded:
    """`agent.speak_ended`: the avatar finished speaking utterance `event_id`."""

    event_id: str | None
    task_id: str | None


@dataclass(frozen=True, slots=True)
class SpeakInterrupted:
    """`agent.speak_interrupted`: the utterance `event_id` was cut off by `agent.interrupt`."""

    event_id: str | None
    task_id: str | None


@dataclass(frozen=True, slots=True)
class AudioBufferAppended:
    """`agent.audio_buffer_appended`: a packet was taken (about one per `agent.speak`)."""

    event_id: str | None


@dataclass(frozen=True, slots=True)
class AudioBufferCommitted:
    """`agent.audio_buffer_committed`: the server acknowledged `agent.speak_end`."""

    event_id: str | None


@dataclass(frozen=True, slots=True)
class AudioBufferCleared:
    """`agent.audio_buffer_cleared`: the server acknowledged `agent.interrupt`."""

    event_id: str | None


@dataclass(frozen=True, slots=True)
class AgentStateUpdated:
    """`agent.state_updated`: idle | listening | talking."""

    previous_state: str | None
    new_state: str | None


@dataclass(frozen=True, slots=True)
class ServerError:
    """`error`: `{"error": {"type", "message"}}`."""

    error_type: str | None
    message: str | None


@dataclass(frozen=True, slots=True)
class ServerWarning:
    """`warning`: same shape as `error` (a bare `message` is accepted too)."""

    warning_type: str | None
    message: str | None


LiteEvent = (
    SessionStateUpdated
    | SpeakStarted
    | SpeakEnded
    | SpeakInterrupted
    | AudioBufferAppended
    | AudioBufferCommitted
    | AudioBufferCleared
    | AgentStateUpdated
    | ServerError
    | ServerWarning
)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _task_id(message: dict[str, Any]) -> str | None:
    task = message.get("task")
    return _str_or_none(task.get("id")) if isinstance(task, dict) else None


def _problem(message: dict[str, Any], key: str) -> tuple[str | None, str | None]:
    # `{"error": {"type", "message"}}` per the reference; tolerate a bare string or top-level `message`.
    body = message.get(key)
    if isinstance(body, dict):
        return _str_or_none(body.get("type")), _str_or_none(body.get("message"))
    if isinstance(body, str):
        return None, body
    return None, _str_or_none(message.get("message"))


def parse_server_event(frame: str | bytes) -> LiteEvent | None:
    """One server frame -> its event; None for a type this module does not know (forward compatibility).

    Raises LiteProtocolError if the frame is not a JSON object with a string `type`.
    """
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise LiteProtocolError("frame is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise LiteProtocolError("frame is not a JSON object with a string 'type'")
    kind: str = message["type"]
    event_id = _str_or_none(message.get("event_id"))
    match kind:
        case "session.state_updated":
            return SessionStateUpdated(state=_str_or_none(message.get("state")) or "")
        case "agent.speak_started":
            return SpeakStarted(event_id, _task_id(message))
        case "agent.speak_ended":
            return SpeakEnded(event_id, _task_id(message))
        case "agent.speak_interrupted":
            return SpeakInterrupted(event_id, _task_id(message))
        case "agent.audio_buffer_appended":
            return AudioBufferAppended(event_id)
        case "agent.audio_buffer_committed":
            return AudioBufferCommitted(event_id)
        case "agent.audio_buffer_cleared":
            return AudioBufferCleared(event_id)
        case "agent.state_updated":
            return AgentStateUpdated(_str_or_none(message.get("previous_state")),
                                     _str_or_none(message.get("new_state")))
        case "error":
            return ServerError(*_problem(message, "error"))
        case "warning":
            return ServerWarning(*_problem(message, "warning"))
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Chunking policy


def split_speak_audio(pcm24k: bytes, max_bytes: int = MAX_SPEAK_PCM_BYTES) -> Iterator[memoryview]:
    """Slice resampled audio into `agent.speak` packets: the whole chunk at once if it fits in `max_bytes`,
    else `max_bytes` pieces (rounded down to whole samples). Empty input gives no packet. See the module
    docstring for why nothing is held back."""
    if max_bytes < 2:
        raise ValueError("max_bytes must hold at least one sample")
    step = max_bytes - (max_bytes % 2)
    view = memoryview(pcm24k)
    for start in range(0, len(view), step):
        yield view[start:start + step]
