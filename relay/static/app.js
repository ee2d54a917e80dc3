// <avatar-relay>: the relay's conversation widget, one custom element (docs/embedding.md). The relay's own page is
// this same element (index.html), and any website embeds it with one tag through /embed.js.
//
// Start (a user gesture, so the browser lets us use the microphone and play sound) opens the socket to the relay,
// sends `start` (with the host site's token, from `token-url` or `tokenProvider`), and captures the microphone through
// an AudioWorklet that resamples to the agent's input rate. After `ready` it sends PCM16 frames, shows the avatar (a
// LiveKit room, or the drawn face in demo mode, or the voice orb), plays the agent's audio frames gaplessly, and keeps
// live captions. Every way a conversation ends leads to `finish()`, which releases the microphone, the audio graph,
// the wake lock and the room and leaves the widget ready to start again. The widget never sends audio before `ready`
// and never shows raw HTML from the network.
//
// Everything lives in the element's shadow root (its own ids, its own styles): two widgets on one page never meet,
// the host page's CSS cannot break it and its CSS cannot leak out. Every relay message is re-dispatched on the element
// as `relay:<type>` (bubbling, composed), and `relay:state` follows `state`: idle → connecting → live ⇄ reconnecting
// → ended. Every word shown comes from i18n.js. `element.debug` (and `window.__relayDebug`, for the page's first
// widget) exposes what the widget is doing, for tests and for curious developers.

import { Activity, ApprovalDialog } from './activity.js';
import { Captions } from './captions.js';
import { SimulatedFace } from './face.js';
import { pickLanguage, translator } from './i18n.js';
import { joinAvatarRoom } from './livekit.js';
import { widgetMarkup } from './markup.js';
import { PcmPlayer } from './player.js';
import { Transcript } from './transcript.js';
import { TurnMeter, VideoWatch, captionOffset } from './turn-meter.js';

/** The relay this module was loaded from: the default of the `relay` attribute. */
export const RELAY_BASE = new URL('../', import.meta.url).href;
/** The values of `element.state`, in the order a conversation goes through them. */
export const STATES = Object.freeze(['idle', 'connecting', 'live', 'reconnecting', 'ended']);
/** Where the relay serves its own copy of livekit-client (relay.server.embed.LIVEKIT_CLIENT_PATH), relative to it. */
const LIVEKIT_CLIENT_PATH = 'vendor/livekit-client.esm.mjs';

const DEFAULT_CONFIG = { livekit_client_url: null, livekit_client_integrity: null, ws_path: '/ws', frame_ms: 60, avatars: {} };
const SEND_BUFFER_LIMIT = 256 * 1024; // bytes queued on the socket beyond which microphone frames are dropped
const STOP_GRACE_MS = 6000; // how long to wait for `ended` after sending `stop`
// Normal ends by the agent: the page plays out the agent's audio it already has before it tears down (voice-only and
// demo mode; an avatar's own speech is finished by the relay before it sends `ended`). Bounded like the relay's
// RELAY_FINISH_SPEAKING_TIMEOUT default.
const PLAY_OUT_REASONS = new Set(['agent_ended', 'max_duration']);
const PLAY_OUT_LIMIT_S = 15;
const ACTIVITY_EVERY_MS = 2000;
// How long after a numbered message the page tells the relay it has it (`ack`): the relay then forgets it instead of
// keeping it for a resume (up to 1 MiB per conversation otherwise). At most one `ack` per this interval: each costs
// the relay a frame's parse (at 1 s, 2-3% of a conversation's CPU; docs/performance.md round 14).
const ACK_AFTER_MS = 5000;
const MAX_DEBUG_MESSAGES = 400;
// Frames that are not kept in `received` one by one (they come up to ten times a second).
const NOISY = new Set(['vad_score']);

function freshDebug() {
  return {
    status: 'idle',
    statusText: '',
    state: 'idle',
    lang: 'en',
    conversationId: null,
    avatarSessionId: null,
    avatarMode: null,
    micState: 'off',
    micError: null,
    microphones: 0,
    muted: false,
    paused: false,
    wakeLock: false,
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
    states: [], // every state the widget went through
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
    avatarUnavailable: null,
    turnTimings: [], // every turn the page reported in `client_metrics` (turn-meter.js)
    clientMetricsSent: 0,
  };
}

// What is reset at each Start (the rest — state, lang, microphones — carries over).
const PER_CONVERSATION = ['conversationId', 'avatarSessionId', 'avatarMode', 'micState', 'micError', 'muted', 'paused',
  'framesSent', 'bytesSent', 'framesDropped', 'audioFramesReceived', 'maxOutputRms', 'mouthMoves', 'received', 'sent',
  'endedReason', 'error', 'toolResults', 'avatarUnavailable', 'captionLog', 'audioChunks', 'queueStatus', 'humanAgent',
  'agentTyping', 'vadScore', 'contextUsage', 'mcpIntegrations', 'approvals', 'turnTimings', 'clientMetricsSent'];

function record(list, type) {
  list.push(type);
  if (list.length > MAX_DEBUG_MESSAGES) list.splice(0, list.length - MAX_DEBUG_MESSAGES);
}

function micProblem(t, err) {
  switch (err?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return t('notice.mic_refused');
    case 'NotFoundError':
    case 'OverconstrainedError':
      return t('notice.mic_missing');
    case 'NotReadableError':
    case 'AbortError':
      return t('notice.mic_busy');
    default:
      return t('notice.mic_other', { detail: err?.name || 'unknown error' });
  }
}

/** iOS Safari (and any browser with a strict autoplay policy) lets a page make sound only once audio has started
 * inside a user gesture: play one silent sample now, synchronously in the tap that pressed Start. */
function unlockAudio(context) {
  try {
    const source = context.createBufferSource();
    source.buffer = context.createBuffer(1, 1, context.sampleRate);
    source.connect(context.destination);
    source.start(0);
  } catch {
    // A context that cannot play even that reports it when the conversation's audio starts.
  }
}

// A W3C Trace Context `traceparent` as the relay accepts it (version 00, lowercase hex, ids not all zeros).
const TRACEPARENT = /^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$/;

// A token in the relay page's URL fragment (#token=…, which browsers never send to a server) is taken out of the
// address bar and the history as soon as a widget of that relay sees it, and kept in memory for the page's
// conversations.
let fragmentToken = null;

function takeFragmentToken() {
  const location = globalThis.location;
  const params = new URLSearchParams(String(location?.hash ?? '').slice(1));
  if (!params.has('token')) return fragmentToken;
  fragmentToken = params.get('token') || fragmentToken;
  params.delete('token');
  const rest = params.toString();
  globalThis.history?.replaceState?.(globalThis.history.state, '', location.pathname + location.search + (rest ? `#${rest}` : ''));
  return fragmentToken;
}

/** The widget's stylesheet, fetched once per page and adopted by every widget's shadow root: a constructed
 * stylesheet needs no `style-src` in the host page's CSP (a <link> or <style> in the shadow root would). */
let sharedSheet = null;
function widgetSheet() {
  sharedSheet ??= fetch(new URL('./widget.css', import.meta.url), { cache: 'no-cache' })
    .then((response) => (response.ok ? response.text() : Promise.reject(new Error(`HTTP ${response.status}`))))
    .then((text) => {
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(text);
      return sheet;
    });
  return sharedSheet;
}

function setMeter(meter, level) {
  const value = Math.min(1, level * 4);
  meter.firstElementChild.style.transform = `scaleX(${value.toFixed(3)})`;
  const rounded = String(Math.round(value * 10) * 10);
  if (meter.getAttribute('aria-valuenow') !== rounded) meter.setAttribute('aria-valuenow', rounded);
}

const BaseElement = globalThis.HTMLElement ?? class {};

export class AvatarRelayElement extends BaseElement {
  static observedAttributes = ['lang'];

  constructor() {
    super();
    /** A function returning a promise of a token, for sites that mint tokens their own way (wins over token-url). */
    this.tokenProvider = null;
    /** Client tools the agent may call: {name: async (parameters, {toolCallId, toolName}) => result}. */
    this.tools = null;
    /** @type {Conversation | null} */
    this.current = null;
    this.debug = freshDebug();
    Object.defineProperty(this.debug, 'wsState', {
      enumerable: true,
      get: () => {
        const ws = this.current?.ws;
        return ws ? ['connecting', 'open', 'closing', 'closed'][ws.readyState] : 'none';
      },
    });
    // The audio graph for measurements (not enumerable: JSON snapshots of the debug object leave it out).
    Object.defineProperty(this.debug, 'audio', {
      enumerable: false,
      get: () => (this.current?.player ? { context: this.current.context, analyser: this.current.player.analyser, player: this.current.player } : null),
    });
    this.ui = null;
    this.frame = 0;
    this.wakeLock = null;
    this.micDeviceId = null;
    this.configPromise = null;
    this.onVisibility = () => this.visibilityChanged();
    this.onPageHide = () => this.current?.leavePage();
  }

  // ---------------------------------------------------------------------------------------------------------------
  // The public interface (docs/embedding.md, embed.d.ts)

  /** `idle`, `connecting`, `live`, `reconnecting` or `ended`. */
  get state() {
    return this.debug.state;
  }

  /** Start a conversation (best from a user gesture: the browser then lets it use the microphone and play sound). */
  start() {
    this.startConversation();
  }

  /** End the conversation (the relay is told; the widget is ready to start again). */
  stop() {
    this.current?.stop();
  }

  /** Send a typed message; false when no conversation is live. */
  sendText(text) {
    const value = String(text ?? '').trim();
    return Boolean(value && this.current?.sendText(value));
  }

  /** Cut the agent's reply short. */
  interrupt() {
    this.current?.interrupt();
  }

  /** Mute (true) or unmute (false) the microphone; the agent hears silence while muted. */
  mute(on = true) {
    if (this.current && !this.current.finished) this.current.setMuted(Boolean(on));
  }

  // ---------------------------------------------------------------------------------------------------------------
  // Lifecycle

  connectedCallback() {
    if (!this.ui) this.render();
    if (!globalThis.window.__relayDebug || this.hasAttribute('debug')) {
      globalThis.window.__relayDebug = this.debug;
      globalThis.window.__relayRoot = this.shadowRoot;
    }
    if (this.onRelayPage()) takeFragmentToken(); // out of the address bar at once, not at Start
    document.addEventListener('visibilitychange', this.onVisibility);
    // `pagehide` fires on tab close, navigation and bfcache entry on every browser (unlike `unload`).
    globalThis.window.addEventListener('pagehide', this.onPageHide);
    if (!this.frame) this.frame = requestAnimationFrame((now) => this.animate(now));
  }

  disconnectedCallback() {
    document.removeEventListener('visibilitychange', this.onVisibility);
    globalThis.window.removeEventListener('pagehide', this.onPageHide);
    this.current?.leavePage();
    if (this.frame) globalThis.cancelAnimationFrame?.(this.frame);
    this.frame = 0;
  }

  attributeChangedCallback(name, previous, value) {
    // A new language redraws the widget between conversations (a live one keeps its words until it ends).
    if (name === 'lang' && this.ui && previous !== value && !(this.current && !this.current.finished)) this.render();
  }

  /** The widget's language: its `lang`, else the page's (the nearest `lang` around it), else the browser's. */
  language() {
    const around = this.parentElement?.closest?.('[lang]')?.getAttribute('lang');
    const browser = globalThis.navigator?.languages ?? [globalThis.navigator?.language];
    return pickLanguage(this.getAttribute('lang'), around, document.documentElement?.getAttribute('lang'), browser);
  }

  render() {
    this.t = translator(this.language());
    this.debug.lang = this.t.lang;
    const shadow = this.shadowRoot ?? this.attachShadow({ mode: 'open' });
    if ('adoptedStyleSheets' in shadow && typeof CSSStyleSheet === 'function') {
      // Transparent until the stylesheet is there, so the host page never shows the widget unstyled (but still in
      // the tab order: a keyboard user's first Tab may come before the stylesheet).
      const hide = new CSSStyleSheet();
      hide.replaceSync(':host { opacity: 0; }');
      if (!shadow.adoptedStyleSheets.length) shadow.adoptedStyleSheets = [hide];
      widgetSheet().then((sheet) => { shadow.adoptedStyleSheets = [sheet]; }, (err) => {
        console.warn('avatar-relay: the widget stylesheet could not be loaded', err);
        shadow.adoptedStyleSheets = [];
      });
    }
    shadow.innerHTML = widgetMarkup(this.t);
    const $ = (id) => shadow.getElementById(id);
    const ui = {
      start: $('start'), stop: $('stop'), mute: $('mute'), interrupt: $('interrupt'), status: $('status'),
      statusText: $('status-text'), notice: $('notice'), enableAudio: $('enable-audio'), form: $('text-form'),
      input: $('text-input'), send: $('send'), micMeter: $('mic-meter'), outMeter: $('out-meter'),
      micChoice: $('mic-choice'), micSelect: $('mic-select'), stage: $('stage'), stageLabel: $('stage-label'),
      face: $('sim-face'), orb: $('voice-orb'), video: $('avatar-video'), audio: $('avatar-audio'),
      transcript: $('transcript'), subtitle: $('subtitle'), activity: $('activity'), approval: $('approval'),
    };
    this.ui = ui;
    const t = this.t;
    this.transcript = new Transcript(ui.transcript, t);
    this.transcript.onFeedback = (eventId, score) => Boolean(this.current && this.current.ready && !this.current.finished
      && this.current.sendJson({ type: 'feedback', score, event_id: eventId }));
    this.face = new SimulatedFace(ui.face);
    this.captions = new Captions(this.transcript, ui.subtitle, this.debug);
    this.captions.label = t('who.agent');
    this.activity = new Activity(ui.activity, this.transcript, t);
    this.approval = new ApprovalDialog(ui.approval, (toolCallId, approved, how) => {
      const sent = approved !== null && Boolean(this.current && this.current.ready && !this.current.finished
        && this.current.sendJson({ type: 'mcp_approval', tool_call_id: toolCallId, approved }));
      this.debug.approvals.push({ tool_call_id: toolCallId, approved, how, sent });
      if (approved !== null) this.transcript.system(t(approved ? 'note.approved' : 'note.denied'), 'tool');
      return sent;
    }, t);
    // The skip link's target is in the shadow root, where a fragment link cannot reach: move the focus there.
    shadow.getElementById('skip-link').addEventListener('click', (event) => {
      event.preventDefault();
      shadow.getElementById('captions').focus();
    });
    ui.start.addEventListener('click', () => this.startConversation());
    ui.stop.addEventListener('click', () => this.current?.stop());
    ui.interrupt.addEventListener('click', () => this.current?.interrupt());
    ui.mute.addEventListener('click', () => this.current?.setMuted(!this.current.muted));
    ui.enableAudio.addEventListener('click', () => {
      this.current?.context.resume().catch(() => {});
      this.current?.room?.startAudio().catch(() => {});
      if (!this.current?.room) ui.enableAudio.hidden = true;
    });
    ui.micSelect.addEventListener('change', () => {
      this.micDeviceId = ui.micSelect.value || null;
      this.current?.switchMicrophone(this.micDeviceId);
    });
    ui.form.addEventListener('submit', (event) => {
      event.preventDefault();
      const text = ui.input.value.trim();
      if (text && this.current?.sendText(text)) ui.input.value = '';
    });
    ui.input.addEventListener('input', () => this.current?.noteTyping());
    this.debug.status = '';
    this.setStatus('idle', t('status.idle'));
    this.setStage('idle', t('stage.idle'));
  }

  // ---------------------------------------------------------------------------------------------------------------
  // What the conversation needs from its widget

  get voiceOnly() {
    return this.hasAttribute('voice-only');
  }

  /** The relay's base URL: the `relay` attribute, else the origin this module came from. */
  relayBase() {
    const attribute = this.getAttribute('relay');
    return attribute ? new URL(attribute, document.baseURI || globalThis.location?.href).href : RELAY_BASE;
  }

  /** Whether this widget is on its relay's own origin (the relay's page): only there is a #token= fragment meant
   * for it. */
  onRelayPage() {
    return new URL(this.relayBase()).origin === globalThis.location?.origin;
  }

  /** Whether livekit-client's `url` (client-config.json's) is the relay's own copy (`vendor/…`, resolved against the
   * relay) rather than an operator's RELAY_LIVEKIT_CLIENT_URL. */
  relayCopy(url) {
    return Boolean(url) && new URL(url, this.relayBase()).href === new URL(LIVEKIT_CLIENT_PATH, this.relayBase()).href;
  }

  /** The relay's client-config.json (fetched once per widget; the defaults if it cannot be read). */
  config() {
    this.configPromise ??= fetch(new URL('client-config.json', this.relayBase()).href, { cache: 'no-store' })
      .then((response) => (response.ok ? response.json() : DEFAULT_CONFIG))
      .then((config) => ({ ...DEFAULT_CONFIG, ...config }))
      .catch(() => DEFAULT_CONFIG);
    return this.configPromise;
  }

  /** The token for this conversation: `tokenProvider()`, else the `token-url` endpoint of the host site (fetched with
   * the page's credentials; `{"token": "…"}` from a JSON answer, else the body as text), else none. A JSON answer's
   * `traceparent` (the site's trace of minting it) is kept for `start`. */
  async token() {
    this.tokenTraceparent = null;
    if (typeof this.tokenProvider === 'function') {
      const token = await this.tokenProvider();
      if (typeof token !== 'string' || !token) throw new Error('tokenProvider gave no token');
      return token;
    }
    const tokenUrl = this.getAttribute('token-url');
    if (!tokenUrl) return null;
    const response = await fetch(new URL(tokenUrl, document.baseURI || globalThis.location?.href).href, {
      credentials: 'same-origin', cache: 'no-store', headers: { accept: 'application/json, text/plain' },
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const body = await response.text();
    let token = body.trim();
    if ((response.headers?.get?.('content-type') ?? '').includes('json')) {
      const parsed = JSON.parse(body);
      token = typeof parsed === 'string' ? parsed : parsed?.token;
      if (typeof parsed?.traceparent === 'string') this.tokenTraceparent = parsed.traceparent;
    }
    if (typeof token !== 'string' || !token) throw new Error('the answer held no token');
    return token;
  }

  socketUrl(path) {
    const url = new URL(path || '/ws', this.relayBase());
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url.href;
  }

  /** The `start` frame: `dynamic-variables` (JSON), `traceparent` (the website's trace: the conversation's trace
   * becomes its child) and the token; a page may also set window.relayStart = {dynamic_variables, overrides, user_id,
   * token, traceparent} before Start, and the relay's own page takes a token from its URL fragment (#token=…, which
   * browsers never send to a server). The token endpoint's `traceparent` wins over the attribute, which wins over
   * relayStart's. A traceparent that is not W3C's version 00 is left out, with a warning. */
  startFrame(token) {
    const options = globalThis.window.relayStart && typeof globalThis.window.relayStart === 'object'
      ? globalThis.window.relayStart : {};
    const frame = { type: 'start' };
    for (const key of ['dynamic_variables', 'overrides', 'user_id', 'token', 'traceparent']) {
      if (options[key] !== undefined && options[key] !== null) frame[key] = options[key];
    }
    const variables = this.getAttribute('dynamic-variables');
    if (variables) {
      try {
        const parsed = JSON.parse(variables);
        if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) frame.dynamic_variables = { ...frame.dynamic_variables, ...parsed };
      } catch {
        console.warn('avatar-relay: the dynamic-variables attribute is not JSON; ignored');
      }
    }
    const traceparent = this.tokenTraceparent || this.getAttribute('traceparent');
    if (traceparent) frame.traceparent = traceparent;
    if (frame.traceparent !== undefined && !TRACEPARENT.test(String(frame.traceparent))) {
      console.warn('avatar-relay: traceparent is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>); left out');
      delete frame.traceparent;
    }
    if (token) frame.token = token;
    if (this.onRelayPage()) {
      const fromFragment = takeFragmentToken();
      if (frame.token === undefined && fromFragment) frame.token = fromFragment;
    }
    return frame;
  }

  clientTools() {
    const tools = this.tools ?? globalThis.window.relayTools;
    return tools && typeof tools === 'object' ? tools : {};
  }

  /** Words for a reason code (`ended.reason`, `error.code`), or `fallback`'s words (null: none). */
  reasonWords(code, fallback) {
    const key = `reason.${code}`;
    const words = this.t(key);
    if (words !== key) return words;
    return fallback === null ? null : this.t(fallback);
  }

  setState(state) {
    if (this.debug.state === state) return;
    const previous = this.debug.state;
    this.debug.state = state;
    record(this.debug.states, state);
    this.dataset.state = state;
    this.dispatchEvent(new CustomEvent('relay:state', { detail: { state, previous }, bubbles: true, composed: true }));
  }

  setStatus(state, text) {
    if (this.debug.status === state && this.debug.statusText === text) return;
    this.debug.status = state;
    this.debug.statusText = text;
    this.ui.status.dataset.state = state;
    this.ui.statusText.textContent = text;
  }

  showNotice(text, kind = 'warning') {
    this.debug.notice = text;
    this.ui.notice.textContent = text;
    this.ui.notice.dataset.kind = kind;
    this.ui.notice.hidden = false;
  }

  hideNotice() {
    this.debug.notice = null;
    this.ui.notice.hidden = true;
    this.ui.notice.textContent = '';
  }

  setStage(mode, label = '') {
    this.ui.stage.dataset.mode = mode;
    // An <svg> is not an HTMLElement: it has no `hidden` property, only the attribute.
    this.ui.face.toggleAttribute('hidden', mode !== 'simulated');
    this.ui.video.hidden = mode !== 'video';
    this.ui.stageLabel.textContent = label;
    this.debug.avatarMode = mode;
  }

  setControls({ running, ready, mic }) {
    const { ui } = this;
    ui.start.disabled = running;
    ui.stop.disabled = !running;
    ui.interrupt.disabled = !ready;
    ui.mute.disabled = !(ready && mic);
    ui.input.disabled = !ready;
    ui.send.disabled = !ready;
  }

  /** Show the microphone picker when the browser has more than one microphone (labels are known once one is open). */
  async listMicrophones(track) {
    const devices = await navigator.mediaDevices?.enumerateDevices?.().catch(() => []) ?? [];
    const inputs = devices.filter((device) => device.kind === 'audioinput' && device.deviceId
      && device.deviceId !== 'default' && device.deviceId !== 'communications');
    this.debug.microphones = inputs.length;
    const { micSelect, micChoice } = this.ui;
    const using = track?.getSettings?.().deviceId ?? this.micDeviceId;
    micSelect.replaceChildren(...inputs.map((device, index) => {
      const option = document.createElement('option');
      option.value = device.deviceId;
      option.textContent = device.label || this.t('mic.unnamed', { n: index + 1 });
      option.selected = device.deviceId === using;
      return option;
    }));
    micChoice.hidden = inputs.length < 2;
  }

  /** Keep the screen on while a conversation is live (phones dim and lock otherwise); the browser drops the lock
   * when the page is hidden, so it is asked again when the page comes back. */
  async holdWakeLock() {
    if (this.wakeLock || !navigator.wakeLock?.request || document.visibilityState === 'hidden') return;
    try {
      const lock = await navigator.wakeLock.request('screen');
      if (!this.current || this.current.finished) {
        lock.release().catch(() => {});
        return;
      }
      this.wakeLock = lock;
      this.debug.wakeLock = true;
      lock.addEventListener('release', () => {
        if (this.wakeLock === lock) this.wakeLock = null;
        this.debug.wakeLock = Boolean(this.wakeLock);
      });
    } catch {
      // Refused (battery saver, a frame without permission): the conversation goes on without it.
    }
  }

  releaseWakeLock() {
    const lock = this.wakeLock;
    this.wakeLock = null;
    this.debug.wakeLock = false;
    lock?.release().catch(() => {});
  }

  visibilityChanged() {
    const conversation = this.current && !this.current.finished ? this.current : null;
    if (!conversation) return;
    conversation.setPaused(document.visibilityState === 'hidden');
    conversation.video?.reset(); // a hidden page draws no frames: not a freeze
    if (document.visibilityState === 'visible' && conversation.ready) this.holdWakeLock();
  }

  startConversation() {
    if (this.current && !this.current.finished) return;
    this.hideNotice();
    this.transcript.clear();
    this.captions.clear();
    this.activity.clear();
    this.captions.label = this.t('who.agent');
    const fresh = freshDebug();
    for (const key of PER_CONVERSATION) this.debug[key] = fresh[key];
    let conversation;
    try {
      conversation = new Conversation(this);
    } catch (err) {
      this.setStatus('error', this.t('status.no_audio', { detail: err?.message ?? err }));
      return;
    }
    this.current = conversation;
    conversation.setMuted(false);
    this.setState('connecting');
    conversation.begin().catch((err) => {
      conversation.errorMessage = this.t('notice.connect_failed', { detail: err?.message ?? err });
      conversation.finish('connection_lost');
    });
  }

  /** Called on every animation frame while the widget is on the page. */
  animate(now) {
    const conversation = this.current && !this.current.finished ? this.current : null;
    const { debug, ui } = this;
    const level = conversation?.player ? conversation.player.level() : 0;
    debug.outputRms = level;
    if (level > debug.maxOutputRms) debug.maxOutputRms = level;
    const wasOpen = debug.mouthOpen;
    this.face.tick(now, debug.avatarMode === 'simulated' ? level : 0);
    debug.mouthOpen = this.face.mouthOpen;
    debug.mouthOpenness = this.face.openness;
    debug.lastMouthMoveAt = this.face.lastMouthMoveAt;
    if (debug.mouthOpen && !wasOpen) {
      debug.mouthMoves += 1;
      if (debug.avatarMode === 'simulated') conversation?.meter.mouthMoved(now); // the drawn face's mouth
    }
    conversation?.video?.tick(now);
    ui.orb.style.setProperty('--level', Math.min(1, level * 5).toFixed(3));
    setMeter(ui.outMeter, level);
    setMeter(ui.micMeter, conversation ? debug.inputRms : 0);
    conversation?.updateStatus();
    this.captions.tick();
    this.frame = requestAnimationFrame((time) => this.animate(time));
  }
}

/** One conversation of a widget, from Start to `finish()`. */
class Conversation {
  /** @param {AvatarRelayElement} widget */
  constructor(widget) {
    this.w = widget;
    // Created inside the click handler: the user gesture is what lets the context play sound (on iOS Safari only
    // once something has started playing in that gesture: `unlockAudio`).
    this.context = new AudioContext({ latencyHint: 'interactive' });
    this.context.resume().catch(() => {});
    unlockAudio(this.context);
    this.config = DEFAULT_CONFIG;
    this.ws = null;
    this.ready = null;
    this.player = null;
    this.capture = null;
    this.room = null;
    this.muted = false;
    this.paused = false; // the page is hidden: the microphone is paused (the agent hears silence)
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
    this.ackedSeq = 0; // the newest `seq` the relay was told the page has
    this.ackTimer = 0;
    this.reconnect = null; // { deadline, delay, timer } while reconnecting
    this.onOnline = () => this.retryNow();
    // The browser says the network is gone (Wi-Fi to mobile, a lid closed): the old connection cannot survive a new
    // address, so stop waiting for TCP to notice and resume as soon as the network is back.
    this.onOffline = () => this.connectionLost();
    window.addEventListener('offline', this.onOffline);
    // What each turn felt like here (turn-meter.js), reported to the relay as `client_metrics`.
    this.meter = new TurnMeter({ send: (message) => this.sendJson(message), debug: widget.debug,
      captionOffset: (eventId) => captionOffset(widget.debug.captionLog, eventId) });
    this.video = null; // the avatar's <video> watched for freezes and its first frame of a turn (VideoWatch)
  }

  async begin() {
    const t = this.w.t;
    this.w.setStatus('connecting', t('status.connecting'));
    this.w.setStage('idle', t('stage.connecting'));
    this.w.setControls({ running: true, ready: false, mic: false });
    this.openMicrophone().catch((err) => {
      this.microphoneUnavailable(t('notice.mic_other', { detail: err?.message ?? err }), err?.name ?? 'Error');
    });
    let token;
    try {
      [this.config, token] = await Promise.all([this.w.config(), this.w.token()]);
    } catch (err) {
      if (this.finished) return;
      this.errorMessage = String(err?.message ?? err);
      this.w.showNotice(t('notice.token_failed', { detail: this.errorMessage }), 'error');
      this.finish('token_failed');
      return;
    }
    if (this.finished) return;
    this.openSocket(this.w.startFrame(token));
  }

  /** Open the relay's WebSocket and send `first` (`start`, or `resume` when reconnecting) once it is open. */
  openSocket(first) {
    const url = new URL(this.w.socketUrl(this.config.ws_path));
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
    this.w.debug.reconnecting = true;
    this.w.setState('reconnecting');
    this.w.setStatus('reconnecting', this.w.t('status.reconnecting_relay'));
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
      this.errorMessage ??= this.w.t('notice.resume_window_over');
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
    this.w.debug.reconnecting = false;
    window.removeEventListener('online', this.onOnline);
  }

  onResumed(msg) {
    this.resumeToken = String(msg.resume_token ?? this.resumeToken);
    this.stopReconnecting();
    this.w.debug.resumes = (this.w.debug.resumes ?? 0) + 1;
    this.w.setState('live');
    this.refreshControls();
  }

  async openMicrophone() {
    if (!navigator.mediaDevices?.getUserMedia) {
      this.microphoneUnavailable(this.w.t('notice.mic_insecure'), 'Unsupported');
      return;
    }
    this.w.debug.micState = 'asking';
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: this.microphoneConstraints(this.w.micDeviceId),
      });
    } catch (err) {
      this.microphoneUnavailable(micProblem(this.w.t, err), err?.name ?? 'Error');
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
      this.microphoneUnavailable(this.w.t('notice.mic_worklet', { detail: err?.message ?? err }), 'WorkletError');
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
    this.w.listMicrophones(stream.getAudioTracks()[0]).catch(() => {});
    if (this.paused) this.setPaused(true);
    this.micAvailable = true;
    this.w.debug.micState = 'on';
    for (const track of stream.getAudioTracks()) {
      track.addEventListener('ended', () => {
        if (this.finished) return;
        this.w.debug.micState = 'lost';
        this.micAvailable = false;
        this.w.showNotice(this.w.t('notice.mic_lost'));
        this.refreshControls();
      });
    }
    if (this.ready) this.configureCapture();
    this.refreshControls();
  }

  microphoneUnavailable(message, name) {
    if (this.finished) return;
    this.w.debug.micState = 'unavailable';
    this.w.debug.micError = name;
    this.w.showNotice(message, 'error');
    this.refreshControls();
  }

  configureCapture() {
    this.capture.node.port.postMessage({
      type: 'configure', sampleRate: this.ready.input_audio.sample_rate, frameMs: this.config.frame_ms,
    });
  }

  refreshControls() {
    if (this.finished) return;
    this.w.setControls({ running: true, ready: Boolean(this.ready) && !this.stopping, mic: this.micAvailable });
  }

  onCaptureMessage(msg) {
    if (msg.type === 'level') {
      this.w.debug.inputRms = this.muted || this.paused ? 0 : msg.rms;
    } else if (msg.type === 'frame') {
      this.sendAudio(msg.pcm);
    }
  }

  /** What the microphone is asked for: the browser's echo cancellation, noise suppression and gain control on (the
   * agent's voice, played through this page, must not come back as the user's speech), from the chosen device. */
  microphoneConstraints(deviceId) {
    const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 };
    if (deviceId) audio.deviceId = { exact: deviceId };
    return audio;
  }

  /** The user picked another microphone: capture from it instead, through the same worklet. */
  async switchMicrophone(deviceId) {
    if (!this.capture || this.finished) return;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: this.microphoneConstraints(deviceId) });
    } catch (err) {
      this.w.showNotice(micProblem(this.w.t, err), 'error');
      return;
    }
    if (!this.capture || this.finished) {
      for (const track of stream.getTracks()) track.stop();
      return;
    }
    const old = this.capture;
    old.source.disconnect();
    for (const track of old.stream.getTracks()) track.stop();
    const source = this.context.createMediaStreamSource(stream);
    source.connect(old.node);
    this.capture = { stream, source, node: old.node };
    if (this.paused) this.setPaused(true);
  }

  /** The page was hidden (true) or shown again: the microphone pauses (its tracks are disabled, the agent hears
   * silence, the widget says so) and comes back. */
  setPaused(paused) {
    if (this.finished) return;
    this.paused = paused;
    this.w.debug.paused = paused;
    for (const track of this.capture?.stream.getAudioTracks() ?? []) track.enabled = !paused;
    if (paused && this.capture) this.w.showNotice(this.w.t('notice.mic_paused'), 'info');
    else if (!paused && this.w.debug.notice === this.w.t('notice.mic_paused')) this.w.hideNotice();
  }

  sendAudio(pcm) {
    const ws = this.ws;
    if (!this.ready || this.finished || this.stopping || !ws || ws.readyState !== WebSocket.OPEN) return;
    if (ws.bufferedAmount > SEND_BUFFER_LIMIT) {
      this.w.debug.framesDropped += 1;
      return;
    }
    // Muted still streams (silence), like ElevenLabs' own client: the agent's audio input never stalls.
    ws.send(this.muted || this.paused ? new ArrayBuffer(pcm.byteLength) : pcm);
    this.w.debug.framesSent += 1;
    this.w.debug.bytesSent += pcm.byteLength;
  }

  /** Tell the relay, ACK_AFTER_MS from now, the newest `seq` the page has then (one `ack` for whatever arrives
   *  meanwhile). Not sent while the socket is not open (reconnecting): the next message tries again. */
  ackSoon() {
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = 0;
      if (this.lastSeq > this.ackedSeq && this.sendJson({ type: 'ack', seq: this.lastSeq })) this.ackedSeq = this.lastSeq;
    }, ACK_AFTER_MS);
  }

  sendJson(message) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(message));
    record(this.w.debug.sent, message.type);
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
      this.w.dispatchEvent(new CustomEvent('relay:resumed', { detail: msg, bubbles: true, composed: true }));
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
      this.w.debug.lastSeq = msg.seq;
      this.ackSoon();
    }
    if (!NOISY.has(msg.type)) record(this.w.debug.received, msg.type);
    switch (msg.type) {
      case 'ready':
        this.onReady(msg);
        break;
      case 'user_transcript': {
        const final = msg.final !== false;
        this.w.transcript.user(msg.event_id, String(msg.text ?? ''), final);
        if (final) this.discardAgentAudio = false;
        if (final) this.meter.userStopped(); // the end of the user's speech, as the relay's transcript says
        break;
      }
      case 'agent_response_part':
        this.agentTurn(msg.event_id);
        this.w.captions.part(msg.event_id, String(msg.part ?? 'delta'), String(msg.text ?? ''));
        break;
      case 'agent_response':
        this.agentTurn(msg.event_id);
        this.meter.agentTurn(msg.event_id);
        this.w.captions.response(msg.event_id, String(msg.text ?? ''));
        this.w.activity.agentAnswered();
        break;
      case 'agent_alignment':
        this.agentTurn(msg.event_id);
        this.w.captions.alignment(msg);
        if (this.pagePlaysAudio) this.pendingAlignment = msg;
        break;
      case 'agent_response_correction':
        this.w.captions.correction(msg.event_id, String(msg.text ?? ''));
        break;
      case 'interruption':
        this.player?.flush();
        this.pendingAlignment = null;
        this.w.face.silence();
        this.w.captions.interruption(msg.event_id);
        break;
      case 'tool_status':
        this.w.activity.toolStatus(msg);
        break;
      case 'mcp_tool_call':
        this.w.activity.mcpToolCall(msg);
        this.w.approval.update(msg);
        break;
      case 'mcp_connection_status':
        this.w.debug.mcpIntegrations = Array.isArray(msg.integrations) ? msg.integrations : null;
        break;
      case 'queue_status':
        this.onQueueStatus(String(msg.status ?? ''));
        break;
      case 'guardrail_triggered':
        this.w.debug.guardrails = (this.w.debug.guardrails ?? 0) + 1;
        this.w.transcript.system(this.w.t('note.guardrail'));
        break;
      case 'human_agent':
        this.onHumanAgent(Boolean(msg.connected));
        break;
      case 'agent_typing':
        this.w.debug.agentTyping = Boolean(msg.typing);
        this.w.activity.typing(this.w.debug.agentTyping);
        break;
      case 'vad_score':
        this.w.debug.vadScore = typeof msg.score === 'number' ? msg.score : null;
        break;
      case 'context_usage':
        this.w.debug.contextUsage = msg;
        break;
      case 'tool_call':
        this.onToolCall(msg);
        break;
      case 'avatar_speaking': {
        const text = String(msg.text ?? '');
        const words = text.split(/\s+/).filter(Boolean).length;
        const duration = typeof msg.duration_ms === 'number' ? msg.duration_ms : words * 380;
        this.w.face.speakFor(duration);
        this.avatarSpeaks();
        // The avatar speaks in its own voice: time the captions by it unless the page plays the agent's audio.
        if (!this.pagePlaysAudio) this.w.captions.avatarSpeaking(msg.event_id ?? null, text, duration);
        break;
      }
      case 'avatar_state':
        this.w.face.setSpeaking(Boolean(msg.speaking));
        if (msg.speaking) this.avatarSpeaks();
        if (msg.speaking && !this.pagePlaysAudio) this.w.captions.avatarStarted(msg.event_id ?? null);
        break;
      case 'avatar_unavailable':
        this.onAvatarUnavailable(msg);
        break;
      case 'avatar_changed':
        this.onAvatarChanged(msg);
        break;
      case 'error': {
        this.errorMessage = String(msg.message ?? msg.code ?? 'error');
        this.w.debug.error = { code: msg.code ?? null, message: this.errorMessage };
        const words = this.w.reasonWords(msg.code, 'reason.other');
        this.w.showNotice(this.errorMessage && this.errorMessage !== msg.code
          ? this.w.t('notice.problem_detail', { words, detail: this.errorMessage }) : this.w.t('notice.problem', { words }), 'error');
        break;
      }
      case 'ended':
        this.ended(String(msg.reason ?? 'ended'));
        break;
      default:
        break;
    }
    // The host page follows everything the relay says (vad_score, context_usage, rich_content, …) as DOM events on
    // the element, bubbling out of the shadow root: element.addEventListener('relay:vad_score', (e) => e.detail.score).
    this.w.dispatchEvent(new CustomEvent(`relay:${msg.type}`, { detail: msg, bubbles: true, composed: true }));
  }

  /** A frame of agent turn `eventId` arrived: a newer turn lets its audio through again after an Interrupt. */
  agentTurn(eventId) {
    if (typeof eventId === 'number' && eventId > this.lastAgentEventId) {
      this.lastAgentEventId = eventId;
      this.discardAgentAudio = false;
    }
  }

  onQueueStatus(status) {
    this.w.debug.queueStatus = status;
    if (status === 'waiting') {
      this.w.activity.chip('queue', this.w.t('chip.queue_waiting'), 'queue', 'waiting');
      if (!this.ready) {
        this.w.setStatus('queued', this.w.t('status.queue_waiting'));
        this.w.setStage('idle', this.w.t('stage.queued'));
      }
    } else if (status === 'admitted') {
      this.w.activity.chip('queue', this.w.t('chip.queue_admitted'), 'queue', 'admitted', 3000);
      if (!this.ready) {
        this.w.setStatus('connecting', this.w.t('status.queue_admitted'));
        this.w.setStage('idle', this.w.t('stage.connecting'));
      }
    } else if (status === 'timed_out') {
      this.w.activity.remove('queue');
      this.w.showNotice(this.w.t('notice.queue_timed_out'), 'error');
    }
  }

  onHumanAgent(connected) {
    if (this.w.debug.humanAgent === connected) return;
    this.w.debug.humanAgent = connected;
    this.w.captions.label = this.w.t(connected ? 'who.human_agent' : 'who.agent');
    this.w.activity.human(connected);
    if (!connected) this.w.debug.agentTyping = false;
    this.w.transcript.system(this.w.t(connected ? 'note.human_joined' : 'note.human_left'), 'human');
  }

  onReady(msg) {
    if (this.ready || this.finished) return;
    this.ready = msg;
    this.resumeToken = typeof msg.resume_token === 'string' ? msg.resume_token : null;
    this.resumeWindowS = typeof msg.resume_window === 'number' ? msg.resume_window : 0;
    this.w.debug.conversationId = msg.conversation_id ?? null;
    this.w.debug.avatarSessionId = msg.avatar?.session_id ?? null;
    this.player = new PcmPlayer(this.context, msg.output_audio?.sample_rate ?? 16000);
    if (this.capture) this.configureCapture();
    this.refreshControls();
    this.w.setState('live');
    this.w.holdWakeLock();
    const avatar = msg.avatar;
    if (!avatar) {
      this.w.setStage('voice', this.w.t('stage.voice'));
    } else if (avatar.simulated) {
      this.w.setStage(this.w.voiceOnly ? 'voice' : 'simulated', this.w.t('stage.demo'));
    } else {
      // The avatar plays the agent's voice: captions follow its avatar_state / avatar_speaking.
      this.pagePlaysAudio = false;
      this.w.setStage(this.w.voiceOnly ? 'voice' : 'loading', this.w.t(this.w.voiceOnly ? 'stage.voice' : 'stage.loading'));
      this.joinRoom(avatar);
    }
    this.w.ui.input.focus({ preventScroll: true });
  }

  async joinRoom(avatar) {
    if (!this.config.livekit_client_url) {
      this.w.showNotice(this.w.t('notice.no_livekit'), 'error');
      this.w.setStage('voice', this.w.t('stage.video_unavailable'));
      return;
    }
    try {
      const room = await joinAvatarRoom({
        // Relative to the relay (its own copy is `vendor/…`), not to the host page.
        moduleUrl: new URL(this.config.livekit_client_url, this.w.relayBase()).href,
        // An operator's URL (RELAY_LIVEKIT_CLIENT_URL) is checked against its integrity before it runs; the relay's
        // own copy is checked by the relay at start-up and imported as it is (no blob: in the host page's CSP).
        integrity: this.w.relayCopy(this.config.livekit_client_url) ? null : this.config.livekit_client_integrity || null,
        avatar,
        participant: this.config.avatars?.[avatar.provider]?.participant ?? null,
        video: this.w.ui.video,
        audio: this.w.ui.audio,
        onAudioBlocked: (blocked) => {
          this.w.ui.enableAudio.hidden = !blocked || this.finished;
        },
        onVideo: () => {
          if (!this.finished && !this.w.voiceOnly) this.w.setStage('video', '');
          if (!this.finished && !this.video) this.video = new VideoWatch(this.w.ui.video, (ms) => this.meter.freeze(ms));
        },
        onReconnecting: () => {
          if (!this.finished) this.w.setState('reconnecting');
        },
        onReconnected: () => {
          if (!this.finished && !this.reconnect) this.w.setState('live'); // not while the relay's socket resumes
        },
        onDisconnected: (reason) => {
          if (this.finished) return;
          if (this.w.state === 'reconnecting' && !this.reconnect) this.w.setState('live');
          this.w.setStage('voice', this.w.t('stage.avatar_disconnected'));
          this.w.showNotice(this.w.t('notice.avatar_closed', { detail: reason }));
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
      this.w.showNotice(this.w.t('notice.avatar_load_failed', { detail: err?.message ?? err }), 'error');
      this.w.setStage('voice', this.w.t('stage.video_unavailable'));
    }
  }

  /** `avatar_changed`: the avatar died and another replaced it (same shape as `ready.avatar`). Leave the old
   * room and join the new one, without a reload; until its video shows, the agent's voice the relay sends plays
   * here, and the captions go on. In demo mode the drawn face changes (the next face of the set). */
  onAvatarChanged(msg) {
    const avatar = msg.avatar;
    if (!this.ready || this.finished || !avatar) return;
    const reason = String(msg.reason ?? 'session_ended');
    const debug = this.w.debug;
    debug.avatarSessionId = avatar.session_id ?? null;
    debug.avatarChanges = (debug.avatarChanges ?? 0) + 1;
    this.w.transcript.system(this.w.t('note.avatar_changed', { reason }));
    const room = this.room;
    this.room = null;
    room?.leave().catch(() => {});
    if (avatar.simulated) {
      this.w.ui.face.dataset.variant = String(debug.avatarChanges % 3);
      this.w.setStage(this.w.voiceOnly ? 'voice' : 'simulated', this.w.t('stage.demo'));
      return;
    }
    this.pagePlaysAudio = false;
    this.w.setStage('loading', this.w.t('stage.loading_new'));
    this.joinRoom(avatar);
  }

  onAvatarUnavailable(msg) {
    const reason = String(msg.reason ?? 'upstream_error');
    const message = String(msg.message ?? '');
    this.w.debug.avatarUnavailable = reason;
    this.w.showNotice(this.w.t('notice.avatar_unavailable', { message }));
    this.w.transcript.system(this.w.t('note.avatar_unavailable', { reason }));
    this.w.face.silence();
    this.pagePlaysAudio = true;
    this.w.setStage('voice', this.w.t('stage.avatar_unavailable'));
    const room = this.room;
    this.room = null;
    this.w.ui.enableAudio.hidden = true;
    room?.leave().catch(() => {});
  }

  /** The avatar's speaking signal: the next video frame it presents is its mouth moving (it speaks in its own video:
   * that is when the user hears it too). The drawn face of demo mode is timed by the widget's animation instead. */
  avatarSpeaks() {
    if (!this.pagePlaysAudio) this.video?.nextFrame((at) => this.meter.mouthMoved(at, true));
  }

  onAgentAudio(data) {
    this.w.debug.audioFramesReceived += 1;
    const alignment = this.pendingAlignment;
    this.pendingAlignment = null;
    if (!this.player || this.discardAgentAudio || this.finished || this.stopping) return;
    const scheduled = this.player.enqueue(data);
    if (!scheduled) return;
    this.meter.audioHeard(alignment ? alignment.event_id : this.lastAgentEventId, scheduled.heardAt);
    if (alignment) {
      this.w.captions.chunkScheduled(alignment, scheduled.heardAt);
      this.w.debug.audioChunks.push({
        eventId: alignment.event_id, offsetMs: Number(alignment.offset_ms) || 0, start: scheduled.start,
        duration: scheduled.duration, heardAt: scheduled.heardAt,
      });
      if (this.w.debug.audioChunks.length > MAX_DEBUG_MESSAGES) this.w.debug.audioChunks.splice(0, this.w.debug.audioChunks.length - MAX_DEBUG_MESSAGES);
    } else {
      this.w.captions.unaligned(this.lastAgentEventId);
    }
  }

  async onToolCall(msg) {
    const name = String(msg.tool_name ?? '');
    const parameters = msg.parameters && typeof msg.parameters === 'object' ? msg.parameters : {};
    this.w.transcript.system(this.w.t('note.tool_call', { name, parameters: JSON.stringify(parameters) }), 'tool');
    const tools = this.w.clientTools();
    const handler = Object.prototype.hasOwnProperty.call(tools, name) ? tools[name] : undefined;
    let result;
    let isError;
    if (typeof handler === 'function') {
      try {
        result = await handler(parameters, { toolCallId: msg.tool_call_id, toolName: name });
        if (result === undefined) result = '';
        isError = false;
      } catch (err) {
        result = this.w.t('tool.failed', { name, detail: err?.message ?? err });
        isError = true;
      }
    } else {
      result = this.w.t('tool.no_handler', { name });
      isError = true;
    }
    this.w.debug.toolResults.push({ tool_call_id: msg.tool_call_id, tool_name: name, result, is_error: isError });
    this.sendJson({ type: 'tool_result', tool_call_id: msg.tool_call_id, result, is_error: isError });
  }

  sendText(text) {
    if (!this.ready || this.finished) return false;
    if (!this.sendJson({ type: 'text', text })) return false;
    this.meter.userStopped(); // a typed message ends the user's turn as it is sent
    this.w.transcript.typed(text);
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
    this.w.captions.cutAll();
    this.w.face.silence();
    // Audio of the interrupted reply may still be in flight from the relay: drop it until the next turn starts.
    this.discardAgentAudio = true;
  }

  setMuted(muted) {
    this.muted = muted;
    this.w.debug.muted = muted;
    this.w.ui.mute.setAttribute('aria-pressed', String(muted));
    this.w.ui.mute.textContent = this.w.t(muted ? 'button.unmute' : 'button.mute');
  }

  stop() {
    if (this.finished || this.stopping) return;
    this.stopping = true;
    this.w.setStatus('ending', this.w.t('status.ending'));
    this.player?.flush();
    this.w.face.silence();
    this.refreshControls();
    this.w.ui.stop.disabled = true;
    this.meter.close(); // the last timings go before `stop`
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
    this.meter.close();
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
    this.w.debug.playingOut = left;
    this.stopCapture();
    this.w.setStatus('ending', this.w.t('status.finishing'));
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
    this.meter.close(); // sent if the socket is still open (an `ended` from the relay), else dropped
    this.video?.stop();
    this.stopReconnecting();
    window.removeEventListener('offline', this.onOffline);
    clearTimeout(this.stopTimer);
    clearTimeout(this.playOutTimer);
    clearTimeout(this.ackTimer);
    this.w.debug.playingOut = null;
    this.w.debug.endedReason = reason;
    const ws = this.ws;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
    this.player?.close();
    this.stopCapture();
    this.w.debug.micState = this.w.debug.micState === 'unavailable' ? 'unavailable' : 'off';
    this.w.debug.inputRms = 0;
    this.room?.leave().catch(() => {});
    this.room = null;
    this.w.ui.video.srcObject = null;
    this.w.releaseWakeLock();
    this.w.ui.enableAudio.hidden = true;
    this.context.close().catch(() => {});
    this.w.face.silence();
    this.w.captions.finishAll();
    this.w.approval.reset();
    this.w.activity.clear();
    const label = this.w.reasonWords(reason, null) ?? reason.replaceAll('_', ' ');
    const failed = this.errorMessage !== null && reason !== 'client_stop' && !PLAY_OUT_REASONS.has(reason);
    if (failed) this.w.setStatus('error', this.w.t('status.failed', { reason: label, detail: this.errorMessage }));
    else this.w.setStatus('ended', this.w.t('status.ended', { reason: label }));
    this.w.setStage('idle', this.w.t('stage.again'));
    this.w.setState('ended');
    this.w.setControls({ running: false, ready: false, mic: false });
    this.setMuted(false);
    if (this.w.current === this) this.w.ui.start.focus({ preventScroll: true });
  }

  /** Called on every animation frame while this conversation is live. */
  updateStatus() {
    if (!this.ready || this.finished || this.stopping) return;
    if (this.reconnect) {
      this.w.setStatus('reconnecting', this.w.t('status.reconnecting_relay'));
      return;
    }
    if (this.w.state === 'reconnecting') {
      this.w.setStatus('connecting', this.w.t('status.reconnecting'));
      return;
    }
    const speaking = (this.player?.playing ?? false) || this.w.face.speaking;
    const t = this.w.t;
    if (speaking) this.w.setStatus('speaking', t('status.speaking'));
    else if (this.micAvailable && this.paused) this.w.setStatus('listening', t('status.paused'));
    else if (this.micAvailable) this.w.setStatus('listening', t(this.muted ? 'status.muted' : 'status.listening'));
    else this.w.setStatus('listening', t('status.typing_only'));
  }
}

if (globalThis.customElements && !customElements.get('avatar-relay')) customElements.define('avatar-relay', AvatarRelayElement);
