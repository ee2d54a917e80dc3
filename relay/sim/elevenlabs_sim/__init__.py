"""A simulated ElevenLabs Conversational AI agent: signed URLs, agent details, and the conversation socket.

Faithful to `/work/shared/reference/elevenlabs-convai.md` (frames are sent with `type` last, like the real
ones): the handshake (`conversation_initiation_client_data` -> `conversation_initiation_metadata`), pings
answered by pongs (`ping_ms` is the measured round trip), an energy VAD on the user's audio producing
`tentative_user_transcript` / `user_transcript`, then `agent_response` with the first chunk of a synthetic
voice reply streamed ahead of real time, interruptions (`interruption` with the new turn's id, then
`agent_response_correction` with the words actually spoken), typed messages, a client tool round trip, and the
real close codes. It must never import the relay (a protocol bug must not hide in both sides), and must stay
cheap per audio frame: hundreds of conversations run through it at once.

Endpoints
- `GET /v1/convai/conversation/get-signed-url?agent_id=` (header `xi-api-key`) -> `{"signed_url": ...}` with an HMAC
  `conversation_signature` valid `signature_ttl_s`; 422 without agent_id, 401 without a key or with an invalid one,
  404 for an unknown agent. The socket also accepts the older `token=` form.
- `GET /v1/convai/agents/{agent_id}` (header `xi-api-key`) -> the agent's configuration, including its formats.
- WebSocket `/v1/convai/conversation?agent_id=...` (subprotocol `convai` echoed when asked for, none otherwise).
- `GET /_sim/ledger`, `POST /_sim/faults` (JSON object merged into the faults; unknown keys -> 400),
  `POST /_sim/reset` (clears the ledger and restores the default faults).

The agent's behaviour
- Speech: 20 ms frames whose RMS exceeds `vad_rms_threshold` for `vad_speech_start_ms` start a user turn (a new
  event id); `tentative_user_transcript` every `tentative_interval_ms` of speech; `vad_silence_end_ms` of silence
  ends it with `user_transcript` "(1.8 s of speech)". VAD time is audio time (samples received), so audio sent
  faster than real time works too. After `response_latency_ms` the agent replies: `agent_response` with the first
  audio chunk, then the rest (same event id) at once, ahead of real time like the real service (`reply_pacing`),
  `chunk_duration_ms` each. Reply audio is a
  synthetic voice (harmonics and a syllable envelope), `ms_per_char` per character capped at `max_reply_s`.
- Typed `user_message` (or `multimodal_message` with `text: {type: "user_message", text}`) -> "You said: ...". If it
  contains the word "tool", the agent first sends `client_tool_call` (`get_time`) and waits up to
  `tool_result_timeout_s` for the `client_tool_result`, then quotes the result. The demo features (docs/simulators.md):
  "order" -> `agent_tool_request` / `agent_tool_response` (`lookup_order`, webhook) after `server_tool_delay_ms`;
  "weather" -> `mcp_tool_call` loading, awaiting_approval (`mcp_approval_timeout_s`), then success or failure as the
  client's `mcp_tool_approval_result` says (or failure at the time-out); "human" -> `external_agent_connected`,
  `agent_typing`, the human's reply after `human_typing_ms`, `agent_typing` false, `external_agent_disconnected`.
- The voice: each character lasts `ms_per_char`; each word is one voiced burst, each space silence, and every audio
  chunk's `alignment` lists the characters starting in it, timed from the chunk's start, exactly as the audio says.
- Talking (or typing) over a reply that is still being spoken -> the old reply's audio stops, `interruption` with
  the new turn's event id, then `agent_response_correction` (old event id) with the text spoken so far. A reply not
  yet started is dropped silently.
- `conversation_config_override.agent.first_message` replaces the greeting ("" disables it);
  `{{variable}}` in it is filled from `dynamic_variables`. `conversation.text_only` (or the Python SDK's
  top-level `text_only`) sends replies without audio.
- Closes: bad JSON, a non-object, an unknown type or bad base64 -> 1008 `invalid_message`; a known type missing a
  field -> 1008 `missing_fields`; overrides when not allowed -> 1008 `override_error`; a missing required dynamic
  variable -> 1008 `missing_dynamic_variable`; no client message except pongs for `input_timeout_s` -> 1002
  `transport_receive_timeout`; `max_duration_s` -> an `error` event (max_duration_exceeded, code 1000), then 1000
  `max_duration_exceeded`.

Faults (`POST /_sim/faults`; a conversation reads them once, when its socket opens)
- `handshake_latency_ms` (0): delay before accepting the socket.
- `refuse_handshake_status` (null): refuse the socket upgrade with this HTTP status.
- `require_signed_url` (false): refuse (403) sockets without a valid signature (a private agent).
- `metadata_latency_ms` (0): delay between the client's initiation and the metadata.
- `signed_url_latency_ms` (0), `signed_url_status` (null): delay / forced error status for the signed URL endpoint.
- `agent_details_status` (null): forced error status for the agent details endpoint.
- `invalid_api_keys` ([]): keys answered with 401. Any other non-empty key is valid.
- `unknown_agent_ids` ([]): agents that do not exist (404 on REST; the socket closes 1008 `agent_not_found`).
- `signature_ttl_s` (900): lifetime of a signed URL.
- `agent_output_audio_format`, `user_input_audio_format` ("pcm_16000"): any of pcm_8000, pcm_16000, pcm_22050,
  pcm_24000, pcm_44100, pcm_48000, ulaw_8000 (mu-law is encoded and decoded here).
- `overrides_allowed` (false, like real agents): an initiation carrying a non-empty override gets an `error`
  event (`override_error`, naming the fields) and close 1008 `override_error`. The demo agent allows them (`agents`).
- `agents` (null = `DEFAULT_AGENTS`: `demo-agent` allows overrides and enables every client event): per agent id,
  fault overrides for that agent.
- `client_events` (null = `DEFAULT_CLIENT_EVENTS`, the real default list): the events the agent may send;
  `agent_response_correction`, `client_tool_call`, `agent_chat_response_part`, `vad_score` and `agent_tool_response`
  are opt-in (a disabled client tool is answered "not enabled for this client" by the agent itself).
- `reply_pacing` ("burst", like the real service: a reply's audio is sent at once; "realtime": paced).
- `end_call_after_reply` (false): the reply to the user is a goodbye, then `agent_tool_response` end_call (if
  enabled) and close 1000 right after the last chunk.
- `send_alignment` (true): per-character `alignment` on each audio chunk.
- `queue_wait_ms` (0; `DEMO_FAULTS` 1200 in demo mode), `queue_times_out` (false): `queue_status` waiting →
  admitted, or timed_out and close 3008.
- `server_tool_delay_ms` (600), `mcp_approval_timeout_s` (30), `human_typing_ms` (800): the demo features' timings.
- `odd_fields` (false): known events with missing, extra or oddly typed fields, and one non-JSON frame.
- `required_dynamic_variables` ([]): names the client must send (else an `error` event `missing_dynamic_variable`
  naming them, then close 1008).
- `first_message` ("Hello! I'm the simulated agent. How can I help you today?"): the greeting; null or "" disables.
- `ping_interval_s` (2.0): seconds between pings; 0 disables them.
- `vad_rms_threshold` (500, PCM16 units), `vad_speech_start_ms` (100), `vad_silence_end_ms` (600),
  `tentative_interval_ms` (500).
- `chunk_duration_ms` (250), `response_latency_ms` (300), `ms_per_char` (60), `max_reply_s` (6.0),
  `tool_result_timeout_s` (15).
- `input_timeout_s` (60), `max_duration_s` (600).
- `close_code` (null), `close_reason` (""), `close_after_ms` (null), `close_on_first_user_audio` (false): close with
  `close_code`/`close_reason` that many ms after the metadata, and/or on the first user audio chunk.
- `send_bad_json` (false): send one malformed frame right after the metadata.
- `send_unknown_events` (false): send event types clients do not know (`agent_response_metadata`,
  `internal_tentative_agent_response`, `mcp_connection_status`) after the metadata and around each reply.
- `stall_before_metadata` (false), `stall_after_ms` (null): stop answering entirely (no metadata / nothing after
  that many ms past the metadata): the socket stays open, nothing is sent, and what arrives is drained and ignored
  (draining is what lets the simulator notice the client leaving), until `max_duration_s`.
- `error_event` (null): `{"form": "schema"|"flat", "after_ms": 0, "code": 1002, "message": "...",
  "error_type": "..."}` sends one `error` event that long after the metadata.

Ledger (`GET /_sim/ledger`): `conversations` (one object per socket: id, agent_id, subprotocol, signed,
opened_at, metadata_at, closed_at, close_code, close_reason, closed_by "agent"|"client", initiation, the
formats, user_audio_chunks/bytes/seconds, user_messages, contextual_updates, user_activity, feedback,
tool_calls, tool_results, pings, pongs, last_ping_ms, turns, user_transcripts, replies, agent_audio_seconds,
interruptions, reply_times, query, rich_content_ids, context_ids, multimodal_messages, mcp_approvals, mcp_tool_calls,
server_tool_calls, hand_offs), `totals`, `signed_urls_issued`, `signed_url_queries`, `agent_details_requests`. Times are
`time.monotonic()`. `reply_times` is one `[event_id, agent_response_at, first_audio_at, text]` per reply, taken just
before the `agent_response` frame and the reply's first audio frame are sent (`first_audio_at` is null for a
text-only reply); the benchmark (`bench/`) matches them with what the avatar simulators received.
"""

from relay.sim.elevenlabs_sim.app import create_app
from relay.sim.elevenlabs_sim.defaults import (
    ALL_CLIENT_EVENTS,
    DEFAULT_AGENTS,
    DEFAULT_CLIENT_EVENTS,
    DEFAULT_FAULTS,
    DEFAULT_FIRST_MESSAGE,
    DEMO_FAULTS,
    FORMATS,
)

__all__ = ["ALL_CLIENT_EVENTS", "DEFAULT_AGENTS", "DEFAULT_CLIENT_EVENTS", "DEFAULT_FAULTS", "DEFAULT_FIRST_MESSAGE",
           "DEMO_FAULTS", "FORMATS", "create_app"]
