// TypeScript declarations for the relay's widget, `<avatar-relay>` (docs/embedding.md), and every message of the
// browser protocol (docs/protocol.md). Served by the relay at /static/embed.d.ts; copy it next to your code or point
// a `declare module` at it. tests/test_widget_contract.py checks every message here against the relay's own
// definitions (relay/protocol/browser.py, relay/protocol/vocab.py), so the two cannot drift apart.

// ---------------------------------------------------------------------------------------------------------------------
// Vocabularies

/** Why the relay reports an error (`error.code`). */
export type ErrorCode =
  | 'protocol_error' | 'unauthorized' | 'capacity' | 'upstream_unavailable' | 'agent_error' | 'timeout'
  | 'shutdown' | 'internal' | 'agent_refused' | 'agent_busy' | 'resume_failed';

/** Why a conversation ended (`ended.reason`). */
export type EndReason = ErrorCode | 'client_stop' | 'agent_ended' | 'max_duration' | 'client_gone' | 'admin';

/** Why a `resume` was refused (`error.reason` when `error.code` is `resume_failed`): `elsewhere` (another relay
 * process holds the conversation: try again) is the only one worth retrying. */
export type ResumeFailure = 'expired' | 'unknown' | 'unauthorized' | 'ended' | 'elsewhere';

/** Why the avatar is unavailable (`avatar_unavailable.reason`); the conversation goes on with voice only. */
export type AvatarUnavailableReason =
  | 'concurrent_limit' | 'capacity' | 'unauthorized' | 'no_credits' | 'rate_limited' | 'upstream_error' | 'timeout'
  | 'bad_config' | 'session_ended';

/** Why the avatar was replaced mid-conversation (`avatar_changed.reason`): it died (`session_ended`, `session_gone`)
 * or was rotated between turns before a known session limit (`session_limit`). */
export type AvatarChangeReason = 'session_ended' | 'session_gone' | 'session_limit';

/** A dynamic variable's value. */
export type DynamicValue = string | number | boolean;

// ---------------------------------------------------------------------------------------------------------------------
// Relay -> browser (text frames; binary frames are the agent's voice: PCM16 LE mono at ready.output_audio.sample_rate)

export interface AvatarInfo {
  provider: string;
  session_id: string | null;
  livekit_url: string | null;
  access_token: string | null;
  simulated: boolean;
}

export interface AudioFormat {
  encoding: 'pcm_s16le';
  sample_rate: number;
}

export interface ReadyMessage {
  type: 'ready';
  conversation_id: string;
  avatar: AvatarInfo | null;
  input_audio: AudioFormat;
  output_audio: AudioFormat;
  /** With resuming on (RELAY_RESUME_WINDOW > 0): the single-use token a new connection's `resume` names. */
  resume_token?: string;
  /** How many seconds the relay holds the conversation after the connection drops. */
  resume_window?: number;
}

export interface UserTranscriptMessage {
  type: 'user_transcript';
  text: string;
  event_id: number;
  final: boolean;
}

export interface AgentResponseMessage {
  type: 'agent_response';
  text: string;
  event_id: number;
}

export interface AgentResponsePartMessage {
  type: 'agent_response_part';
  event_id: number | null;
  part: 'start' | 'delta' | 'stop';
  text: string;
}

export interface AgentResponseCorrectionMessage {
  type: 'agent_response_correction';
  text: string;
  original: string;
  event_id: number;
}

export interface CaptionWord {
  text: string;
  start_ms: number;
  end_ms: number;
  continues: boolean;
}

export interface AgentAlignmentMessage {
  type: 'agent_alignment';
  event_id: number;
  offset_ms: number;
  words: CaptionWord[];
}

export interface InterruptionMessage {
  type: 'interruption';
  event_id: number;
}

export interface ToolCallMessage {
  type: 'tool_call';
  tool_call_id: string;
  tool_name: string;
  parameters: Record<string, unknown>;
}

export interface ToolStatusMessage {
  type: 'tool_status';
  tool_call_id: string;
  tool_name: string;
  tool_type: string | null;
  state: 'running' | 'done' | 'failed';
}

export interface McpToolCallMessage {
  type: 'mcp_tool_call';
  tool_call_id: string;
  service_id: string;
  tool_name: string;
  tool_description: string | null;
  parameters: Record<string, unknown>;
  /** An unknown state is passed on as the agent sent it. */
  state: 'loading' | 'awaiting_approval' | 'success' | 'failure' | (string & {});
  approval_timeout_secs: number | null;
  error_message: string | null;
}

export interface McpConnectionStatusMessage {
  type: 'mcp_connection_status';
  integrations: Array<Record<string, unknown>>;
}

export interface QueueStatusMessage {
  type: 'queue_status';
  status: 'waiting' | 'admitted' | 'timed_out';
}

export interface HumanAgentMessage {
  type: 'human_agent';
  connected: boolean;
}

export interface AgentTypingMessage {
  type: 'agent_typing';
  typing: boolean;
}

export interface VadScoreMessage {
  type: 'vad_score';
  score: number;
}

export interface ContextUsageMessage {
  type: 'context_usage';
  event_id?: number;
  model?: string;
  context_tokens?: number;
  context_limit_tokens?: number;
}

export interface RichContentMessage {
  type: 'rich_content';
  rich_content_id: string;
  component?: string;
  props?: Record<string, unknown>;
  event_id?: number;
}

export interface AvatarSpeakingMessage {
  type: 'avatar_speaking';
  text: string | null;
  duration_ms: number | null;
  event_id: number | null;
}

export interface AvatarStateMessage {
  type: 'avatar_state';
  speaking: boolean;
  event_id: number | null;
}

export interface AvatarUnavailableMessage {
  type: 'avatar_unavailable';
  reason: AvatarUnavailableReason;
  message: string;
}

/** The avatar was replaced mid-conversation: leave the previous LiveKit room and join `avatar`'s (the shape of
 * `ready.avatar`); until its video shows, the agent's voice comes as binary frames. */
export interface AvatarChangedMessage {
  type: 'avatar_changed';
  avatar: AvatarInfo;
  reason: AvatarChangeReason;
}

/** One of the agent's guardrails fired (ElevenLabs `guardrail_triggered`). */
export interface GuardrailTriggeredMessage {
  type: 'guardrail_triggered';
}

export interface ErrorMessage {
  type: 'error';
  code: ErrorCode;
  message: string;
  /** When the agent refused the conversation: what it said. */
  agent_error_type?: string;
  agent_close_code?: number;
  agent_close_reason?: string;
  /** When `code` is `resume_failed`: why. */
  reason?: ResumeFailure;
}

/** The answer to a `resume`: the conversation goes on; the messages after `last_seq` follow (replayed), up to `seq`. */
export interface ResumedMessage {
  type: 'resumed';
  conversation_id: string;
  /** The next resume's token (each is single use). */
  resume_token: string;
  seq: number;
}

/** With resuming on, every message after `ready` carries `seq`, its number (1, 2, ...): after a resume the browser
 * drops a replayed message whose `seq` it has seen already. */
export interface Numbered {
  seq?: number;
}

export interface EndedMessage {
  type: 'ended';
  reason: EndReason;
}

/** Every text frame the relay sends. */
export type RelayMessage = (
  | ReadyMessage | UserTranscriptMessage | AgentResponseMessage | AgentResponsePartMessage
  | AgentResponseCorrectionMessage | AgentAlignmentMessage | InterruptionMessage | ToolCallMessage | ToolStatusMessage
  | McpToolCallMessage | McpConnectionStatusMessage | QueueStatusMessage | HumanAgentMessage | AgentTypingMessage
  | VadScoreMessage | ContextUsageMessage | RichContentMessage | AvatarSpeakingMessage | AvatarStateMessage
  | AvatarUnavailableMessage | AvatarChangedMessage | GuardrailTriggeredMessage | ErrorMessage | EndedMessage
  | ResumedMessage) & Numbered;

// ---------------------------------------------------------------------------------------------------------------------
// Browser -> relay (text frames; binary frames are the microphone: PCM16 LE mono at ready.input_audio.sample_rate)

export interface StartMessage {
  type: 'start';
  dynamic_variables?: Record<string, DynamicValue>;
  overrides?: Record<string, unknown>;
  custom_llm_extra_body?: Record<string, unknown> | null;
  user_id?: string | null;
  token?: string | null;
  /** The website's trace (W3C `traceparent`, version 00): the conversation's trace becomes its child. */
  traceparent?: string | null;
}

/** The first frame of a connection that takes a dropped conversation over (instead of `start`). */
export interface ResumeMessage {
  type: 'resume';
  resume_token: string;
  /** The newest `seq` the browser has (0: none). */
  last_seq: number;
}

export interface AudioMessage {
  type: 'audio';
  /** base64 PCM16 (binary frames are cheaper). */
  audio: string;
}

export interface TextMessage {
  type: 'text';
  text: string;
  rich_content_id?: string | null;
}

export interface ContextMessage {
  type: 'context';
  text: string;
  context_id?: string | null;
}

export interface MultimodalMessage {
  type: 'multimodal';
  text: string;
}

export interface McpApprovalMessage {
  type: 'mcp_approval';
  tool_call_id: string;
  approved: boolean;
}

export interface ActivityMessage {
  type: 'activity';
}

export interface InterruptMessage {
  type: 'interrupt';
}

export interface ToolResultMessage {
  type: 'tool_result';
  tool_call_id: string;
  result?: unknown;
  is_error?: boolean;
}

export interface FeedbackMessage {
  type: 'feedback';
  score: 'like' | 'dislike' | null;
  event_id: number;
}

export interface StopMessage {
  type: 'stop';
}

/** The client has every numbered message up to `seq`: the relay forgets them instead of keeping them for a resume
 *  (optional; the page sends one 5 s after news). A `seq` never sent is a protocol error. */
export interface AckMessage {
  type: 'ack';
  seq: number;
}

/** One turn as the user lived it, in ms from the end of their speech; null: not measured. */
export interface TurnTimings {
  /** The agent turn (its `agent_response.event_id`). */
  event_id?: number | null;
  speech_to_audio_ms?: number | null;
  speech_to_mouth_ms?: number | null;
  /** How late the turn's captions were shown after their words were said (mean). */
  caption_offset_ms?: number | null;
}

/** The page's measurements (the widget sends them itself, at most every 5 s): at most 8 turns, 16 freezes, 2048
 * characters, each figure 0-120000 ms; anything else is dropped by the relay, never an error. */
export interface ClientMetricsMessage {
  type: 'client_metrics';
  turns?: TurnTimings[];
  /** Each stall of the avatar's video (500 ms or more without a new frame), by its length. */
  freezes_ms?: number[];
}

/** Every text frame a browser may send. */
export type ClientMessage =
  | StartMessage | ResumeMessage | AudioMessage | TextMessage | ContextMessage | MultimodalMessage | McpApprovalMessage
  | ActivityMessage | InterruptMessage | ToolResultMessage | FeedbackMessage | StopMessage | AckMessage
  | ClientMetricsMessage;

// ---------------------------------------------------------------------------------------------------------------------
// The element

/** `idle` before the first Start; `connecting` until the relay says `ready`; `live` while talking; `reconnecting`
 * while a connection of the conversation is being recovered (today: the avatar's LiveKit room); `ended` after. */
export type AvatarRelayState = 'idle' | 'connecting' | 'live' | 'reconnecting' | 'ended';

export interface AvatarRelayStateDetail {
  state: AvatarRelayState;
  previous: AvatarRelayState;
}

/** A client tool the agent may call: its result (any JSON value) goes back to the agent; a throw is an error. */
export type ClientTool = (parameters: Record<string, unknown>, call: { toolCallId: string; toolName: string }) =>
  unknown | Promise<unknown>;

export declare class AvatarRelayElement extends HTMLElement {
  /** `relay` (attribute): the relay's base URL; default: the origin embed.js was loaded from. */
  /** `token-url` (attribute): an endpoint of the host site answering `{"token": "…"}` (JSON) or the token as text; a
   * JSON answer may add `"traceparent"` (the site's trace of minting it), which then goes in `start`. */
  /** `lang` (attribute): `en` or `es`; default: the page's language, then the browser's. */
  /** `voice-only` (attribute): no avatar picture (a voice orb instead); the agent is still heard. */
  /** `dynamic-variables` (attribute): a JSON object of the agent's dynamic variables. */
  /** `traceparent` (attribute): the website's trace (W3C, version 00), sent in `start`: the relay's trace of the
   * conversation becomes its child (docs/operations.md "Traces"). Also `window.relayStart.traceparent`. */
  readonly state: AvatarRelayState;
  /** For sites that mint tokens their own way; wins over `token-url`. */
  tokenProvider: (() => Promise<string>) | null;
  /** Client tools by name (else `window.relayTools`). */
  tools: Record<string, ClientTool> | null;
  start(): void;
  stop(): void;
  /** false when no conversation is live (or the text is blank). */
  sendText(text: string): boolean;
  interrupt(): void;
  mute(on?: boolean): void;
}

export declare const STATES: readonly AvatarRelayState[];

/** `relay:<type>` for every relay message, and `relay:state`: dispatched on the element, bubbling and composed. */
export type AvatarRelayEventMap = {
  [M in RelayMessage as `relay:${M['type']}`]: CustomEvent<M>;
} & {
  'relay:state': CustomEvent<AvatarRelayStateDetail>;
};

declare global {
  interface HTMLElementTagNameMap {
    'avatar-relay': AvatarRelayElement;
  }
  interface HTMLElementEventMap extends AvatarRelayEventMap {}
}
