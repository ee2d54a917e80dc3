"""What the relay says to the agent: each `build_*` function returns the exact JSON text ElevenLabs expects.

Strict in what it sends (absent fields are omitted, a bad dynamic variable or feedback score is a ValueError). This
module must never do I/O or import trio, httpx2 or websockets.
"""

from __future__ import annotations

from typing import Any, Final

import pybase64

from relay._util import dumps as _dumps

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
    return '{"user_audio_chunk":"' + pybase64.b64encode_as_string(pcm) + '"}'


def build_user_audio_chunk_utf8(pcm: bytes) -> bytes:
    """`build_user_audio_chunk` as the UTF-8 bytes of the same JSON text, for a socket that sends a text message
    from bytes (`AgentConnection.send`): the base64 goes straight into the output, without a str built and encoded
    again (the browser's audio path, every frame)."""
    return b'{"user_audio_chunk":"' + pybase64.b64encode(pcm) + b'"}'


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
