"""ElevenLabs Conversational AI, sans-I/O: the agent's WebSocket protocol and the REST answers the relay reads.

`parse_server_event` turns a server frame into a frozen dataclass, the `build_*` functions turn what the relay wants
to say into the exact JSON text ElevenLabs expects, the `*_url` functions derive endpoints from a configurable base
URL (regional hosts exist), and `read_signed_url_answer` reads the signed-URL answer. The I/O around it (the signed
URL request and the agent socket) is `relay.elevenlabs`.

Liberal in what it accepts (real frames put `type` last; unknown event types are returned as `UnknownEvent`, never an
error; the error event comes in a schema form and a flat form; a known event with a missing or oddly typed field is
defaulted like the official clients do, or returned as `MalformedEvent` to be logged and skipped — never an
exception), strict in what it sends. `classify_close` says what an agent's close means (a normal end, max duration,
a set-up refusal, a busy agent, or a failure). This module must never do
I/O or import trio, httpx2 or websockets, and must never put an API key in an exception message.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import orjson

from relay._util import dumps as _dumps
from relay.protocol.vocab import AgentUnavailableReason

# ----------------------------------------------------------------------------------------------------------------------
# Errors


class AgentProtocolError(Exception):
    """The agent's first message is not a usable `conversation_initiation_metadata` (nothing else is fatal: a
    malformed later frame is a `MalformedEvent`)."""


class AgentRefused(Exception):
    """The agent refused the conversation at set-up: an `error` event (and/or a close) before its metadata, e.g.
    `override_error` or `missing_dynamic_variable` (close 1008), or a queue time-out (close 3008). `message` is the
    service's own words; `ending` says what it means (`classify_close`: "agent_refused", "agent_busy" or
    "agent_error"); `error_type`, `code` (the error event's) and `close_code`/`close_reason` as received."""

    def __init__(self, ending: Ending, *, error_type: str | None = None, code: int | None = None,
                 close_code: int | None = None, close_reason: str = "") -> None:
        super().__init__(ending.message)
        self.ending = ending
        self.message = ending.message
        self.error_type = error_type
        self.code = code
        self.close_code = close_code
        self.close_reason = close_reason


class AgentUnavailable(Exception):
    """No conversation could be started. `reason` is one of "unauthorized", "not_found", "rate_limited",
    "upstream_error", "timeout", "rejected"; `status_code` is the HTTP status when there was one."""

    def __init__(self, reason: AgentUnavailableReason, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status_code = status_code


class AgentClosed(Exception):
    """The agent's socket is closed. `code` and `reason` are ElevenLabs' close frame (1000 agent ended or
    `max_duration_exceeded`; 1002 operational, e.g. `transport_receive_timeout`; 1008 contract, e.g.
    `override_error`, `invalid_message`; 1011 server error). `code` is 1006 when the connection was lost
    without a close frame, None when unknown."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"agent connection closed (code {code}{', ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


# ----------------------------------------------------------------------------------------------------------------------
# Server events


@dataclass(frozen=True, slots=True)
class ConversationMetadata:
    """`conversation_initiation_metadata`: always the first server message. The formats are the agent's own
    configuration and cannot be overridden: read them every time."""

    conversation_id: str
    agent_output_audio_format: str
    user_input_audio_format: str


@dataclass(frozen=True, slots=True)
class Alignment:
    """An audio chunk's per-character timings (asyncapi `AudioAlignmentData`): `chars[i]` starts
    `char_start_times_ms[i]` ms after the chunk's start and lasts `char_durations_ms[i]` ms. The three tuples have
    the same length (a ragged alignment is cut to the shortest; an unusable one is dropped, never an error)."""

    chars: tuple[str, ...]
    char_start_times_ms: tuple[int, ...]
    char_durations_ms: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AgentAudio:
    """One chunk of the agent's voice, already base64-decoded, in `agent_output_audio_format`. `event_id` is
    the reply's turn id: drop chunks whose `event_id` is lower than the last `Interruption.event_id`. `alignment`
    is the chunk's per-character timing when the agent sent a usable one (captions), else None."""

    audio: bytes
    event_id: int
    alignment: Alignment | None = None


@dataclass(frozen=True, slots=True)
class UserTranscript:
    """What the agent heard. `final` is False for `tentative_user_transcript` (updates while the user
    speaks)."""

    text: str
    event_id: int
    final: bool


@dataclass(frozen=True, slots=True)
class AgentResponse:
    """The full text of a reply; arrives together with the reply's first audio chunk."""

    text: str
    event_id: int


@dataclass(frozen=True, slots=True)
class AgentResponseCorrection:
    """After an interruption: the text of reply `event_id` that was actually spoken (`corrected`)."""

    original: str
    corrected: str
    event_id: int


@dataclass(frozen=True, slots=True)
class Interruption:
    """The user talked over the agent: audio with an `event_id` lower than this one is stale."""

    event_id: int


@dataclass(frozen=True, slots=True)
class Ping:
    """Answer at once with `build_pong(event_id)`. `ping_ms` is the agent's round-trip estimate (None at
    first)."""

    event_id: int
    ping_ms: float | None


@dataclass(frozen=True, slots=True)
class ClientToolCall:
    """The agent asks the client to run a tool; answer with `build_client_tool_result(tool_call_id, ...)`."""

    tool_name: str
    tool_call_id: str
    parameters: dict[str, Any]
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AgentErrorEvent:
    """An `error` event, from either the schema form (`error_event: {code, message, error_type, ...}`) or the
    flat form seen in production (`{"type": "error", "message": "received 1002 (protocol error) ..."}`; the
    code is then read from the "received NNNN" prefix when present)."""

    code: int | None
    message: str
    error_type: str | None


@dataclass(frozen=True, slots=True)
class VadScore:
    """Probability that the user is speaking, 0..1."""

    score: float


@dataclass(frozen=True, slots=True)
class AgentChatResponsePart:
    """A streamed piece of reply text; `part_type` is "start", "delta" or "stop" (unknown values kept as
    sent)."""

    text: str
    part_type: str
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AgentToolRequest:
    """`agent_tool_request`: the agent started a tool (server/webhook, system such as `end_call`, mcp, client).
    `tool_type` and `event_id` are None when absent."""

    tool_name: str
    tool_call_id: str
    tool_type: str | None
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AgentToolResponse:
    """`agent_tool_response`: a tool finished (`is_error` when it failed)."""

    tool_name: str
    tool_call_id: str
    tool_type: str | None
    is_error: bool
    event_id: int | None


MCP_STATES: Final = ("loading", "awaiting_approval", "success", "failure")


@dataclass(frozen=True, slots=True)
class McpToolCall:
    """`mcp_tool_call` in one of its states ("loading", "awaiting_approval", "success", "failure"; an unknown state
    is kept as sent). `approval_timeout_secs` only for awaiting_approval (asyncapi default 300), `error_message` only
    for failure."""

    tool_call_id: str
    service_id: str
    tool_name: str
    tool_description: str | None
    parameters: dict[str, Any]
    state: str
    approval_timeout_secs: int | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class McpConnectionStatus:
    """`mcp_connection_status`: the agent's MCP integrations (each an object, passed on as sent)."""

    integrations: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """`queue_status` (the agent's concurrency queue, after the metadata): "waiting", "admitted" or "timed_out"
    (a close 3008 follows). Not in the asyncapi yet: convai-widget-core mocks/browser.ts, contexts/conversation.tsx."""

    status: str


@dataclass(frozen=True, slots=True)
class ExternalAgent:
    """`external_agent_connected` (True) / `external_agent_disconnected` (False): a human took over / left."""

    connected: bool


@dataclass(frozen=True, slots=True)
class AgentTyping:
    """`agent_typing`: a (human) agent is typing; `duration_ms` (optional) clears it automatically."""

    typing: bool
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class ContextUsage:
    """`context_usage`: the turn's LLM context size (`event_id`, `model`, `context_tokens`, `context_limit_tokens`);
    `fields` holds those that were present and well typed."""

    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RichContent:
    """`rich_content`: a component for the page to show (`rich_content_id`, `component`, `props`, `event_id`);
    `fields` holds those that were present and well typed, as the agent sent them."""

    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """Any other event type (there are many, and new ones appear often). Never an error: ignore it."""

    type: str


@dataclass(frozen=True, slots=True)
class MalformedEvent:
    """A frame that could not be used: not JSON, not an object, no `type`, or a known type whose field the event
    cannot do without (an audio chunk without a turn id, a ping without an id, ...). `type` is the frame's type when
    it had one. Never fatal: log it (rate-limited) and skip it, as the official clients do."""

    type: str | None
    problem: str


ServerEvent = (
    ConversationMetadata
    | AgentAudio
    | UserTranscript
    | AgentResponse
    | AgentResponseCorrection
    | Interruption
    | Ping
    | ClientToolCall
    | AgentErrorEvent
    | VadScore
    | AgentChatResponsePart
    | AgentToolRequest
    | AgentToolResponse
    | McpToolCall
    | McpConnectionStatus
    | QueueStatus
    | ExternalAgent
    | AgentTyping
    | ContextUsage
    | RichContent
    | UnknownEvent
    | MalformedEvent
)


class _Malformed(Exception):
    """A known event without a field it cannot do without (turned into `MalformedEvent` by `parse_server_event`)."""


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Malformed(f"{where}: expected an object")
    return value


def _int(event: dict[str, Any], key: str, where: str) -> int:
    value = event.get(key)
    # bool is an int subclass; a boolean event id is a malformed frame, not 0/1.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Malformed(f"{where}: missing or invalid '{key}'")


def _is_int_like(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return (isinstance(value, int) or (isinstance(value, str) and value.isdigit())
            or (isinstance(value, float) and value.is_integer()))


def _optional_int(event: dict[str, Any], key: str, where: str) -> int | None:
    return None if event.get(key) is None else _int(event, key, where)


def _str(event: dict[str, Any], key: str, where: str) -> str:
    value = event.get(key)
    if not isinstance(value, str):
        raise _Malformed(f"{where}: missing or invalid '{key}'")
    return value


def _parse_metadata(frame: dict[str, Any]) -> ConversationMetadata:
    where = "conversation_initiation_metadata"
    event = _object(frame.get("conversation_initiation_metadata_event"), where)
    return ConversationMetadata(
        conversation_id=_str(event, "conversation_id", where),
        # Absent formats mean the documented default; present ones are taken as sent (never assumed).
        agent_output_audio_format=str(event.get("agent_output_audio_format") or "pcm_16000"),
        user_input_audio_format=str(event.get("user_input_audio_format") or "pcm_16000"),
    )


def _parse_audio(frame: dict[str, Any]) -> AgentAudio:
    event = _object(frame.get("audio_event"), "audio")
    encoded = _str(event, "audio_base_64", "audio")
    try:
        audio = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _Malformed("audio: 'audio_base_64' is not valid base64") from None
    return AgentAudio(audio=audio, event_id=_int(event, "event_id", "audio"),
                      alignment=_parse_alignment(event.get("alignment")))


def _parse_alignment(value: object) -> Alignment | None:
    """A usable alignment or None (absent, odd, or empty: the audio is still played, only the captions lose it)."""
    if not isinstance(value, dict):
        return None
    chars, starts, durations = (value.get(k) for k in ("chars", "char_start_times_ms", "char_durations_ms"))
    if not (isinstance(chars, list) and isinstance(starts, list) and isinstance(durations, list)):
        return None
    size = min(len(chars), len(starts), len(durations))
    if not size:
        return None
    if not all(isinstance(c, str) for c in chars[:size]):
        return None
    numbers = starts[:size] + durations[:size]
    if not all(isinstance(n, int | float) and not isinstance(n, bool) and n >= 0 for n in numbers):
        return None
    return Alignment(tuple(chars[:size]), tuple(round(n) for n in starts[:size]),
                     tuple(round(n) for n in durations[:size]))


def _parse_user_transcript(frame: dict[str, Any]) -> UserTranscript:
    event = _object(frame.get("user_transcription_event"), "user_transcript")
    return UserTranscript(
        text=_str(event, "user_transcript", "user_transcript"),
        event_id=_int(event, "event_id", "user_transcript") if _is_int_like(event.get("event_id")) else 0,
        final=True,
    )


def _parse_tentative_transcript(frame: dict[str, Any]) -> UserTranscript:
    where = "tentative_user_transcript"
    event = _object(frame.get("tentative_user_transcription_event"), where)
    event_id = _int(event, "event_id", where) if _is_int_like(event.get("event_id")) else 0
    return UserTranscript(text=_str(event, "user_transcript", where), event_id=event_id, final=False)


def _parse_agent_response(frame: dict[str, Any]) -> AgentResponse:
    event = _object(frame.get("agent_response_event"), "agent_response")
    return AgentResponse(
        text=_str(event, "agent_response", "agent_response"),
        event_id=_int(event, "event_id", "agent_response"),
    )


def _parse_correction(frame: dict[str, Any]) -> AgentResponseCorrection:
    where = "agent_response_correction"
    event = _object(frame.get("agent_response_correction_event"), where)
    return AgentResponseCorrection(
        original=_str(event, "original_agent_response", where),
        corrected=_str(event, "corrected_agent_response", where),
        event_id=_int(event, "event_id", where),
    )


def _parse_interruption(frame: dict[str, Any]) -> Interruption:
    event = _object(frame.get("interruption_event"), "interruption")
    return Interruption(event_id=_int(event, "event_id", "interruption"))


def _parse_ping(frame: dict[str, Any]) -> Ping:
    event = _object(frame.get("ping_event"), "ping")
    ping_ms = event.get("ping_ms")
    if isinstance(ping_ms, bool) or not isinstance(ping_ms, int | float):
        ping_ms = None  # odd or absent: no estimate (the Python SDK only reads a truthy ping_ms)
    return Ping(event_id=_int(event, "event_id", "ping"), ping_ms=None if ping_ms is None else float(ping_ms))


def _parse_client_tool_call(frame: dict[str, Any]) -> ClientToolCall:
    event = _object(frame.get("client_tool_call"), "client_tool_call")
    parameters = event.get("parameters")
    if not isinstance(parameters, dict):
        parameters = {}  # absent or odd: no parameters (the Python SDK defaults to {})
    event_id = event.get("event_id")
    return ClientToolCall(
        tool_name=_str(event, "tool_name", "client_tool_call"),
        tool_call_id=_str(event, "tool_call_id", "client_tool_call"),
        parameters=parameters,
        event_id=_optional_int(event, "event_id", "client_tool_call") if _is_int_like(event_id) else None,
    )


_FLAT_ERROR_CODE = re.compile(r"received (\d{4})\b")


def _parse_error(frame: dict[str, Any]) -> AgentErrorEvent:
    event = frame.get("error_event")
    if isinstance(event, dict):
        message = event.get("message") or event.get("reason") or event.get("debug_message") or ""
        code = event.get("code")
        error_type = event.get("error_type")
    else:
        message = frame.get("message") or frame.get("error") or ""
        code = frame.get("code")
        error_type = frame.get("error_type")
        if not isinstance(code, int) and isinstance(message, str):
            found = _FLAT_ERROR_CODE.search(message)
            code = int(found.group(1)) if found else None
    return AgentErrorEvent(
        code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        message=message if isinstance(message, str) else str(message),
        error_type=error_type if isinstance(error_type, str) else None,
    )


def _parse_vad_score(frame: dict[str, Any]) -> VadScore:
    event = _object(frame.get("vad_score_event"), "vad_score")
    score = event.get("vad_score")
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise _Malformed("vad_score: missing or invalid 'vad_score'")
    return VadScore(score=float(score))


def _parse_chat_response_part(frame: dict[str, Any]) -> AgentChatResponsePart:
    where = "agent_chat_response_part"
    event = frame.get("text_response_part")
    if not isinstance(event, dict):
        event = {}
    # As the Python SDK: `text` defaults to "" (start/stop parts carry none) and `type` to "delta".
    text, part_type, event_id = event.get("text"), event.get("type"), event.get("event_id")
    return AgentChatResponsePart(
        text=text if isinstance(text, str) else "",
        part_type=part_type if isinstance(part_type, str) else "delta",
        event_id=_optional_int(event, "event_id", where) if _is_int_like(event_id) else None,
    )


def _optional_str(event: dict[str, Any], key: str) -> str | None:
    value = event.get(key)
    return value if isinstance(value, str) else None


def _loose_int(event: dict[str, Any], key: str, where: str) -> int | None:
    return _int(event, key, where) if _is_int_like(event.get(key)) else None


def _parse_tool_request(frame: dict[str, Any]) -> AgentToolRequest:
    where = "agent_tool_request"
    event = _object(frame.get("agent_tool_request"), where)
    return AgentToolRequest(tool_name=_str(event, "tool_name", where), tool_call_id=_str(event, "tool_call_id", where),
                            tool_type=_optional_str(event, "tool_type"), event_id=_loose_int(event, "event_id", where))


def _parse_tool_response(frame: dict[str, Any]) -> AgentToolResponse:
    where = "agent_tool_response"
    event = _object(frame.get("agent_tool_response"), where)
    return AgentToolResponse(tool_name=_str(event, "tool_name", where),
                             tool_call_id=_str(event, "tool_call_id", where),
                             tool_type=_optional_str(event, "tool_type"), is_error=event.get("is_error") is True,
                             event_id=_loose_int(event, "event_id", where))


def _parse_mcp_tool_call(frame: dict[str, Any]) -> McpToolCall:
    where = "mcp_tool_call"
    event = _object(frame.get("mcp_tool_call"), where)
    parameters = event.get("parameters")
    state = _str(event, "state", where)
    timeout = _loose_int(event, "approval_timeout_secs", where)
    if state == "awaiting_approval" and timeout is None:
        timeout = 300  # the asyncapi default
    return McpToolCall(tool_call_id=_str(event, "tool_call_id", where),
                       service_id=_optional_str(event, "service_id") or "",
                       tool_name=_optional_str(event, "tool_name") or "",
                       tool_description=_optional_str(event, "tool_description"),
                       parameters=parameters if isinstance(parameters, dict) else {}, state=state,
                       approval_timeout_secs=timeout if state == "awaiting_approval" else None,
                       error_message=_optional_str(event, "error_message"))


def _parse_mcp_connection_status(frame: dict[str, Any]) -> McpConnectionStatus:
    event = frame.get("mcp_connection_status")
    integrations = event.get("integrations") if isinstance(event, dict) else None
    if not isinstance(integrations, list):
        integrations = []
    return McpConnectionStatus(tuple(i for i in integrations if isinstance(i, dict)))


def _parse_queue_status(frame: dict[str, Any]) -> QueueStatus:
    event = _object(frame.get("queue_status_event"), "queue_status")
    return QueueStatus(_str(event, "status", "queue_status"))


def _parse_agent_typing(frame: dict[str, Any]) -> AgentTyping:
    where = "agent_typing"
    event = _object(frame.get("agent_typing_event"), where)
    typing = event.get("is_typing")
    if not isinstance(typing, bool):
        raise _Malformed(f"{where}: missing or invalid 'is_typing'")
    return AgentTyping(typing, _loose_int(event, "duration_ms", where))


_CONTEXT_USAGE_FIELDS: Final = {"event_id": int, "model": str, "context_tokens": int, "context_limit_tokens": int}
_RICH_CONTENT_FIELDS: Final = {"rich_content_id": str, "component": str, "props": dict, "event_id": int}


def _typed_fields(event: dict[str, Any], fields: dict[str, type]) -> dict[str, Any]:
    """The listed fields of `event` that are present with the right type (bools are not ints): no other key is
    passed on."""
    return {key: event[key] for key, kind in fields.items()
            if isinstance(event.get(key), kind) and not (kind is int and isinstance(event[key], bool))}


def _parse_context_usage(frame: dict[str, Any]) -> ContextUsage:
    return ContextUsage(_typed_fields(_object(frame.get("context_usage_event"), "context_usage"),
                                      _CONTEXT_USAGE_FIELDS))


def _parse_rich_content(frame: dict[str, Any]) -> RichContent:
    event = _object(frame.get("rich_content"), "rich_content")
    fields = _typed_fields(event, _RICH_CONTENT_FIELDS)
    if "rich_content_id" not in fields:
        raise _Malformed("rich_content: missing or invalid 'rich_content_id'")
    return RichContent(fields)


_PARSERS: Final[dict[str, Callable[[dict[str, Any]], ServerEvent]]] = {
    "conversation_initiation_metadata": _parse_metadata,
    "audio": _parse_audio,
    "user_transcript": _parse_user_transcript,
    "tentative_user_transcript": _parse_tentative_transcript,
    "agent_response": _parse_agent_response,
    "agent_response_correction": _parse_correction,
    "interruption": _parse_interruption,
    "ping": _parse_ping,
    "client_tool_call": _parse_client_tool_call,
    "error": _parse_error,
    "vad_score": _parse_vad_score,
    "agent_chat_response_part": _parse_chat_response_part,
    "agent_tool_request": _parse_tool_request,
    "agent_tool_response": _parse_tool_response,
    "mcp_tool_call": _parse_mcp_tool_call,
    "mcp_connection_status": _parse_mcp_connection_status,
    "queue_status": _parse_queue_status,
    "external_agent_connected": lambda _frame: ExternalAgent(True),
    "external_agent_disconnected": lambda _frame: ExternalAgent(False),
    "agent_typing": _parse_agent_typing,
    "context_usage": _parse_context_usage,
    "rich_content": _parse_rich_content,
}


def parse_server_event(frame: str | bytes) -> ServerEvent:
    """Parse one server frame; never raises. Unknown types become `UnknownEvent`; bad JSON, a non-object, a
    missing `type`, or a known type without a field it cannot do without become `MalformedEvent` (log and skip it).
    Extra fields are ignored; odd optional fields are defaulted as the official clients do (`ping_ms` None,
    `parameters` {}, a chat part's `text` "" and `type` "delta", a transcript's missing `event_id` 0)."""
    try:
        data = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return MalformedEvent(None, "frame is not valid JSON")
    if not isinstance(data, dict):
        return MalformedEvent(None, "frame is not a JSON object")
    event_type = data.get("type")
    if not isinstance(event_type, str):
        return MalformedEvent(None, "frame has no 'type'")
    parser = _PARSERS.get(event_type)
    if parser is None:
        return UnknownEvent(type=event_type)
    try:
        return parser(data)
    except _Malformed as exc:
        return MalformedEvent(event_type, str(exc))


# ----------------------------------------------------------------------------------------------------------------------
# What an ending means

# Close codes ElevenLabs documents (asyncapi `ErrorType` codes; convai-widget-core's queue mock for 3008).
CLOSE_NORMAL: Final = 1000  # the agent ended the call (end_call), or max duration
CLOSE_QUEUE_TIMEOUT: Final = 3008  # waited too long in the agent's concurrency queue
_SETUP_REFUSALS: Final = {"override_error", "missing_dynamic_variable", "invalid_dynamic_variable"}
MAX_DURATION: Final = "max_duration_exceeded"

EndingKind = Literal["agent_ended", "max_duration", "agent_refused", "agent_busy", "agent_error"]


@dataclass(frozen=True, slots=True)
class Ending:
    """What an agent's close means: `kind` "agent_ended"/"max_duration" are normal ends; "agent_refused" (a set-up
    contract error: overrides not allowed, a missing dynamic variable), "agent_busy" (queue time-out) and
    "agent_error" are failures, with a `message` for the user."""

    kind: EndingKind
    message: str

    @property
    def normal(self) -> bool:
        return self.kind in ("agent_ended", "max_duration")


def is_normal_end(event: AgentErrorEvent) -> bool:
    """An `error` event that announces a normal end (max duration: `error_type` max_duration_exceeded, code 1000;
    the JS client ends the session normally on it, elevenlabs/packages d35faae2)."""
    return event.error_type == MAX_DURATION or event.code == CLOSE_NORMAL


def _refusal_message(error_type: str | None, detail: str) -> str:
    if error_type == "override_error":
        text = "the agent does not allow the overrides this page sent (enable them in the agent's security settings)"
    elif error_type in ("missing_dynamic_variable", "invalid_dynamic_variable"):
        text = "the agent needs a dynamic variable the page did not send (or sent with the wrong type)"
    else:
        text = "the agent refused the conversation's set-up"
    return f"{text}: {detail}" if detail and detail != error_type else text


def classify_close(code: int | None, reason: str, error: AgentErrorEvent | None = None, *,
                   during_setup: bool = False) -> Ending:
    """What the agent's close (`code`, `reason`), after the last `error` event it sent (if any), means.

    1000 is always a normal end (an earlier non-fatal error event does not taint it), `max_duration` when the
    error event or the reason says max_duration_exceeded; 3008 is a busy agent (queue time-out); during set-up a
    1008 (or an error event) for overrides / dynamic variables is a refusal with the service's words; anything
    else (1002 operational, 1008 contract, 1011 internal, 3000, a lost connection) is a failure."""
    error_type = error.error_type if error is not None else None
    detail = (error.message if error is not None and error.message else "") or reason
    if code == CLOSE_NORMAL:
        if reason == MAX_DURATION or error_type == MAX_DURATION:
            return Ending("max_duration", "the agent's maximum conversation duration was reached")
        return Ending("agent_ended", "the agent ended the conversation")
    if code == CLOSE_QUEUE_TIMEOUT:
        return Ending("agent_busy", "the agent is busy: too many conversations at once, and the wait in its "
                                    "queue timed out; try again shortly")
    refusal_type = error_type if error_type in _SETUP_REFUSALS else (reason if reason in _SETUP_REFUSALS else None)
    if during_setup and (refusal_type is not None or code == 1008):
        return Ending("agent_refused", _refusal_message(refusal_type or error_type, detail))
    message = f"the agent closed the conversation ({code} {reason})".replace(" )", ")")
    if error is not None and error.message:
        message += f": {error.message}"
    return Ending("agent_error", message)


# ----------------------------------------------------------------------------------------------------------------------
# Client messages


SOURCE: Final = "avatar-relay"  # `source_info.source` and the `source` query, as the SDKs name themselves


def build_initiation(
    *,
    dynamic_variables: dict[str, str | int | float | bool] | None = None,
    overrides: dict[str, Any] | None = None,
    user_id: str | None = None,
    custom_llm_extra_body: dict[str, Any] | None = None,
    source_version: str | None = None,
) -> str:
    """`conversation_initiation_client_data`, the first message on the socket. `overrides` becomes
    `conversation_config_override` (the agent must allow overrides, or it closes with 1008 `override_error`).
    With `source_version`, `source_info` `{source: "avatar-relay", version}` is sent (both SDKs always send theirs:
    elevenlabs-python conversation.py `_create_initiation_message`). Absent fields are omitted."""
    message: dict[str, Any] = {"type": "conversation_initiation_client_data"}
    if overrides is not None:
        message["conversation_config_override"] = overrides
    if custom_llm_extra_body is not None:
        message["custom_llm_extra_body"] = custom_llm_extra_body
    if dynamic_variables is not None:
        for name, value in dynamic_variables.items():
            if not isinstance(value, str | int | float | bool):
                raise ValueError(f"dynamic variable {name!r} must be a string, number or boolean")
        message["dynamic_variables"] = dynamic_variables
    if user_id is not None:
        message["user_id"] = user_id
    if source_version is not None:
        message["source_info"] = {"source": SOURCE, "version": source_version}
    return _dumps(message)


def build_user_audio_chunk(pcm: bytes) -> str:
    """`{"user_audio_chunk": "<base64>"}` (no `type` field) for audio already in `user_input_audio_format`.
    Called for every audio frame: string concatenation only (base64 never needs JSON escaping)."""
    return '{"user_audio_chunk":"' + base64.b64encode(pcm).decode("ascii") + '"}'


def build_pong(event_id: int) -> str:
    """The answer to `Ping(event_id)`; send it at once."""
    return '{"type":"pong","event_id":' + str(int(event_id)) + "}"


def build_user_message(text: str, rich_content_id: str | None = None) -> str:
    """A typed user message; the agent answers it like speech. `rich_content_id`: the rich-content row whose button
    the user tapped (asyncapi `UserMessagePayload`)."""
    message: dict[str, Any] = {"type": "user_message", "text": text}
    if rich_content_id is not None:
        message["rich_content_id"] = rich_content_id
    return _dumps(message)


def build_multimodal_message(text: str) -> str:
    """`multimodal_message` with its text part, `{text: {type: "user_message", text}}` (asyncapi
    `MultimodalMessagePayload`; the file part needs an uploaded file id and is not built)."""
    return _dumps({"type": "multimodal_message", "text": {"type": "user_message", "text": text}})


def build_contextual_update(text: str, context_id: str | None = None) -> str:
    """Silent context for the agent (it does not answer it). With `context_id`, only the latest update with that id
    stays in the agent's context (asyncapi `ContextualUpdatePayload`)."""
    message: dict[str, Any] = {"type": "contextual_update", "text": text}
    if context_id is not None:
        message["context_id"] = context_id
    return _dumps(message)


def build_mcp_tool_approval_result(tool_call_id: str, approved: bool) -> str:
    """The answer to an `McpToolCall` awaiting approval (asyncapi `MCPToolApprovalResultPayload`)."""
    return _dumps({"type": "mcp_tool_approval_result", "tool_call_id": tool_call_id, "is_approved": bool(approved)})


def build_user_activity() -> str:
    """Tells the agent the user is still there (resets its turn timeout)."""
    return '{"type":"user_activity"}'


def build_client_tool_result(tool_call_id: str, result: str, is_error: bool) -> str:
    """The answer to a `ClientToolCall`."""
    return _dumps(
        {
            "type": "client_tool_result",
            "tool_call_id": tool_call_id,
            "result": result,
            "is_error": bool(is_error),
        }
    )


def build_feedback(score: str | None, event_id: int) -> str:
    """Feedback on reply `event_id`; `score` is "like", "dislike", or None to clear it (asyncapi `FeedbackScore`)."""
    if score not in ("like", "dislike", None):
        raise ValueError("feedback score must be 'like', 'dislike' or None")
    return _dumps({"type": "feedback", "score": score, "event_id": int(event_id)})


# ----------------------------------------------------------------------------------------------------------------------
# URLs

_HTTP_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_WS_SCHEMES: Final = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def _join(base_url: str, schemes: dict[str, str], path: str, query: str) -> str:
    parts = urlsplit(base_url.strip())
    scheme = schemes.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"base URL must be http(s):// or ws(s)://host, got {base_url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, query, ""))


def _agent_query(agent_id: str, **extra: str | None) -> str:
    if not agent_id:
        raise ValueError("agent_id is empty")
    return "&".join(["agent_id=" + quote(agent_id, safe="")]
                    + [f"{key}={quote(value, safe='')}" for key, value in extra.items() if value])


def conversation_ws_url(base_url: str, agent_id: str, *, branch_id: str | None = None,
                        environment: str | None = None, version: str | None = None) -> str:
    """The public agent socket: `https://api.eu.residency.elevenlabs.io` ->
    `wss://api.eu.residency.elevenlabs.io/v1/convai/conversation?agent_id=...` (a path prefix is kept), with
    `branch_id` and `environment` when set, and `source=avatar-relay&version=...` when `version` is given (the SDKs
    add source and version: elevenlabs-python `_get_wss_url`, packages WebSocketConnection.ts)."""
    return _join(base_url, _WS_SCHEMES, "/v1/convai/conversation",
                 _agent_query(agent_id, branch_id=branch_id, environment=environment,
                              source=SOURCE if version else None, version=version))


def signed_url_request(base_url: str, agent_id: str, *, branch_id: str | None = None,
                       environment: str | None = None) -> str:
    """Where to GET a signed socket URL for a private agent (with the `xi-api-key` header); `branch_id` and
    `environment` as the SDKs send them (elevenlabs-python raw_client.py `get_signed_url`)."""
    return _join(base_url, _HTTP_SCHEMES, "/v1/convai/conversation/get-signed-url",
                 _agent_query(agent_id, branch_id=branch_id, environment=environment))


def with_source(signed_url: str, version: str, environment: str | None = None) -> str:
    """A signed URL with `source=avatar-relay&version=...` (and `environment`) appended, as the SDKs do before
    opening it (elevenlabs-python `_get_signed_url`; packages WebSocketConnection.ts)."""
    extra = f"source={SOURCE}&version={quote(version, safe='')}"
    if environment:
        extra += f"&environment={quote(environment, safe='')}"
    return signed_url + ("&" if "?" in signed_url else "?") + extra


def agent_details_url(base_url: str, agent_id: str) -> str:
    """`GET /v1/convai/agents/{agent_id}` (with `xi-api-key`): the agent's configuration, incl. audio
    formats."""
    if not agent_id:
        raise ValueError("agent_id is empty")
    return _join(base_url, _HTTP_SCHEMES, "/v1/convai/agents/" + quote(agent_id, safe=""), "")


# ----------------------------------------------------------------------------------------------------------------------
# Signed-URL answers

_STATUS_REASONS: Final[dict[int, AgentUnavailableReason]] = {401: "unauthorized", 403: "unauthorized",
                                                             404: "not_found", 429: "rate_limited"}


def reason_for_status(status: int) -> AgentUnavailableReason:
    """The `AgentUnavailable.reason` for a refusal with HTTP `status`."""
    if status in _STATUS_REASONS:
        return _STATUS_REASONS[status]
    return "upstream_error" if status >= 500 else "rejected"


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def upstream_detail(body: bytes, api_key: str) -> str:
    """A short, key-free description of an error body (ElevenLabs answers `{"detail": {...}}` or `{"detail":
    "..."}`)."""
    payload = _json_object(body)
    detail: Any = None if payload is None else payload.get("detail")
    if isinstance(detail, dict):
        detail = detail.get("message") or detail.get("status")
    elif isinstance(detail, list) and detail and isinstance(detail[0], dict):
        detail = detail[0].get("msg")
    text = detail if isinstance(detail, str) else ""
    if api_key:
        text = text.replace(api_key, "***")
    return text[:200]


def read_signed_url_answer(status: int, body: bytes, api_key: str) -> str:
    """The `signed_url` of a `get-signed-url` answer. Raises `AgentUnavailable` (401/403 unauthorized, 404
    not_found, 422 rejected, 429 rate_limited, 5xx upstream_error, a 200 without a ws(s) URL upstream_error); its
    message never holds `api_key`."""
    if status != 200:
        detail = upstream_detail(body, api_key)
        raise AgentUnavailable(
            reason_for_status(status),
            f"ElevenLabs refused the signed URL request (HTTP {status}" + (f": {detail})" if detail else ")"),
            status,
        )
    payload = _json_object(body)
    signed_url = None if payload is None else payload.get("signed_url")
    if not isinstance(signed_url, str) or not signed_url.startswith(("wss://", "ws://")):
        raise AgentUnavailable("upstream_error", "ElevenLabs answered the signed URL request without a ws(s) URL", 200)
    return signed_url
