// The page's modules in node, without a browser: a DOM (linkedom, parsed from the page's own index.html), a clock
// the test drives (setTimeout, performance.now, Date.now and requestAnimationFrame all read it, so a 6 s grace timer
// costs nothing and fires exactly when due), and fakes of what a browser gives the page: a WebSocket the test plays
// the relay on, an AudioContext whose clock is the test clock, `fetch` for client-config.json, a microphone that is
// refused (the page then works by typed messages), a LiveKit module for real avatars.
//
// Each test file runs in its own node process (node --test), and `loadPage()` imports a fresh instance of app.js
// (a query string makes a new module) onto a fresh document.

import { readFileSync } from 'node:fs';
import { setImmediate as realSetImmediate } from 'node:timers';

const realDateNow = Date.now;
import { parseHTML } from 'linkedom';

export const STATIC = new URL('../../relay/static/', import.meta.url);
const INDEX_HTML = readFileSync(new URL('index.html', STATIC), 'utf8');

// ------------------------------------------------------------------------------------------------------------------
// The clock

export class FakeClock {
  constructor() {
    this.now = 1000; // ms; performance.now() and the AudioContext's currentTime derive from it
    this.timers = new Map();
    this.nextId = 1;
  }

  setTimeout = (callback, ms = 0, ...args) => {
    const id = this.nextId++;
    this.timers.set(id, { at: this.now + Math.max(0, Number(ms) || 0), callback, args, seq: id });
    return id;
  };

  clearTimeout = (id) => {
    this.timers.delete(id);
  };

  requestAnimationFrame = (callback) => this.setTimeout(() => callback(this.now), 16);

  /** Run every timer due within `ms` from now, in order of due time, moving the clock to each; then to now + ms. */
  async advance(ms) {
    const until = this.now + ms;
    for (;;) {
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= until && (next === null || timer.at < next[1].at || (timer.at === next[1].at && timer.seq < next[1].seq))) next = [id, timer];
      }
      if (next === null) break;
      this.timers.delete(next[0]);
      this.now = Math.max(this.now, next[1].at);
      next[1].callback(...next[1].args);
      await settle();
    }
    this.now = until;
    await settle();
  }
}

/** Let every pending promise callback run (the page's awaits), a few rounds deep. */
export async function settle() {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => realSetImmediate(resolve));
}

/** Let the page's promises run (without moving the test clock) until `predicate()` holds; fails after 2 s of real
 * time (module loading is real I/O). */
export async function until(predicate, what) {
  const deadline = realDateNow() + 2000;
  while (!predicate()) {
    if (realDateNow() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => realSetImmediate(resolve));
  }
}

// ------------------------------------------------------------------------------------------------------------------
// The relay's side of the socket

export class FakeWebSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;
  static instances = [];

  constructor(url) {
    this.url = url;
    this.readyState = FakeWebSocket.CONNECTING;
    this.bufferedAmount = 0;
    this.sent = [];
    this.closedWith = null;
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    FakeWebSocket.instances.push(this);
  }

  // page-facing
  send(data) {
    if (this.readyState !== FakeWebSocket.OPEN) throw new Error('send on a socket that is not open');
    this.sent.push(typeof data === 'string' ? JSON.parse(data) : data);
  }

  close(code = 1000) {
    if (this.readyState >= FakeWebSocket.CLOSING) return;
    this.readyState = FakeWebSocket.CLOSING;
    this.closedWith = code;
    realSetImmediate(() => this.closed(code, ''));
  }

  // test-facing: the relay
  open() {
    this.readyState = FakeWebSocket.OPEN;
    this.onopen?.({});
  }

  /** The relay sends a JSON frame. */
  message(frame) {
    if (this.readyState !== FakeWebSocket.OPEN) return;
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The relay sends a binary frame (an ArrayBuffer of PCM16). */
  audio(arrayBuffer) {
    if (this.readyState !== FakeWebSocket.OPEN) return;
    this.onmessage?.({ data: arrayBuffer });
  }

  /** The connection goes away from the relay's side (1006: no close frame at all). */
  drop(code = 1006, reason = '') {
    if (this.readyState === FakeWebSocket.CLOSED) return;
    this.readyState = FakeWebSocket.CLOSING;
    this.closed(code, reason);
  }

  closed(code, reason) {
    if (this.readyState === FakeWebSocket.CLOSED) return;
    this.readyState = FakeWebSocket.CLOSED;
    this.onclose?.({ code, reason });
  }

  sentOf(type) {
    return this.sent.filter((frame) => frame?.type === type);
  }
}

// ------------------------------------------------------------------------------------------------------------------
// Audio: the context's clock is the test clock

class FakeNode {
  connect() {}
  disconnect() {}
}

export class FakeAudioContext {
  static instances = [];

  constructor(clock) {
    this.clock = clock;
    this.sampleRate = 48000;
    this.state = 'running';
    this.origin = clock.now;
    this.destination = new FakeNode();
    this.started = []; // every buffer source started: {start, duration}
    this.audioWorklet = { addModule: async () => {} };
    FakeAudioContext.instances.push(this);
  }

  get currentTime() {
    return (this.clock.now - this.origin) / 1000;
  }

  async resume() {}

  async close() {
    this.state = 'closed';
  }

  createGain() {
    return new FakeNode();
  }

  createAnalyser() {
    return Object.assign(new FakeNode(), { fftSize: 2048, getFloatTimeDomainData: (array) => array.fill(0) });
  }

  createBuffer(channels, length, sampleRate) {
    return { length, sampleRate, duration: length / sampleRate, copyToChannel() {} };
  }

  createBufferSource() {
    const context = this;
    return Object.assign(new FakeNode(), {
      buffer: null,
      onended: null,
      start(when) {
        context.started.push({ start: when, duration: this.buffer.duration });
      },
      stop() {},
    });
  }
}

/** `ms` of PCM16 at `rate` (a quiet tone), as the ArrayBuffer a binary frame carries. */
export function pcm(ms, rate = 16000) {
  const samples = new Int16Array(Math.round((ms * rate) / 1000));
  for (let i = 0; i < samples.length; i++) samples[i] = Math.round(3000 * Math.sin(i / 5));
  return samples.buffer;
}

// ------------------------------------------------------------------------------------------------------------------
// The page

let pageCount = 0;

/**
 * A fresh document and globals, then a fresh instance of app.js. Returns the test's handles: `clock`, `debug`
 * (window.__relayDebug), `el(id)`, `click(id)`, `start()` (press Start and open the socket), `socket()` (the newest),
 * `errors` (console.error calls: a test fails on any).
 */
export async function loadPage({ config = { livekit_client_url: null }, fetch: siteFetch = null, html = INDEX_HTML } = {}) {
  const clock = new FakeClock();
  const { document, window: dom } = parseHTML(html);
  const window = new EventTarget();
  const errors = [];
  FakeWebSocket.instances = [];
  FakeAudioContext.instances = [];
  const globals = {
    window,
    document,
    HTMLElement: dom.HTMLElement,
    customElements: dom.customElements,
    // linkedom's CustomEvent, keeping `composed` (which it drops) so tests can check it.
    CustomEvent: class extends dom.CustomEvent {
      constructor(type, init = {}) {
        super(type, init);
        Object.defineProperty(this, 'composed', { value: Boolean(init.composed) });
      }
    },
    location: { href: 'http://127.0.0.1:8000/', hash: '', protocol: 'http:' },
    navigator: { mediaDevices: { getUserMedia: async () => { throw Object.assign(new Error('refused'), { name: 'NotAllowedError' }); } } },
    WebSocket: FakeWebSocket,
    AudioContext: class extends FakeAudioContext { constructor() { super(clock); } },
    // client-config.json from the relay; anything else (a host site's token-url) from the test's `fetch`.
    fetch: async (url, init) => {
      if (String(url).endsWith('client-config.json')) return { ok: true, json: async () => config };
      if (siteFetch) return siteFetch(String(url), init);
      throw new Error(`no fetch for ${url} in this test`);
    },
    performance: { now: () => clock.now },
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    requestAnimationFrame: clock.requestAnimationFrame,
  };
  for (const [name, value] of Object.entries(globals)) {
    Object.defineProperty(globalThis, name, { value, configurable: true, writable: true });
  }
  Date.now = () => 1_700_000_000_000 + clock.now;
  console.error = (...args) => errors.push(args.map(String).join(' '));
  pageCount += 1;
  await import(new URL(`app.js?page=${pageCount}`, STATIC).href);
  await settle();
  // The page is one <avatar-relay>: its controls are in its shadow root.
  const widget = document.querySelector('avatar-relay');
  const el = (id) => widget.shadowRoot.getElementById(id);
  const page = {
    clock,
    document,
    window,
    errors,
    widget,
    el,
    get debug() {
      return window.__relayDebug;
    },
    click(id) {
      el(id).dispatchEvent(new dom.Event('click'));
    },
    socket() {
      return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    },
    audioContext() {
      return FakeAudioContext.instances[FakeAudioContext.instances.length - 1];
    },
    /** Press Start, let the relay accept the socket, answer `start` with `ready`; returns the socket. */
    async start(ready = {}) {
      page.click('start');
      await settle();
      const ws = page.socket();
      ws.open();
      await settle();
      if (ready !== null) {
        ws.message({
          type: 'ready', conversation_id: `conv-${FakeWebSocket.instances.length}`, avatar: null,
          input_audio: { encoding: 'pcm_s16le', sample_rate: 16000 },
          output_audio: { encoding: 'pcm_s16le', sample_rate: 16000 }, ...ready,
        });
        await clock.advance(20); // one animation frame: the status follows the conversation's state
      }
      return ws;
    },
    /** The agent's reply bubbles (data-event-id, data-caption, the text shown) and the user's. */
    bubbles(kind) {
      return [...el('transcript').querySelectorAll(`li.${kind}`)].map((li) => ({
        eventId: li.dataset.eventId, caption: li.dataset.caption, text: li.querySelector('.text').textContent,
        classes: li.className,
      }));
    },
  };
  return page;
}
