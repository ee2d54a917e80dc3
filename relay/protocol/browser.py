"""Our browser protocol, sans-io: client frame -> typed event (or a clear ProtocolError), typed event -> server frame.

The wire format is documented in docs/protocol.md; this module is its single implementation on the relay side. It
must never do I/O, import trio (or a relay module above `relay.protocol`), or echo a secret. Binary client frames
are audio and are not parsed at all (the hot path); text frames are validated with pydantic so every bad frame gets
a precise message.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, get_args

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from relay._util import dumps as _dump
from relay.protocol.vocab import AvatarUnavailableReason, EndReason, ErrorCode

# ----------------------------------------------------------------------------------------------------------------------
# Client -> relay


class ProtocolError(Exception):
    """A client frame that breaks the protocol. The message is safe to send back to that client."""


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


DynamicValue = StrictStr | StrictInt | float | StrictBool


class Start(_Frame):
    type: Literal["start"]
    dynamic_variables: dict[str, DynamicValue] = Field(default_factory=dict)
    overrides: dict[str, Any] = Field(default_factory=dict)
    user_id: StrictStr | None = None
    token: StrictStr | None = None


class AudioText(_Frame):
    type: Literal["audio"]
    audio: StrictStr


class Text(_Frame):
    type: Literal["text"]
    text: Annotated[StrictStr, Field(min_length=1)]


class Context(_Frame):
    type: Literal["context"]
    text: Annotated[StrictStr, Field(min_length=1)]


class Activity(_Frame):
    type: Literal["activity"]


class Interrupt(_Frame):
    type: Literal["interrupt"]


class ToolResult(_Frame):
    type: Literal["tool_result"]
    tool_call_id: Annotated[StrictStr, Field(min_length=1)]
    result: Any = ""
    is_error: StrictBool = False


class Feedback(_Frame):
    type: Literal["feedback"]
    score: Literal["like", "dislike"]
    event_id: StrictInt


class Stop(_Frame):
    type: Literal["stop"]


@dataclass(frozen=True, slots=True)
class Audio:
    """PCM16 LE mono at the announced input rate (from a binary frame or a base64 `audio` message)."""

    pcm: bytes


ClientEvent = Start | Audio | Text | Context | Activity | Interrupt | ToolResult | Feedback | Stop

_TextFrame = Annotated[
    Start | AudioText | Text | Context | Activity | Interrupt | ToolResult | Feedback | Stop,
    Field(discriminator="type"),
]
_text_frame_adapter: TypeAdapter[Any] = TypeAdapter(_TextFrame)
_KNOWN_TYPES = ("start", "audio", "text", "context", "activity", "interrupt", "tool_result", "feedback", "stop")


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"][1:]) or "frame"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_text_frame(text: str) -> ClientEvent:
    """Parse one client text frame. Raises ProtocolError naming what is wrong."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("text frames must be JSON objects") from None
    if not isinstance(raw, dict):
        raise ProtocolError("text frames must be JSON objects")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("message has no string 'type'")
    if kind not in _KNOWN_TYPES:
        raise ProtocolError(f"unknown message type {kind[:40]!r}")
    try:
        frame = _text_frame_adapter.validate_python(raw)
    except ValidationError as exc:
        raise ProtocolError(f"invalid {kind!r} message: {_describe(exc)}") from None
    if isinstance(frame, AudioText):
        try:
            pcm = base64.b64decode(frame.audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("'audio' must be base64") from None
        return check_audio(pcm)
    return frame  # type: ignore[no-any-return]


def check_audio(pcm: bytes) -> Audio:
    """Wrap a binary frame as audio; PCM16 frames have an even length."""
    if len(pcm) % 2:
        raise ProtocolError("audio frames must be PCM16: an even number of bytes")
    return Audio(pcm)


def tool_result_text(result: Any) -> str:
    """ElevenLabs wants the tool result as a string: strings pass, anything else is sent as JSON."""
    return result if isinstance(result, str) else orjson.dumps(result).decode()


# ----------------------------------------------------------------------------------------------------------------------
# Relay -> client. Each builder returns the text frame to send.

ERROR_CODES: Final[tuple[ErrorCode, ...]] = get_args(ErrorCode)

# Close code that follows an error with that code (docs/protocol.md, "Ending").
CLOSE_CODE_FOR_ERROR: Final[dict[ErrorCode, int]] = {
    "protocol_error": 1008,
    "unauthorized": 1008,
    "capacity": 1013,
    "upstream_unavailable": 1013,
    "agent_error": 1011,
    "agent_refused": 1008,  # the agent's configuration refuses this start (overrides, dynamic variables)
    "agent_busy": 1013,  # the agent's queue timed out (ElevenLabs close 3008): try again later
    "timeout": 1000,
    "shutdown": 1001,
    "internal": 1011,
}


@dataclass(frozen=True, slots=True)
class AvatarInfo:
    """What the browser needs to show the avatar; sent as `ready.avatar`. Never holds a server-side secret.
    (Defined with the frame it fills; `relay.avatars` re-exports it as part of the provider interface.)"""

    provider: str
    session_id: str | None
    livekit_url: str | None
    access_token: str | None
    simulated: bool


def ready(*, conversation_id: str, avatar: AvatarInfo | None, input_sample_rate: int,
          output_sample_rate: int) -> str:
    return _dump({
        "type": "ready",
        "conversation_id": conversation_id,
        "avatar": None if avatar is None else {
            "provider": avatar.provider,
            "session_id": avatar.session_id,
            "livekit_url": avatar.livekit_url,
            "access_token": avatar.access_token,
            "simulated": avatar.simulated,
        },
        "input_audio": {"encoding": "pcm_s16le", "sample_rate": input_sample_rate},
        "output_audio": {"encoding": "pcm_s16le", "sample_rate": output_sample_rate},
    })


def user_transcript(text: str, event_id: int, final: bool) -> str:
    return _dump({"type": "user_transcript", "text": text, "event_id": event_id, "final": final})


def agent_response(text: str, event_id: int) -> str:
    return _dump({"type": "agent_response", "text": text, "event_id": event_id})


def agent_response_correction(text: str, original: str, event_id: int) -> str:
    return _dump({"type": "agent_response_correction", "text": text, "original": original, "event_id": event_id})


def interruption(event_id: int) -> str:
    return _dump({"type": "interruption", "event_id": event_id})


def tool_call(tool_call_id: str, tool_name: str, parameters: dict[str, Any]) -> str:
    return _dump({"type": "tool_call", "tool_call_id": tool_call_id, "tool_name": tool_name,
                  "parameters": parameters})


def avatar_speaking(text: str | None, duration_ms: int | None) -> str:
    return _dump({"type": "avatar_speaking", "text": text, "duration_ms": duration_ms})


def avatar_state(speaking: bool) -> str:
    return _dump({"type": "avatar_state", "speaking": speaking})


def avatar_unavailable(reason: AvatarUnavailableReason, message: str) -> str:
    return _dump({"type": "avatar_unavailable", "reason": reason, "message": message})


def error(code: ErrorCode, message: str, **extra: Any) -> str:
    return _dump({"type": "error", "code": code, "message": message, **extra})


def ended(reason: EndReason) -> str:
    return _dump({"type": "ended", "reason": reason})
