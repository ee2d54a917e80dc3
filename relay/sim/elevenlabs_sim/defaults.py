"""The simulated agent's defaults: its faults (documented in the package docstring), the demo's, the client events
it may send, its agents, and the audio formats it speaks."""

from __future__ import annotations

from typing import Any

DEFAULT_FIRST_MESSAGE = "Hello! I'm the simulated agent. How can I help you today?"

DEFAULT_FAULTS: dict[str, Any] = {
    "handshake_latency_ms": 0,
    "refuse_handshake_status": None,
    "require_signed_url": False,
    "metadata_latency_ms": 0,
    "signed_url_latency_ms": 0,
    "signed_url_status": None,
    "agent_details_status": None,
    "invalid_api_keys": [],
    "unknown_agent_ids": [],
    "signature_ttl_s": 900,
    "agent_output_audio_format": "pcm_16000",
    "user_input_audio_format": "pcm_16000",
    "overrides_allowed": False,
    "required_dynamic_variables": [],
    "first_message": DEFAULT_FIRST_MESSAGE,
    "ping_interval_s": 2.0,
    "vad_rms_threshold": 500,
    "vad_speech_start_ms": 100,
    "vad_silence_end_ms": 600,
    "tentative_interval_ms": 500,
    "chunk_duration_ms": 250,
    "response_latency_ms": 300,
    "ms_per_char": 60,
    "max_reply_s": 6.0,
    "tool_result_timeout_s": 15,
    "input_timeout_s": 60,
    "max_duration_s": 600,
    "close_code": None,
    "close_reason": "",
    "close_after_ms": None,
    "close_on_first_user_audio": False,
    "send_bad_json": False,
    "send_unknown_events": False,
    "stall_before_metadata": False,
    "stall_after_ms": None,
    "error_event": None,
    "reply_pacing": "burst",
    "end_call_after_reply": False,
    "client_events": None,
    "send_alignment": True,
    "queue_wait_ms": 0,
    "queue_times_out": False,
    "odd_fields": False,
    "agents": None,
    "server_tool_delay_ms": 600,
    "mcp_approval_timeout_s": 30,
    "human_typing_ms": 800,
}

# `avatar-relay serve` in demo mode (`relay.sim.runner.serve_simulators(demo=True)`): each conversation waits briefly
# in the agent's queue, so the page shows the queue state without an account.
DEMO_FAULTS: dict[str, Any] = {"queue_wait_ms": 1200}

# The agent's `client_events` when its configuration does not list them: the real default list (ElevenLabs agent
# settings → Advanced → client events; the asyncapi notes the others are opt-in). Anything else — corrections, client
# tool calls, streamed text parts, VAD scores, tool responses — is only sent when the agent enables it.
DEFAULT_CLIENT_EVENTS = (
    "audio",
    "interruption",
    "agent_response",
    "user_transcript",
    "tentative_user_transcript",
    "conversation_initiation_metadata",
    "ping",
)
ALL_CLIENT_EVENTS = (
    *DEFAULT_CLIENT_EVENTS,
    "agent_response_correction",
    "client_tool_call",
    "agent_chat_response_part",
    "vad_score",
    "agent_tool_response",
    "agent_tool_request",
    "mcp_tool_call",
    "mcp_connection_status",
    "agent_typing",
    "external_agent_connected",
    "external_agent_disconnected",
    "context_usage",
    "rich_content",
)
# Per-agent configuration overriding the faults for that agent id (a fault `agents` replaces it). The demo agent is
# configured like a real agent would be for the demo page: overrides allowed, every client event the page shows.
DEFAULT_AGENTS: dict[str, dict[str, Any]] = {
    "demo-agent": {"overrides_allowed": True, "client_events": list(ALL_CLIENT_EVENTS)},
}

FORMATS = ("pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000", "ulaw_8000")
