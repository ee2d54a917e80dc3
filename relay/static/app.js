// The Avatar Relay page: one conversation at a time over the relay's WebSocket (docs/protocol.md).
//
// Start (a user gesture, so the browser lets us use the microphone and play sound) opens the socket, sends
// `start`, and captures the microphone through an AudioWorklet that resamples to the agent's input rate. After
// `ready` it sends PCM16 frames, shows the avatar (a LiveKit room, or the drawn face in demo mode, or nothing in
// voice-only mode), plays the agent's audio frames gaplessly, and keeps live captions. Every way a conversation
// ends leads to `finish()`, which releases the microphone, the audio graph and the room and leaves the page ready
// to start again. The page never sends audio before `ready` and never shows raw HTML from the network.
// `window.__relayDebug` exposes what the page is doing, for tests and for curious developers.

import { Activity, ApprovalDialog } from './activity.js';
import { Captions } from './captions.js';
import { SimulatedFace } from './face.js';
import { joinAvatarRoom } from './livekit.js';
import { PcmPlayer } from './player.js';
import { Transcript } from './transcript.js';

const $ = (id) => document.getElementById(id);
const ui = {
  start: $('start'),
  stop: $('stop'),
  mute: $('mute'),
  interrupt: $('interrupt'),
  status: $('status'),
  statusText: $('status-text'),
  notice: $('notice'),
  enableAudio: $('enable-audio'),
  form: $('text-form'),
  input: $('text-input'),
  send: $('send'),
  micMeter: $('mic-meter'),
  outMeter: $('out-meter'),
  stage: $('stage'),
  stageLabel: $('stage-label'),
  face: $('sim-face'),
  orb: $('voice-orb'),
  video: $('avatar-video'),
  audio: $('avatar-audio'),
  transcript: $('transcript'),
  subtitle: $('subtitle'),
  activity: $('activity'),
  approval: $('approval'),
};

const DEFAULT_CONFIG = { livekit_client_url: null, ws_path: '/ws', frame_ms: 60, avatars: {} };
const SEND_BUFFER_LIMIT = 256 * 1024; // bytes queued on the socket beyond which microphone frames are dropped
const STOP_GRACE_MS = 6000; // how long to wait for `ended` after sending `stop`
// Normal ends by the agent: the page plays out the agent's audio it already has before it tears down (voice-only and
// demo mode; an avatar's own speech is finished by the relay before it sends `ended`). Bounded like the relay's
// RELAY_FINISH_SPEAKING_TIMEOUT default.
const PLAY_OUT_REASONS = new Set(['agent_ended', 'max_duration']);
const PLAY_OUT_LIMIT_S = 15;
const ACTIVITY_EVERY_MS = 2000;
const MAX_DEBUG_MESSAGES = 400;

const ENDED_REASONS = {
  client_stop: 'you stopped it',
  agent_ended: 'the agent ended the conversation',
  max_duration: 'the agent\'s maximum conversation duration was reached',
  agent_refused: 'the agent refused this conversation\'s settings',
  agent_busy: 'the agent is busy (too many conversations at once), try again shortly',
  protocol_error: 'the page and the relay disagreed (protocol error)',
  unauthorized: 'not authorized',
  capacity: 'the relay is busy, try again shortly',
  upstream_unavailable: 'the agent or the avatar service could not be reached',
  agent_error: 'the agent reported an error',
  timeout: 'timed out',
  shutdown: 'the relay is shutting down',
  internal: 'an internal error in the relay',
  connection_lost: 'the connection to the relay was lost',
  resume_failed: 'the conversation could not be resumed',
  page_closed: 'the page was closed',
};

const QUEUE_WORDS = {
  waiting: 'Waiting in line — the agent is busy with other conversations…',
  admitted: 'Your turn — the agent is joining…',
  timed_out: 'The agent stayed busy too long and the wait timed out. Try again shortly.',
};
// Frames that are not kept in `received` one by one (they come up to ten times a second).
const NOISY = new Set(['vad_score']);

const debug = {
  status: 'idle',
  statusText: ui.statusText.textContent,
  get wsState() {
    const ws = current?.ws;
    return ws ? ['connecting', 'open', 'closing', 'closed'][ws.readyState] : 'none';
  },
  conversationId: null,
  avatarSessionId: null,
  avatarMode: null,
  micState: 'off',
  micError: null,
  muted: false,
  framesSent: 0,
  bytesSent: 0,
  framesDropped: 0,
  audioFramesReceived: 0,
  mouthOpen: false,
  mouthOpenness: 0,
  lastMouthMoveAt: 0,
  mouthMoves: 0,
  outputRms: 0,
  maxOutputRms: 0,
  inputRms: 0,
  received: [],
  sent: [],
  endedReason: null,
  playingOut: null, // seconds of agent audio being played out after a normal `ended`, while it lasts
  error: null,
  notice: null,
  toolResults: [],
  captionLog: [], // every agent word revealed: {eventId, index, text, due, revealedAt, why} (performance.now() ms)
  audioChunks: [], // every aligned agent audio chunk scheduled: {eventId, offsetMs, start, duration, heardAt}
  queueStatus: null,
  humanAgent: false,
  agentTyping: false,
  vadScore: null,
  contextUsage: null,
  mcpIntegrations: null,
  approvals: [], // answers to MCP approval requests: {tool_call_id, approved, how, sent}
};
// The audio graph for measurements (not enumerable: JSON snapshots of the debug object leave it out).
Object.defineProperty(debug, 'audio', {
  enumerable: false,
  get: () => (current?.player ? { context: current.context, analyser: current.player.analyser, player: current.player } : null),
});
window.__relayDebug = debug;

const transcript = new Transcript(ui.transcript);
transcript.onFeedback = (eventId, score) =>
  Boolean(current && current.ready && !current.finished && current.sendJson({ type: 'feedback', score, event_id: eventId }));
const face = new SimulatedFace(ui.face);
const captions = new Captions(transcript, ui.subtitle, debug);
const activity = new Activity(ui.activity, transcript);
const approval = new ApprovalDialog(ui.approval, (toolCallId, approved, how) => {
  const sent = approved !== null && Boolean(current && current.ready && !current.finished
    && current.sendJson({ type: 'mcp_approval', tool_call_id: toolCallId, approved }));
  debug.approvals.push({ tool_call_id: toolCallId, approved, how, sent });
  if (approved !== null) transcript.system(`You ${approved ? 'approved' : 'denied'} the tool call.`, 'tool');
  return sent;
});
const configPromise = fetch('client-config.json', { cache: 'no-store' })
  .then((response) => (response.ok ? response.json() : DEFAULT_CONFIG))
  .then((config) => ({ ...DEFAULT_CONFIG, ...config }))
  .catch(() => DEFAULT_CONFIG);

/** @type {Conversation | null} */
let current = null;

function setStatus(state, text) {
  if (debug.status === state && debug.statusText === text) return;
  debug.status = state;
  debug.statusText = text;
  ui.status.dataset.state = state;
  ui.statusText.textContent = text;
}

function showNotice(text, kind = 'warning') {
  debug.notice = text;
  ui.notice.textContent = text;
  ui.notice.dataset.kind = kind;
  ui.notice.hidden = false;
}

function hideNotice() {
  debug.notice = null;
  ui.notice.hidden = true;
  ui.notice.textContent = '';
}

function setStage(mode, label = '') {
  ui.stage.dataset.mode = mode;
  // An <svg> is not an HTMLElement: it has no `hidden` property, only the attribute.
  ui.face.toggleAttribute('hidden', mode !== 'simulated');
  ui.video.hidden = mode !== 'video';
  ui.stageLabel.textContent = label;
  debug.avatarMode = mode;
}

function setControls({ running, ready, mic }) {
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  ui.interrupt.disabled = !ready;
  ui.mute.disabled = !(ready && mic);
  ui.input.disabled = !ready;
  ui.send.disabled = !ready;
}

function record(list, type) {
  list.push(type);
  if (list.length > MAX_DEBUG_MESSAGES) list.splice(0, list.length - MAX_DEBUG_MESSAGES);
}

function micProblem(err) {
  switch (err?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Microphone access was refused. Allow the microphone for this site to talk, or type your messages below.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No microphone was found. Connect one and start again, or type your messages below.';
    case 'NotReadableError':
    case 'AbortError':
      return 'The microphone could not be opened (another application may be using it). You can type your messages below.';
    default:
      return `The microphone could not be opened (${err?.name || 'unknown error'}). You can type your messages below.`;
  }
}

function startFrame() {
  // An embedding page may set window.relayStart = {dynamic_variables, overrides, user_id, token} before Start; a
  // token may also come in the URL fragment (#token=…), which browsers never send to a server.
  const options = window.relayStart && typeof window.relayStart === 'object' ? window.relayStart : {};
  const frame = { type: 'start' };
  for (const key of ['dynamic_variables', 'overrides', 'user_id', 'token']) {
    if (options[key] !== undefined && options[key] !== null) frame[key] = options[key];
  }
  const fragmentToken = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fragmentToken && frame.token === undefined) frame.token = fragmentToken;
  return frame;
}

function socketUrl(path) {
  const url = new URL(path || '/ws', location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

class Conversation {
  constructor() {
    // Created inside the click handler: the user gesture is what lets the context play sound.
    this.context = new AudioContext({ latencyHint: 'interactive' });
    this.context.resume().catch(() => {});
    this.config = DEFAULT_CONFIG;
    this.ws = null;
    this.ready = null;
    this.player = null;
    this.capture = null;
    this.room = null;
    this.muted = false;
    this.micAvailable = false;
    this.stopping = false;
    this.finished = false;
    this.errorMessage = null;
    this.discardAgentAudio = false; // after a local Interrupt, until the next turn starts
    this.lastAgentEventId = -1;
    this.pagePlaysAudio = true; // voice only or the simulated avatar: captions follow the page's own player
    this.pendingAlignment = null; // the `agent_alignment` of the binary audio chunk that comes next
    this.stopTimer = 0;
    this.playOutTimer = 0;
    this.playOutReason = null; // set while the agent's last words play out after a normal `ended`
    this.lastActivityAt = 0;
    // Resuming (docs/protocol.md "Resuming"): the token and window from `ready`, the newest `seq` seen, and the
    // reconnection under way after an unexpected close.
    this.resumeToken = null;
    this.resumeWindowS = 0;
    this.lastSeq = 0;
    this.reconnect = null; // { deadline, delay, timer } while reconnecting
    this.onOnline = () => this.retryNow();
    // The browser says the network is gone (Wi-Fi to mobile, a lid closed): the old connection cannot survive a new
    // address, so stop waiting for TCP to notice and resume as soon as the network is back.
    this.onOffline = () => this.connectionLost();
    window.addEventListener('offline', this.onOffline);
  }

  async begin() {
    setStatus('connecting', 'Connecting…');
    setStage('idle', 'Connecting to the agent…');
    setControls({ running: true, ready: false, mic: false });
    this.openMicrophone().catch((err) => {
      this.microphoneUnavailable(`The microphone could not be used (${err?.message ?? err}). You can type your messages below.`, err?.name ?? 'Error');
    });
    this.config = await configPromise;
    if (this.finished) return;
    this.openSocket(startFrame());
  }

  /** Open the relay's WebSocket and send `first` (`start`, or `resume` when reconnecting) once it is open. */
  openSocket(first) {
    const url = new URL(socketUrl(this.config.ws_path));
    // A resume names the relay that holds the conversation (the token's readable route) for a proxy to route on.
    if (first.type === 'resume') url.searchParams.set('relay', String(first.resume_token).split('.')[1] ?? '');
    const ws = new WebSocket(url.href);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onopen = () => {
      if (ws === this.ws) this.sendJson(first);
      else ws.close(1000); // a reconnection attempt that was given up
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      if (typeof event.data === 'string') this.onText(event.data);
      else this.onAgentAudio(event.data);
    };
    ws.onclose = (event) => {
      if (ws === this.ws) this.onClose(event);
    };
  }

  connectionLost() {
    if (this.finished || this.stopping || this.reconnect || !this.resumable()) return;
    const ws = this.ws;
    this.startReconnecting();
    try {
      ws?.close(4001, 'offline'); // not 1000: the relay holds the conversation
    } catch {
      // already closed
    }
  }

  resumable() {
    return Boolean(this.ready && this.resumeToken && this.resumeWindowS > 0);
  }

  /** The connection dropped unexpectedly: keep the conversation (video, captions) and resume it within the window,
   * retrying with back-off (and at once when the browser says it is online again). */
  startReconnecting() {
    this.reconnect = { deadline: performance.now() + this.resumeWindowS * 1000, delay: 250, timer: 0 };
    debug.reconnecting = true;
    setStatus('reconnecting', 'Reconnecting…');
    window.addEventListener('online', this.onOnline);
    this.player?.flush(); // the agent audio due in the gap is not replayed; its captions are
    this.tryResume();
  }

  tryResume() {
    const reconnect = this.reconnect;
    if (!reconnect || this.finished) return;
    clearTimeout(reconnect.timer);
    if (performance.now() >= reconnect.deadline) {
      this.stopReconnecting();
      this.errorMessage ??= 'the connection could not be restored in time';
      this.finish('connection_lost');
      return;
    }
    if (navigator.onLine === false) {
      // No network: wait for the `online` event (retryNow), or the end of the window.
      reconnect.timer = setTimeout(() => this.tryResume(), Math.max(0, reconnect.deadline - performance.now()));
      return;
    }
    this.openSocket({ type: 'resume', resume_token: this.resumeToken, last_seq: this.lastSeq });
  }

  retryNow() {
    if (!this.reconnect || this.ws?.readyState === WebSocket.OPEN) return;
    if (this.ws?.readyState === WebSocket.CONNECTING) this.ws.close(1000);
    this.tryResume();
  }

  scheduleResume() {
    const reconnect = this.reconnect;
    const wait = Math.min(reconnect.delay, Math.max(0, reconnect.deadline - performance.now()));
    reconnect.delay = Math.min(reconnect.delay * 2, 4000);
    reconnect.timer = setTimeout(() => this.tryResume(), wait);
  }

  stopReconnecting() {
    if (this.reconnect) clearTimeout(this.reconnect.timer);
    this.reconnect = null;
    debug.reconnecting = false;
    window.removeEventListener('online', this.onOnline);
  }

  onResumed(msg) {
    this.resumeToken = String(msg.resume_token ?? this.resumeToken);
    this.stopReconnecting();
    debug.resumes = (debug.resumes ?? 0) + 1;
    this.refreshControls();
  }

  async openMicrophone() {
    if (!navigator.mediaDevices?.getUserMedia) {
      this.microphoneUnavailable('This page cannot use the microphone here (it needs https or localhost). You can type your messages below.', 'Unsupported');
      return;
    }
    debug.micState = 'asking';
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
      });
    } catch (err) {
      this.microphoneUnavailable(micProblem(err), err?.name ?? 'Error');
      return;
    }
    if (this.finished) {
      for (const track of stream.getTracks()) track.stop();
      return;
    }
    try {
      await this.context.audioWorklet.addModule(new URL('./capture-worklet.js', import.meta.url));
    } catch (err) {
      for (const track of stream.getTracks()) track.stop();
      this.microphoneUnavailable(`The audio processor could not be loaded (${err?.message ?? err}). You can type your messages below.`, 'WorkletError');
      return;
    }
    if (this.finished) {
      for (const track of stream.getTracks()) track.stop();
      return;
    }
    const source = this.context.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(this.context, 'relay-capture', {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
    });
    node.port.onmessage = (event) => this.onCaptureMessage(event.data);
    source.connect(node);
    // The processor outputs silence; connecting it keeps every browser pulling audio through it.
    node.connect(this.context.destination);
    this.capture = { stream, source, node };
    this.micAvailable = true;
    debug.micState = 'on';
    for (const track of stream.getAudioTracks()) {
      track.addEventListener('ended', () => {
        if (this.finished) return;
        debug.micState = 'lost';
        this.micAvailable = false;
        showNotice('The microphone stopped (it was unplugged or disabled). You can type your messages below.');
        this.refreshControls();
      });
    }
    if (this.ready) this.configureCapture();
    this.refreshControls();
  }

  microphoneUnavailable(message, name) {
    if (this.finished) return;
    debug.micState = 'unavailable';
    debug.micError = name;
    showNotice(message, 'error');
    this.refreshControls();
  }

  configureCapture() {
    this.capture.node.port.postMessage({
      type: 'configure', sampleRate: this.ready.input_audio.sample_rate, frameMs: this.config.frame_ms,
    });
  }

  refreshControls() {
    if (this.finished) return;
    setControls({ running: true, ready: Boolean(this.ready) && !this.stopping, mic: this.micAvailable });
  }

  onCaptureMessage(msg) {
    if (msg.type === 'level') {
      debug.inputRms = this.muted ? 0 : msg.rms;
    } else if (msg.type === 'frame') {
      this.sendAudio(msg.pcm);
    }
  }

  sendAudio(pcm) {
    const ws = this.ws;
    if (!this.ready || this.finished || this.stopping || !ws || ws.readyState !== WebSocket.OPEN) return;
    if (ws.bufferedAmount > SEND_BUFFER_LIMIT) {
      debug.framesDropped += 1;
      return;
    }
    // Muted still streams (silence), like ElevenLabs' own client: the agent's audio input never stalls.
    ws.send(this.muted ? new ArrayBuffer(pcm.byteLength) : pcm);
    debug.framesSent += 1;
    debug.bytesSent += pcm.byteLength;
  }

  sendJson(message) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(message));
    record(debug.sent, message.type);
    return true;
  }

  onText(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    if (!msg || typeof msg.type !== 'string') return;
    if (msg.type === 'resumed') {
      this.onResumed(msg);
      return;
    }
    if (this.reconnect && (this.reconnect.elsewhere || (msg.type === 'error' && msg.reason === 'elsewhere'))) {
      // This attempt reached a relay process that does not hold the conversation (under `serve --workers N` the
      // kernel picks the worker): its token still works, so the next attempt tries again (onClose).
      this.reconnect.elsewhere = msg.type !== 'ended';
      return;
    }
    if (typeof msg.seq === 'number') {
      if (msg.seq <= this.lastSeq) return; // seen before the connection dropped
      this.lastSeq = msg.seq;
      debug.lastSeq = msg.seq;
    }
    if (!NOISY.has(msg.type)) record(debug.received, msg.type);
    switch (msg.type) {
      case 'ready':
        this.onReady(msg);
        break;
      case 'user_transcript': {
        const final = msg.final !== false;
        transcript.user(msg.event_id, String(msg.text ?? ''), final);
        if (final) this.discardAgentAudio = false;
        break;
      }
      case 'agent_response_part':
        this.agentTurn(msg.event_id);
        captions.part(msg.event_id, String(msg.part ?? 'delta'), String(msg.text ?? ''));
        break;
      case 'agent_response':
        this.agentTurn(msg.event_id);
        captions.response(msg.event_id, String(msg.text ?? ''));
        break;
      case 'agent_alignment':
        this.agentTurn(msg.event_id);
        captions.alignment(msg);
        if (this.pagePlaysAudio) this.pendingAlignment = msg;
        break;
      case 'agent_response_correction':
        captions.correction(msg.event_id, String(msg.text ?? ''));
        break;
      case 'interruption':
        this.player?.flush();
        this.pendingAlignment = null;
        face.silence();
        captions.interruption(msg.event_id);
        break;
      case 'tool_status':
        activity.toolStatus(msg);
        break;
      case 'mcp_tool_call':
        activity.mcpToolCall(msg);
        approval.update(msg);
        break;
      case 'mcp_connection_status':
        debug.mcpIntegrations = Array.isArray(msg.integrations) ? msg.integrations : null;
        break;
      case 'queue_status':
        this.onQueueStatus(String(msg.status ?? ''));
        break;
      case 'human_agent':
        this.onHumanAgent(Boolean(msg.connected));
        break;
      case 'agent_typing':
        debug.agentTyping = Boolean(msg.typing);
        activity.typing(debug.agentTyping);
        break;
      case 'vad_score':
        debug.vadScore = typeof msg.score === 'number' ? msg.score : null;
        break;
      case 'context_usage':
        debug.contextUsage = msg;
        break;
      case 'tool_call':
        this.onToolCall(msg);
        break;
      case 'avatar_speaking': {
        const text = String(msg.text ?? '');
        const words = text.split(/\s+/).filter(Boolean).length;
        const duration = typeof msg.duration_ms === 'number' ? msg.duration_ms : words * 380;
        face.speakFor(duration);
        // The avatar speaks in its own voice: time the captions by it unless the page plays the agent's audio.
        if (!this.pagePlaysAudio) captions.avatarSpeaking(msg.event_id ?? null, text, duration);
        break;
      }
      case 'avatar_state':
        face.setSpeaking(Boolean(msg.speaking));
        if (msg.speaking && !this.pagePlaysAudio) captions.avatarStarted(msg.event_id ?? null);
        break;
      case 'avatar_unavailable':
        this.onAvatarUnavailable(msg);
        break;
      case 'error': {
        this.errorMessage = String(msg.message ?? msg.code ?? 'error');
        debug.error = { code: msg.code ?? null, message: this.errorMessage };
        const words = ENDED_REASONS[msg.code] ?? 'something went wrong';
        showNotice(`Problem: ${words}${this.errorMessage && this.errorMessage !== msg.code ? ` — ${this.errorMessage}` : ''}.`, 'error');
        break;
      }
      case 'ended':
        this.ended(String(msg.reason ?? 'ended'));
        break;
      default:
        break;
    }
    // Embedding pages can follow everything the relay says (vad_score, context_usage, rich_content, …):
    // window.addEventListener('relay:vad_score', (e) => e.detail.score).
    window.dispatchEvent(new CustomEvent(`relay:${msg.type}`, { detail: msg }));
  }

  /** A frame of agent turn `eventId` arrived: a newer turn lets its audio through again after an Interrupt. */
  agentTurn(eventId) {
    if (typeof eventId === 'number' && eventId > this.lastAgentEventId) {
      this.lastAgentEventId = eventId;
      this.discardAgentAudio = false;
    }
  }

  onQueueStatus(status) {
    debug.queueStatus = status;
    if (status === 'waiting') {
      activity.chip('queue', 'Waiting in line for the agent…', 'queue', 'waiting');
      if (!this.ready) {
        setStatus('queued', QUEUE_WORDS.waiting);
        setStage('idle', 'Waiting in line…');
      }
    } else if (status === 'admitted') {
      activity.chip('queue', 'Your turn — the agent is joining', 'queue', 'admitted', 3000);
      if (!this.ready) {
        setStatus('connecting', QUEUE_WORDS.admitted);
        setStage('idle', 'Connecting to the agent…');
      }
    } else if (status === 'timed_out') {
      activity.remove('queue');
      showNotice(QUEUE_WORDS.timed_out, 'error');
    }
  }

  onHumanAgent(connected) {
    if (debug.humanAgent === connected) return;
    debug.humanAgent = connected;
    captions.label = connected ? 'Human agent' : 'Agent';
    activity.human(connected);
    if (!connected) debug.agentTyping = false;
    transcript.system(connected ? 'A person has taken over the conversation.' : 'The person has left; the agent is back.', 'human');
  }

  onReady(msg) {
    if (this.ready || this.finished) return;
    this.ready = msg;
    this.resumeToken = typeof msg.resume_token === 'string' ? msg.resume_token : null;
    this.resumeWindowS = typeof msg.resume_window === 'number' ? msg.resume_window : 0;
    debug.conversationId = msg.conversation_id ?? null;
    debug.avatarSessionId = msg.avatar?.session_id ?? null;
    this.player = new PcmPlayer(this.context, msg.output_audio?.sample_rate ?? 16000);
    if (this.capture) this.configureCapture();
    this.refreshControls();
    const avatar = msg.avatar;
    if (!avatar) {
      setStage('voice', 'Voice only');
    } else if (avatar.simulated) {
      setStage('simulated', 'Demo mode · simulated avatar');
    } else {
      // The avatar plays the agent's voice: captions follow its avatar_state / avatar_speaking.
      this.pagePlaysAudio = false;
      setStage('loading', 'Loading the avatar…');
      this.joinRoom(avatar);
    }
    ui.input.focus({ preventScroll: true });
  }

  async joinRoom(avatar) {
    if (!this.config.livekit_client_url) {
      showNotice('The relay did not say where to load livekit-client from, so the avatar cannot be shown.', 'error');
      setStage('voice', 'Avatar video unavailable');
      return;
    }
    try {
      const room = await joinAvatarRoom({
        moduleUrl: this.config.livekit_client_url,
        avatar,
        participant: this.config.avatars?.[avatar.provider]?.participant ?? null,
        video: ui.video,
        audio: ui.audio,
        onAudioBlocked: (blocked) => {
          ui.enableAudio.hidden = !blocked || this.finished;
        },
        onVideo: () => {
          if (!this.finished) setStage('video', '');
        },
        onDisconnected: (reason) => {
          if (this.finished) return;
          setStage('voice', 'Avatar disconnected');
          showNotice(`The avatar's video connection closed (${reason}).`);
        },
      });
      if (this.finished) {
        await room.leave();
        return;
      }
      this.room = room;
    } catch (err) {
      if (this.finished) return;
      console.warn('avatar room', err);
      showNotice(`The avatar video could not be loaded (${err?.message ?? err}).`, 'error');
      setStage('voice', 'Avatar video unavailable');
    }
  }

  onAvatarUnavailable(msg) {
    const reason = String(msg.reason ?? 'upstream_error');
    const message = String(msg.message ?? 'The avatar is unavailable.');
    debug.avatarUnavailable = reason;
    showNotice(`${message} The conversation continues with voice only.`);
    transcript.system(`Avatar unavailable (${reason}); continuing with voice only.`);
    face.silence();
    this.pagePlaysAudio = true;
    setStage('voice', 'Voice only — the avatar is unavailable');
    const room = this.room;
    this.room = null;
    ui.enableAudio.hidden = true;
    room?.leave().catch(() => {});
  }

  onAgentAudio(data) {
    debug.audioFramesReceived += 1;
    const alignment = this.pendingAlignment;
    this.pendingAlignment = null;
    if (!this.player || this.discardAgentAudio || this.finished || this.stopping) return;
    const scheduled = this.player.enqueue(data);
    if (!scheduled) return;
    if (alignment) {
      captions.chunkScheduled(alignment, scheduled.heardAt);
      debug.audioChunks.push({
        eventId: alignment.event_id, offsetMs: Number(alignment.offset_ms) || 0, start: scheduled.start,
        duration: scheduled.duration, heardAt: scheduled.heardAt,
      });
      if (debug.audioChunks.length > MAX_DEBUG_MESSAGES) debug.audioChunks.splice(0, debug.audioChunks.length - MAX_DEBUG_MESSAGES);
    } else {
      captions.unaligned(this.lastAgentEventId);
    }
  }

  async onToolCall(msg) {
    const name = String(msg.tool_name ?? '');
    const parameters = msg.parameters && typeof msg.parameters === 'object' ? msg.parameters : {};
    transcript.system(`Tool call: ${name}(${JSON.stringify(parameters)})`, 'tool');
    const tools = window.relayTools && typeof window.relayTools === 'object' ? window.relayTools : {};
    const handler = Object.prototype.hasOwnProperty.call(tools, name) ? tools[name] : undefined;
    let result;
    let isError;
    if (typeof handler === 'function') {
      try {
        result = await handler(parameters, { toolCallId: msg.tool_call_id, toolName: name });
        if (result === undefined) result = '';
        isError = false;
      } catch (err) {
        result = `The tool ${name} failed: ${err?.message ?? err}`;
        isError = true;
      }
    } else {
      result = `This page has no client tool named "${name}".`;
      isError = true;
    }
    debug.toolResults.push({ tool_call_id: msg.tool_call_id, tool_name: name, result, is_error: isError });
    this.sendJson({ type: 'tool_result', tool_call_id: msg.tool_call_id, result, is_error: isError });
  }

  sendText(text) {
    if (!this.ready || this.finished) return false;
    if (!this.sendJson({ type: 'text', text })) return false;
    transcript.typed(text);
    return true;
  }

  noteTyping() {
    const now = Date.now();
    if (!this.ready || this.finished || now - this.lastActivityAt < ACTIVITY_EVERY_MS) return;
    this.lastActivityAt = now;
    this.sendJson({ type: 'activity' });
  }

  interrupt() {
    if (!this.ready || this.finished) return;
    this.sendJson({ type: 'interrupt' });
    this.player?.flush();
    this.pendingAlignment = null;
    captions.cutAll();
    face.silence();
    // Audio of the interrupted reply may still be in flight from the relay: drop it until the next turn starts.
    this.discardAgentAudio = true;
  }

  setMuted(muted) {
    this.muted = muted;
    debug.muted = muted;
    ui.mute.setAttribute('aria-pressed', String(muted));
    ui.mute.textContent = muted ? 'Unmute' : 'Mute';
  }

  stop() {
    if (this.finished || this.stopping) return;
    this.stopping = true;
    setStatus('ending', 'Ending the conversation…');
    this.player?.flush();
    face.silence();
    this.refreshControls();
    ui.stop.disabled = true;
    if (!this.sendJson({ type: 'stop' })) {
      this.ws?.close(1000);
      this.finish('client_stop');
      return;
    }
    // The relay answers with `ended`; if it does not, end here anyway.
    this.stopTimer = setTimeout(() => {
      this.ws?.close(1000);
      this.finish('client_stop');
    }, STOP_GRACE_MS);
  }

  /** The tab is going away: tell the relay (best effort) and close. */
  leavePage() {
    if (this.finished) return;
    this.sendJson({ type: 'stop' });
    this.ws?.close(1000);
    this.finish('page_closed');
  }

  onClose(event) {
    if (this.finished || this.playOutReason) return; // the relay closes right after `ended`: the play-out goes on
    if (this.stopping) {
      this.finish('client_stop');
      return;
    }
    if (this.reconnect) {
      this.scheduleResume(); // this attempt failed: the next one after the back-off
      return;
    }
    if (this.resumable() && event.code !== 1000 && event.code !== 1008) {
      this.startReconnecting();
      return;
    }
    // 1006: no close frame at all (network gone, relay crashed); the reason label says it already.
    if (event.code !== 1000 && event.code !== 1006 && event.reason) this.errorMessage ??= event.reason;
    this.finish('connection_lost');
  }

  /** `ended` from the relay. When the agent ended normally, the agent's audio already buffered here is played out
   * first (the microphone is closed at once); Stop or leaving the page still ends everything at once. */
  ended(reason) {
    const left = PLAY_OUT_REASONS.has(reason) && !this.stopping ? Math.min(this.player?.buffered ?? 0, PLAY_OUT_LIMIT_S) : 0;
    if (left <= 0.05) {
      this.finish(reason);
      return;
    }
    this.playOutReason = reason;
    debug.playingOut = left;
    this.stopCapture();
    setStatus('ending', 'The agent is finishing…');
    this.playOutTimer = setTimeout(() => this.finish(reason), left * 1000 + 100);
  }

  stopCapture() {
    if (!this.capture) return;
    this.capture.node.port.postMessage({ type: 'stop' });
    this.capture.node.port.onmessage = null;
    this.capture.source.disconnect();
    this.capture.node.disconnect();
    for (const track of this.capture.stream.getTracks()) track.stop();
    this.capture = null;
  }

  /** The one way out: release everything and leave the page ready for a new conversation. Idempotent. */
  finish(reason) {
    if (this.finished) return;
    this.finished = true;
    this.stopReconnecting();
    window.removeEventListener('offline', this.onOffline);
    clearTimeout(this.stopTimer);
    clearTimeout(this.playOutTimer);
    debug.playingOut = null;
    debug.endedReason = reason;
    const ws = this.ws;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
    this.player?.close();
    this.stopCapture();
    debug.micState = debug.micState === 'unavailable' ? 'unavailable' : 'off';
    debug.inputRms = 0;
    this.room?.leave().catch(() => {});
    this.room = null;
    ui.video.srcObject = null;
    ui.enableAudio.hidden = true;
    this.context.close().catch(() => {});
    face.silence();
    captions.finishAll();
    approval.reset();
    activity.clear();
    const label = ENDED_REASONS[reason] ?? reason.replaceAll('_', ' ');
    const failed = this.errorMessage !== null && reason !== 'client_stop' && !PLAY_OUT_REASONS.has(reason);
    if (failed) setStatus('error', `Conversation ended: ${label} — ${this.errorMessage}`);
    else setStatus('ended', `Conversation ended: ${label}.`);
    setStage('idle', 'Press Start to talk again.');
    setControls({ running: false, ready: false, mic: false });
    this.setMuted(false);
    if (current === this) ui.start.focus({ preventScroll: true });
  }

  /** Called on every animation frame while this conversation is live. */
  updateStatus() {
    if (!this.ready || this.finished || this.stopping || this.reconnect) return;
    const speaking = (this.player?.playing ?? false) || face.speaking;
    if (speaking) setStatus('speaking', 'Agent speaking…');
    else if (this.micAvailable) setStatus('listening', this.muted ? 'Muted — the agent cannot hear you.' : 'Listening — speak any time.');
    else setStatus('listening', 'Connected — type a message to the agent.');
  }
}

function startConversation() {
  if (current && !current.finished) return;
  hideNotice();
  transcript.clear();
  captions.clear();
  activity.clear();
  captions.label = 'Agent';
  Object.assign(debug, {
    conversationId: null, avatarSessionId: null, avatarMode: null, micState: 'off', micError: null, muted: false, framesSent: 0,
    bytesSent: 0, framesDropped: 0, audioFramesReceived: 0, maxOutputRms: 0, mouthMoves: 0, received: [], sent: [],
    endedReason: null, error: null, toolResults: [], avatarUnavailable: null, captionLog: [], audioChunks: [],
    queueStatus: null, humanAgent: false, agentTyping: false, vadScore: null, contextUsage: null, mcpIntegrations: null,
    approvals: [],
  });
  let conversation;
  try {
    conversation = new Conversation();
  } catch (err) {
    setStatus('error', `This browser cannot play or capture audio here (${err?.message ?? err}).`);
    return;
  }
  current = conversation;
  conversation.setMuted(false);
  conversation.begin().catch((err) => {
    conversation.errorMessage = `Could not connect to the relay (${err?.message ?? err}).`;
    conversation.finish('connection_lost');
  });
}

function setMeter(meter, level) {
  const value = Math.min(1, level * 4);
  meter.firstElementChild.style.transform = `scaleX(${value.toFixed(3)})`;
  const rounded = String(Math.round(value * 10) * 10);
  if (meter.getAttribute('aria-valuenow') !== rounded) meter.setAttribute('aria-valuenow', rounded);
}

function animate(now) {
  const conversation = current && !current.finished ? current : null;
  const level = conversation?.player ? conversation.player.level() : 0;
  debug.outputRms = level;
  if (level > debug.maxOutputRms) debug.maxOutputRms = level;
  const wasOpen = debug.mouthOpen;
  face.tick(now, debug.avatarMode === 'simulated' ? level : 0);
  debug.mouthOpen = face.mouthOpen;
  debug.mouthOpenness = face.openness;
  debug.lastMouthMoveAt = face.lastMouthMoveAt;
  if (debug.mouthOpen && !wasOpen) debug.mouthMoves += 1;
  ui.orb.style.setProperty('--level', Math.min(1, level * 5).toFixed(3));
  setMeter(ui.outMeter, level);
  setMeter(ui.micMeter, conversation ? debug.inputRms : 0);
  conversation?.updateStatus();
  captions.tick();
  requestAnimationFrame(animate);
}

ui.start.addEventListener('click', startConversation);
ui.stop.addEventListener('click', () => current?.stop());
ui.interrupt.addEventListener('click', () => current?.interrupt());
ui.mute.addEventListener('click', () => current?.setMuted(!current.muted));
ui.enableAudio.addEventListener('click', () => current?.room?.startAudio().catch(() => {}));
ui.form.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = ui.input.value.trim();
  if (text && current?.sendText(text)) ui.input.value = '';
});
ui.input.addEventListener('input', () => current?.noteTyping());
// `pagehide` fires on tab close, navigation and bfcache entry on every browser (unlike `unload`).
window.addEventListener('pagehide', () => current?.leavePage());

setStage('idle', 'The agent will appear here.');
requestAnimationFrame(animate);
