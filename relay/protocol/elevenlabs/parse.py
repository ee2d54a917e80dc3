"""Server frame -> `ServerEvent`, never an exception.

Liberal in what it accepts: real frames put `type` last; unknown event types are returned as `UnknownEvent`, never
an error; the error event comes in a schema form and a flat form; a known event with a missing or oddly typed field
is defaulted like the official clients do, or returned as `MalformedEvent` to be logged and skipped. The table of
parsers is built by the `@parses(...)` decorator on each parser, so a parser cannot be written and left out of it.
This module must never do I/O or import trio, httpx2 or websockets.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from typing import Any, Final

import orjson
import pybase64

from relay.protocol.elevenlabs.events import (
    AgentAudio,
    AgentChatResponsePart,
    AgentErrorEvent,
    AgentResponse,
    AgentResponseCorrection,
    AgentToolRequest,
    AgentToolResponse,
    AgentTyping,
    Alignment,
    ClientToolCall,
    ContextUsage,
    ConversationMetadata,
    ExternalAgent,
    GuardrailTriggered,
    Interruption,
    MalformedEvent,
    McpConnectionStatus,
    McpToolCall,
    Ping,
    QueueStatus,
    RichContent,
    ServerEvent,
    UnknownEvent,
    UserTranscript,
    VadScore,
)

Parser = Callable[[dict[str, Any]], ServerEvent]

PARSERS: Final[dict[str, Parser]] = {}
"""Wire `type` -> the parser of that event; filled by `@parses`."""


def parses(*event_types: str) -> Callable[[Parser], Parser]:
    """Register the decorated function as the parser of the frames whose `type` is one of `event_types`."""

    def register(parser: Parser) -> Parser:
        for event_type in event_types:
            if event_type in PARSERS:
                raise ValueError(f"two parsers for {event_type!r}")
            PARSERS[event_type] = parser
        return parser

    return register


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


@parses("conversation_initiation_metadata")
def _parse_metadata(frame: dict[str, Any]) -> ConversationMetadata:
    where = "conversation_initiation_metadata"
    event = _object(frame.get("conversation_initiation_metadata_event"), where)
    return ConversationMetadata(
        conversation_id=_str(event, "conversation_id", where),
        # Absent formats mean the documented default; present ones are taken as sent (never assumed).
        agent_output_audio_format=str(event.get("agent_output_audio_format") or "pcm_16000"),
        user_input_audio_format=str(event.get("user_input_audio_format") or "pcm_16000"),
    )


@parses("audio")
def _parse_audio(frame: dict[str, Any]) -> AgentAudio:
    event = frame.get("audio_event")
    if type(event) is not dict:  # what orjson makes; anything else goes the checking way
        event = _object(event, "audio")
    encoded = event.get("audio_base_64")
    if type(encoded) is not str:
        encoded = _str(event, "audio_base_64", "audio")
    try:
        audio = pybase64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _Malformed("audio: 'audio_base_64' is not valid base64") from None
    event_id = event.get("event_id")
    if type(event_id) is not int:  # (a bool is not an int here: `type`, not `isinstance`)
        event_id = _int(event, "event_id", "audio")
    alignment = event.get("alignment")
    return AgentAudio(audio=audio, event_id=event_id,
                      alignment=None if alignment is None else _parse_alignment(alignment))


def _parse_alignment(value: object) -> Alignment | None:
    """A usable alignment or None (absent, odd, or empty: the audio is still played, only the captions lose it)."""
    if not isinstance(value, dict):
        return None
    chars, starts, durations = value.get("chars"), value.get("char_start_times_ms"), value.get("char_durations_ms")
    if not (type(chars) is list and type(starts) is list and type(durations) is list):  # what orjson makes
        return None
    size = min(len(chars), len(starts), len(durations))
    if not size:
        return None
    chars, starts, durations = chars[:size], starts[:size], durations[:size]
    for char in chars:
        if type(char) is not str:
            return None
    for number in starts + durations:  # a number, not a bool (an int subclass), and not negative
        if (type(number) is not int and type(number) is not float) or number < 0:
            return None
    return Alignment(tuple(chars), tuple(map(round, starts)), tuple(map(round, durations)))


@parses("user_transcript")
def _parse_user_transcript(frame: dict[str, Any]) -> UserTranscript:
    event = _object(frame.get("user_transcription_event"), "user_transcript")
    return UserTranscript(
        text=_str(event, "user_transcript", "user_transcript"),
        event_id=_int(event, "event_id", "user_transcript") if _is_int_like(event.get("event_id")) else 0,
        final=True,
    )


@parses("tentative_user_transcript")
def _parse_tentative_transcript(frame: dict[str, Any]) -> UserTranscript:
    where = "tentative_user_transcript"
    event = _object(frame.get("tentative_user_transcription_event"), where)
    event_id = _int(event, "event_id", where) if _is_int_like(event.get("event_id")) else 0
    return UserTranscript(text=_str(event, "user_transcript", where), event_id=event_id, final=False)


@parses("agent_response")
def _parse_agent_response(frame: dict[str, Any]) -> AgentResponse:
    event = _object(frame.get("agent_response_event"), "agent_response")
    return AgentResponse(
        text=_str(event, "agent_response", "agent_response"),
        event_id=_int(event, "event_id", "agent_response"),
    )


@parses("agent_response_correction")
def _parse_correction(frame: dict[str, Any]) -> AgentResponseCorrection:
    where = "agent_response_correction"
    event = _object(frame.get("agent_response_correction_event"), where)
    return AgentResponseCorrection(
        original=_str(event, "original_agent_response", where),
        corrected=_str(event, "corrected_agent_response", where),
        event_id=_int(event, "event_id", where),
    )


@parses("interruption")
def _parse_interruption(frame: dict[str, Any]) -> Interruption:
    event = _object(frame.get("interruption_event"), "interruption")
    return Interruption(event_id=_int(event, "event_id", "interruption"))


@parses("ping")
def _parse_ping(frame: dict[str, Any]) -> Ping:
    event = _object(frame.get("ping_event"), "ping")
    ping_ms = event.get("ping_ms")
    if isinstance(ping_ms, bool) or not isinstance(ping_ms, int | float):
        ping_ms = None  # odd or absent: no estimate (the Python SDK only reads a truthy ping_ms)
    return Ping(event_id=_int(event, "event_id", "ping"), ping_ms=None if ping_ms is None else float(ping_ms))


@parses("client_tool_call")
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


@parses("error")
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


@parses("vad_score")
def _parse_vad_score(frame: dict[str, Any]) -> VadScore:
    event = _object(frame.get("vad_score_event"), "vad_score")
    score = event.get("vad_score")
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise _Malformed("vad_score: missing or invalid 'vad_score'")
    return VadScore(score=float(score))


@parses("agent_chat_response_part")
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


@parses("agent_tool_request")
def _parse_tool_request(frame: dict[str, Any]) -> AgentToolRequest:
    where = "agent_tool_request"
    event = _object(frame.get("agent_tool_request"), where)
    return AgentToolRequest(tool_name=_str(event, "tool_name", where), tool_call_id=_str(event, "tool_call_id", where),
                            tool_type=_optional_str(event, "tool_type"), event_id=_loose_int(event, "event_id", where))


@parses("agent_tool_response", "agent_tool_response_full_payload")
def _parse_tool_response(frame: dict[str, Any]) -> AgentToolResponse:
    where = str(frame["type"])  # the payload's key is the event's type (asyncapi AgentToolResponse[FullPayload])
    event = _object(frame.get(where), where)
    return AgentToolResponse(tool_name=_str(event, "tool_name", where),
                             tool_call_id=_str(event, "tool_call_id", where),
                             tool_type=_optional_str(event, "tool_type"), is_error=event.get("is_error") is True,
                             event_id=_loose_int(event, "event_id", where))


@parses("mcp_tool_call")
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


@parses("mcp_connection_status")
def _parse_mcp_connection_status(frame: dict[str, Any]) -> McpConnectionStatus:
    event = frame.get("mcp_connection_status")
    integrations = event.get("integrations") if isinstance(event, dict) else None
    if not isinstance(integrations, list):
        integrations = []
    return McpConnectionStatus(tuple(i for i in integrations if isinstance(i, dict)))


@parses("queue_status")
def _parse_queue_status(frame: dict[str, Any]) -> QueueStatus:
    event = _object(frame.get("queue_status_event"), "queue_status")
    return QueueStatus(_str(event, "status", "queue_status"))


@parses("agent_typing")
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


@parses("context_usage")
def _parse_context_usage(frame: dict[str, Any]) -> ContextUsage:
    return ContextUsage(_typed_fields(_object(frame.get("context_usage_event"), "context_usage"),
                                      _CONTEXT_USAGE_FIELDS))


@parses("rich_content")
def _parse_rich_content(frame: dict[str, Any]) -> RichContent:
    event = _object(frame.get("rich_content"), "rich_content")
    fields = _typed_fields(event, _RICH_CONTENT_FIELDS)
    if "rich_content_id" not in fields:
        raise _Malformed("rich_content: missing or invalid 'rich_content_id'")
    return RichContent(fields)



@parses("guardrail_triggered")
def _parse_guardrail(frame: dict[str, Any]) -> GuardrailTriggered:
    return GuardrailTriggered()


@parses("external_agent_connected", "external_agent_disconnected")
def _parse_external_agent(frame: dict[str, Any]) -> ExternalAgent:
    return ExternalAgent(frame["type"] == "external_agent_connected")


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
    parser = PARSERS.get(event_type)
    if parser is None:
        return UnknownEvent(type=event_type)
    try:
        return parser(data)
    except _Malformed as exc:
        return MalformedEvent(event_type, str(exc))
