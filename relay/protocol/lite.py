"""The LITE-mode audio WebSocket (`ws_url`), sans-I/O: LiveAvatar LITE and HeyGen v1's `realtime_endpoint` speak it.

The relay sends the agent's speech as base64 PCM16 LE mono 24 kHz in `agent.speak` frames (one `event_id`
per agent turn, `turn-7`), ends a turn with `agent.speak_end`, barges in with `agent.interrupt`, and keeps
the session alive with `session.keep_alive`. The server answers with `agent.speak_started` /
`agent.speak_ended` and a handful of bookkeeping events (docs/reference: LiveAvatar, "The ws_url websocket").

Frame builders, a parser that turns every server frame into a frozen dataclass (unknown types become `None`), and
the chunking policy. The socket client around them is `relay.avatars.lite`.

Packet cadence (`SpeakPacer`): the LITE guide's "let the avatar buffer" (heygen-com/liveavatar-agent-skills
`lite-mode-guide.md`; livekit-agents' LiveAvatar plugin: `first_chunk_threshold = 0.6`, then 1 s): a turn's first
packet carries about FIRST_PACKET_SECONDS (600 ms) of audio, the next ones up to 1 s, but none waits longer than
PACKET_MAX_WAIT once it has audio (so an agent that speaks in real time never lets the avatar's 600 ms lead run
out); the end of the turn sends what is left. RELAY_LITE_FIRST_PACKET_MS=0 sends every chunk as it comes (the web
SDK sends ~20 ms pieces). What it costs: docs/performance.md "LITE packet cadence". No packet exceeds
`MAX_SPEAK_PCM_BYTES` (1 s of audio, ~64 KB of base64; `split_speak_audio`), so no frame comes near the 1 MB limit
and an `agent.interrupt` never waits behind a huge frame.

Event ids: one per utterance, `turn-7`, ended by exactly one `agent.speak_end`. Agent audio of the same turn that
comes after its `speak_end` (a pause inside a reply longer than the relay's turn gap) is a new utterance,
`turn-7.1`: what the service does with speech under an id it has committed is not documented, so the relay never
sends any (`turn_event_id(turn, segment)`). This module must never do I/O or import trio.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pybase64

from relay._util import dumps as _dumps

LITE_SAMPLE_RATE = 24_000
LITE_BYTES_PER_SECOND = LITE_SAMPLE_RATE * 2
# The server may close the connection on a frame over 1 MB; base64 grows data by 4/3.
MAX_FRAME_BYTES = 1_000_000
MAX_SPEAK_PCM_BYTES = LITE_BYTES_PER_SECOND  # 1 s per packet at most (~64 KB of base64)
FIRST_PACKET_SECONDS = 0.6  # a turn's first packet (the guide; livekit-agents `first_chunk_threshold`)
PACKET_MAX_WAIT = 0.25  # seconds a later packet's first audio may wait for more (under the first packet's lead)


class LiteProtocolError(Exception):
    """A frame from the server that is not a JSON object with a string `type`."""


# ----------------------------------------------------------------------------------------------------------------------
# Client -> server frames


def build_speak(event_id: str, pcm24k: bytes | memoryview) -> str:
    """`agent.speak`: one packet of PCM16 LE mono 24 kHz audio for the utterance `event_id`."""
    if len(pcm24k) % 2:
        raise ValueError("PCM16 audio must have an even number of bytes")
    audio = pybase64.b64encode_as_string(pcm24k)
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


def turn_event_id(turn: int, prefix: str = "turn", segment: int = 0) -> str:
    """The `event_id` shared by every frame of one utterance of agent turn `turn`: `turn-7`, and `turn-7.1`,
    `turn-7.2` for audio of the turn that comes after an utterance of it was ended (`agent.speak_end`)."""
    return f"{prefix}-{turn}" if segment == 0 else f"{prefix}-{turn}.{segment}"


def turn_from_event_id(event_id: str | None, prefix: str = "turn") -> int | None:
    """The agent turn of an event id made by `turn_event_id` (any segment); None for one the relay did not make."""
    if event_id is None:
        return None
    head, sep, tail = event_id.rpartition("-")
    number, dot, segment = tail.partition(".")
    if not sep or head != prefix or not number.isdigit() or (dot and not segment.isdigit()):
        return None
    return int(number)


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


class SpeakPacer:
    """The packet cadence of one utterance (see the module docstring), sans-I/O: `add(pcm, now)` takes resampled
    audio and returns the packets to send now; `flush()` the rest (the utterance ends). `first_bytes` 0: every
    `add` returns its audio at once."""

    __slots__ = ("_buffer", "_since", "_started", "first_bytes", "max_wait", "packet_bytes")

    def __init__(self, first_bytes: int, packet_bytes: int = MAX_SPEAK_PCM_BYTES,
                 max_wait: float = PACKET_MAX_WAIT) -> None:
        self.first_bytes = first_bytes - first_bytes % 2
        self.packet_bytes = packet_bytes
        self.max_wait = max_wait
        self._buffer = bytearray()
        self._since = 0.0
        self._started = False  # a packet of this utterance has gone out

    @staticmethod
    def first_bytes_for(seconds: float) -> int:
        """The first packet's size in bytes of 24 kHz PCM16 for `seconds` of audio."""
        return int(seconds * LITE_BYTES_PER_SECOND)

    def add(self, pcm24k: bytes, now: float) -> list[memoryview]:
        if not pcm24k:
            return []
        if not self._buffer:
            self._since = now
        self._buffer += pcm24k
        if self.first_bytes == 0:
            due = True
        elif self._started:
            due = len(self._buffer) >= self.packet_bytes or now - self._since >= self.max_wait
        else:
            due = len(self._buffer) >= self.first_bytes
        return self.flush() if due else []

    def flush(self) -> list[memoryview]:
        if not self._buffer:
            return []
        data, self._buffer = bytes(self._buffer), bytearray()
        self._started = True
        return list(split_speak_audio(data, self.packet_bytes))


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
