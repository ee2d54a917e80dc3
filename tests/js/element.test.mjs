// <avatar-relay>'s public interface (docs/embedding.md, embed.d.ts) in node: its states and the `relay:state` event,
// every relay message as a `relay:<type>` event on the element, the token from `token-url` (with the page's
// credentials) or `tokenProvider`, `dynamic-variables`, the methods, two widgets side by side, and the LiveKit room
// reconnecting.

import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';

import { loadPage, settle, until } from './harness.mjs';

let page;

afterEach(() => {
  assert.deepEqual(page?.errors ?? [], [], 'the page logged an error');
});

function follow(target, type) {
  const seen = [];
  target.addEventListener(type, (event) => seen.push(event.detail));
  return seen;
}

const jsonAnswer = (body, status = 200) => ({
  ok: status >= 200 && status < 300, status, headers: { get: () => 'application/json; charset=utf-8' },
  text: async () => JSON.stringify(body),
});

test('the states a conversation goes through, each announced by relay:state', async () => {
  page = await loadPage();
  const states = follow(page.widget, 'relay:state');
  assert.equal(page.widget.state, 'idle');
  const ws = await page.start();
  assert.equal(page.widget.state, 'live');
  page.widget.stop();
  await page.clock.advance(0);
  ws.message({ type: 'ended', reason: 'client_stop' });
  await page.clock.advance(0);
  assert.equal(page.widget.state, 'ended');
  assert.deepEqual(states.map((s) => s.state), ['connecting', 'live', 'ended']);
  assert.deepEqual(states.map((s) => s.previous), ['idle', 'connecting', 'live']);
  assert.equal(page.widget.dataset.state, 'ended');
});

test('every relay message reaches the host page as relay:<type> on the element, bubbling out of the shadow root', async () => {
  page = await loadPage();
  const onElement = follow(page.widget, 'relay:context_usage');
  const ws = await page.start();
  const readyEvents = [];
  page.widget.addEventListener('relay:agent_response', (event) => readyEvents.push([event.bubbles, event.composed]));
  ws.message({ type: 'context_usage', used: 10, total: 100 });
  ws.message({ type: 'agent_response', event_id: 1, text: 'hi' });
  ws.message({ type: 'something_new', value: 1 });
  await page.clock.advance(0);
  assert.deepEqual(onElement, [{ type: 'context_usage', used: 10, total: 100 }]);
  assert.deepEqual(readyEvents, [[true, true]]);
});

test('token-url: fetched with the page\'s credentials, its {"token"} goes in `start`, with dynamic-variables', async () => {
  const asked = [];
  page = await loadPage({
    fetch: async (url, init) => {
      asked.push({ url, credentials: init?.credentials });
      return jsonAnswer({ token: 'tok-from-site' });
    },
  });
  page.widget.setAttribute('token-url', '/avatar-token');
  page.widget.setAttribute('dynamic-variables', '{"plan": "gold", "visits": 3}');
  const ws = await page.start(null);
  const [start] = ws.sentOf('start');
  assert.equal(start.token, 'tok-from-site');
  assert.deepEqual(start.dynamic_variables, { plan: 'gold', visits: 3 });
  assert.deepEqual(asked, [{ url: 'http://127.0.0.1:8000/avatar-token', credentials: 'same-origin' }]);
});

test('traceparent: the website\'s trace goes in `start`; one that is not W3C\'s is left out with a warning', async () => {
  const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
  page = await loadPage();
  page.widget.setAttribute('traceparent', traceparent);
  let ws = await page.start();
  assert.equal(ws.sentOf('start')[0].traceparent, traceparent);
  page.widget.stop();
  await page.clock.advance(0);
  ws.message({ type: 'ended', reason: 'client_stop' });
  await page.clock.advance(0);
  const warnings = [];
  const warn = console.warn;
  console.warn = (...args) => warnings.push(args.join(' '));
  try {
    page.widget.setAttribute('traceparent', traceparent.toUpperCase());
    ws = await page.start();
  } finally {
    console.warn = warn;
  }
  assert.equal('traceparent' in ws.sentOf('start')[0], false);
  assert.match(warnings.join('\n'), /traceparent is not a W3C traceparent/);
});

test('token-url answering {"token", "traceparent"}: the site\'s trace of minting it goes in `start`', async () => {
  const minted = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
  page = await loadPage({ fetch: async () => jsonAnswer({ token: 'tok', traceparent: minted }) });
  page.widget.setAttribute('token-url', '/avatar-token');
  page.widget.setAttribute('traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01');
  const ws = await page.start(null);
  assert.equal(ws.sentOf('start')[0].traceparent, minted);
});

test('token-url answering with plain text: the body is the token', async () => {
  page = await loadPage({
    fetch: async () => ({ ok: true, status: 200, headers: { get: () => 'text/plain' }, text: async () => 'plain-token\n' }),
  });
  page.widget.setAttribute('token-url', '/avatar-token');
  const ws = await page.start(null);
  assert.equal(ws.sentOf('start')[0].token, 'plain-token');
});

test('tokenProvider wins over token-url', async () => {
  page = await loadPage({ fetch: async () => assert.fail('token-url must not be fetched') });
  page.widget.setAttribute('token-url', '/avatar-token');
  page.widget.tokenProvider = async () => 'minted-my-way';
  const ws = await page.start(null);
  assert.equal(ws.sentOf('start')[0].token, 'minted-my-way');
});

test('a token endpoint that refuses ends the attempt in plain words, and nothing reaches the relay', async () => {
  page = await loadPage({ fetch: async () => jsonAnswer({ error: 'not signed in' }, 401) });
  page.widget.setAttribute('token-url', '/avatar-token');
  page.click('start');
  await until(() => page.widget.state === 'ended', 'the attempt ended');
  assert.equal(page.socket(), undefined, 'no socket was opened');
  assert.equal(page.debug.endedReason, 'token_failed');
  assert.equal(page.debug.notice, 'Could not get a pass for this conversation from the site (HTTP 401).');
  assert.equal(page.debug.statusText, 'Conversation ended: the site could not give this conversation a pass — HTTP 401');
  assert.equal(page.el('start').disabled, false);
});

test('start(), sendText(), interrupt(), mute() and stop() do what the buttons do', async () => {
  page = await loadPage();
  page.widget.start();
  await settle();
  const ws = page.socket();
  ws.open();
  await settle();
  ws.message({ type: 'ready', conversation_id: 'c-1', avatar: null, input_audio: { sample_rate: 16000 }, output_audio: { sample_rate: 16000 } });
  await page.clock.advance(20);
  assert.equal(page.widget.sendText('  hello  '), true);
  assert.deepEqual(ws.sentOf('text'), [{ type: 'text', text: 'hello' }]);
  assert.equal(page.widget.sendText('   '), false);
  page.widget.interrupt();
  assert.equal(ws.sentOf('interrupt').length, 1);
  page.widget.mute(true);
  assert.equal(page.debug.muted, true);
  assert.equal(page.el('mute').getAttribute('aria-pressed'), 'true');
  page.widget.mute(false);
  assert.equal(page.debug.muted, false);
  page.widget.stop();
  assert.equal(ws.sentOf('stop').length, 1);
});

test('reconnecting: while the avatar\'s LiveKit room gets its connection back, then live again', async () => {
  const livekit = new URL('./fake-livekit.mjs', import.meta.url).href;
  page = await loadPage({ config: { livekit_client_url: livekit } });
  const states = follow(page.widget, 'relay:state');
  await page.start({
    avatar: { provider: 'liveavatar', session_id: 'la-1', livekit_url: 'wss://room.example', access_token: 't', simulated: false },
  });
  await until(() => globalThis.fakeLivekitRooms?.at(-1)?.connected, 'the avatar room');
  await settle();
  const room = globalThis.fakeLivekitRooms.at(-1);
  room.emit('reconnecting');
  await page.clock.advance(20);
  assert.equal(page.widget.state, 'reconnecting');
  assert.equal(page.debug.statusText, 'Reconnecting the avatar…');
  room.emit('reconnected');
  await page.clock.advance(20);
  assert.equal(page.widget.state, 'live');
  assert.deepEqual(states.map((s) => s.state), ['connecting', 'live', 'reconnecting', 'live']);
});

test('two widgets on one page keep their own conversations, words and controls', async () => {
  page = await loadPage({
    html: '<!doctype html><html lang="en"><body><avatar-relay id="a"></avatar-relay><avatar-relay id="b" lang="es"></avatar-relay></body></html>',
  });
  const [a, b] = [...page.document.querySelectorAll('avatar-relay')];
  assert.equal(a.shadowRoot.getElementById('start').textContent, 'Start');
  assert.equal(b.shadowRoot.getElementById('start').textContent, 'Empezar');
  a.start();
  await settle();
  const ws = page.socket();
  ws.open();
  await settle();
  ws.message({ type: 'ready', conversation_id: 'c-a', avatar: null, input_audio: { sample_rate: 16000 }, output_audio: { sample_rate: 16000 } });
  ws.message({ type: 'agent_response', event_id: 1, text: 'only for a' });
  await page.clock.advance(2000);
  assert.equal(a.state, 'live');
  assert.equal(b.state, 'idle');
  assert.equal(a.shadowRoot.querySelectorAll('.entry.agent').length, 1);
  assert.equal(b.shadowRoot.querySelectorAll('.entry.agent').length, 0);
  assert.equal(b.shadowRoot.getElementById('start').disabled, false);
  assert.equal(a.shadowRoot.getElementById('start').disabled, true);
  assert.equal(page.window.__relayDebug, a.debug, 'the page\'s first widget is the one window.__relayDebug shows');
});

test('voice-only: the voice orb instead of the avatar\'s picture, the agent still heard through the page', async () => {
  page = await loadPage();
  page.widget.setAttribute('voice-only', '');
  await page.start({ avatar: { provider: 'liveavatar', session_id: 's', livekit_url: null, access_token: null, simulated: true } });
  assert.equal(page.debug.avatarMode, 'voice');
  assert.equal(page.el('sim-face').hasAttribute('hidden'), true);
  assert.equal(page.el('stage').dataset.mode, 'voice');
});

test('livekit-client\'s URL is resolved against the relay, not the host page (the relay\'s own copy is relative)', async () => {
  page = await loadPage({ config: { livekit_client_url: 'fake-livekit.mjs' } });
  // The relay is "where tests/js is": its relative livekit-client URL names tests/js/fake-livekit.mjs there, while
  // against the page (http://127.0.0.1:8000/) it would name nothing.
  page.widget.setAttribute('relay', new URL('./', import.meta.url).href);
  await page.start({
    avatar: { provider: 'liveavatar', session_id: 'la-2', livekit_url: 'wss://room.example', access_token: 't', simulated: false },
  });
  await until(() => globalThis.fakeLivekitRooms?.some((room) => room.token === 't' && room.connected), 'the avatar room');
  assert.doesNotMatch(String(page.debug.notice), /avatar video could not be loaded/);
});

test('livekit-client: the relay\'s own copy is imported as it is; an operator\'s URL is fetched with its integrity', async () => {
  // The relay's copy (`vendor/…`, checked by the relay at start-up): imported, no fetch, no blob: for the host's CSP.
  const integrity = `sha384-${'A'.repeat(64)}`;
  const fetched = [];
  const siteFetch = async (url, init) => {
    fetched.push({ url, integrity: init?.integrity });
    return { ok: false, status: 404, text: async () => '' };
  };
  page = await loadPage({ config: { livekit_client_url: 'vendor/livekit-client.esm.mjs', livekit_client_integrity: integrity }, fetch: siteFetch });
  page.widget.setAttribute('relay', new URL('./', import.meta.url).href);
  await page.start({
    avatar: { provider: 'liveavatar', session_id: 'la-3', livekit_url: 'wss://room.example', access_token: 't3', simulated: false },
  });
  await until(() => globalThis.fakeLivekitRooms?.some((room) => room.token === 't3' && room.connected), 'the avatar room');
  assert.deepEqual(fetched, []);

  // An operator's RELAY_LIVEKIT_CLIENT_URL with RELAY_LIVEKIT_CLIENT_INTEGRITY: fetched with that integrity (the
  // browser refuses other content) before anything runs; here the server answers 404, so no room and a notice.
  const override = new URL('./fake-livekit.mjs', import.meta.url).href;
  page = await loadPage({ config: { livekit_client_url: override, livekit_client_integrity: integrity }, fetch: siteFetch });
  const rooms = globalThis.fakeLivekitRooms?.length ?? 0;
  await page.start({
    avatar: { provider: 'liveavatar', session_id: 'la-4', livekit_url: 'wss://room.example', access_token: 't4', simulated: false },
  });
  await until(() => fetched.length === 1, 'the integrity-checked fetch');
  assert.deepEqual(fetched, [{ url: override, integrity }]);
  await until(() => /HTTP 404/.test(String(page.debug.notice)), 'the notice');
  assert.equal(globalThis.fakeLivekitRooms?.length ?? 0, rooms, 'nothing of the unchecked module ran');
});
