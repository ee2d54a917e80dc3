// The page's state machine (relay/static/app.js) off the happy path, on the test's clock: Stop against a relay that
// never answers, the agent's goodbye played out, a real avatar lost mid-conversation, a lost connection and a fresh
// start after it.

import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';

import { loadPage, pcm, settle, until } from './harness.mjs';

const STOP_GRACE_MS = 6000;
let page;

afterEach(() => {
  assert.deepEqual(page?.errors ?? [], [], 'the page logged an error');
});

test('Stop against a relay that never answers ends the page after the grace, not before', async () => {
  page = await loadPage();
  const ws = await page.start();
  assert.equal(page.debug.status, 'listening');
  page.click('stop');
  await page.clock.advance(0);
  assert.equal(ws.sentOf('stop').length, 1);
  assert.equal(page.debug.status, 'ending');
  assert.equal(page.el('stop').disabled, true);

  await page.clock.advance(STOP_GRACE_MS - 10);
  assert.equal(page.debug.endedReason, null, 'gave up before the grace');
  assert.equal(page.debug.status, 'ending');

  await page.clock.advance(20);
  assert.equal(page.debug.endedReason, 'client_stop');
  assert.equal(page.debug.status, 'ended');
  assert.equal(ws.closedWith, 1000);
  assert.equal(page.el('start').disabled, false, 'the page is ready to start again');
});

test('Stop answered by `ended` ends at once and the grace timer does nothing later', async () => {
  page = await loadPage();
  const ws = await page.start();
  page.click('stop');
  await page.clock.advance(100);
  ws.message({ type: 'ended', reason: 'client_stop' });
  await page.clock.advance(0);
  assert.equal(page.debug.endedReason, 'client_stop');
  const text = page.debug.statusText;
  await page.clock.advance(STOP_GRACE_MS * 2);
  assert.equal(page.debug.statusText, text);
  assert.equal(page.debug.endedReason, 'client_stop');
});

test("the agent's goodbye already buffered is played out before the page tears down", async () => {
  page = await loadPage();
  const ws = await page.start();
  ws.message({ type: 'agent_response', event_id: 4, text: 'goodbye then' });
  for (let i = 0; i < 10; i++) ws.audio(pcm(200)); // two seconds of voice
  await page.clock.advance(0);
  ws.message({ type: 'ended', reason: 'agent_ended' });
  ws.drop(1000);
  await page.clock.advance(0);
  const left = page.debug.playingOut;
  assert.ok(left > 1.9 && left <= 2.1, `plays out ${left} s`);
  assert.equal(page.debug.endedReason, null);
  assert.equal(page.debug.status, 'ending');

  await page.clock.advance(left * 1000);
  assert.equal(page.debug.endedReason, null, 'torn down while the goodbye still played');
  await page.clock.advance(150);
  assert.equal(page.debug.endedReason, 'agent_ended');
  assert.equal(page.debug.playingOut, null);
});

test('Stop during a reply ends at once: nothing is played out', async () => {
  page = await loadPage();
  const ws = await page.start();
  for (let i = 0; i < 10; i++) ws.audio(pcm(200));
  page.click('stop');
  await page.clock.advance(0);
  ws.message({ type: 'ended', reason: 'client_stop' });
  await page.clock.advance(0);
  assert.equal(page.debug.endedReason, 'client_stop');
  assert.equal(page.debug.playingOut, null);
});

test('a real avatar lost mid-conversation: the captions follow the page\'s own player from then on', async () => {
  const livekit = new URL('./fake-livekit.mjs', import.meta.url).href;
  page = await loadPage({ config: { livekit_client_url: livekit } });
  const ws = await page.start({
    avatar: { provider: 'liveavatar', session_id: 'la-1', livekit_url: 'wss://room.example', access_token: 't', simulated: false },
  });
  assert.equal(page.debug.avatarMode, 'loading');
  await until(() => globalThis.fakeLivekitRooms?.at(-1)?.connected, 'the avatar room');
  await settle(); // the page keeps the room it joined
  const room = globalThis.fakeLivekitRooms.at(-1);

  ws.message({ type: 'avatar_unavailable', reason: 'session_ended', message: 'The avatar session ended.' });
  await page.clock.advance(0);
  assert.equal(page.debug.avatarMode, 'voice');
  assert.equal(room.connected, false, 'the room is left');
  assert.match(page.debug.notice, /continues with voice only/);

  // Turn 7: its text, then each chunk's alignment before the chunk, as the relay sends them.
  ws.message({ type: 'agent_response', event_id: 7, text: 'one two three' });
  ws.message({
    type: 'agent_alignment', event_id: 7, offset_ms: 0,
    words: [{ text: 'one', start_ms: 0, end_ms: 200 }, { text: 'two', start_ms: 300, end_ms: 500 }],
  });
  ws.audio(pcm(600));
  ws.message({ type: 'agent_alignment', event_id: 7, offset_ms: 600, words: [{ text: 'three', start_ms: 700, end_ms: 900 }] });
  ws.audio(pcm(400));
  await page.clock.advance(0);
  const [first, second] = page.debug.audioChunks;
  const near = (got, want) => Math.abs(got - want) < 2; // the streaming resampler holds back a few samples
  assert.ok(near(second.heardAt - first.heardAt, 600), 'the chunks play back to back');

  await page.clock.advance(1200);
  const log = page.debug.captionLog.filter((entry) => entry.eventId === 7);
  assert.deepEqual(log.map((entry) => [entry.text, entry.why]), [['one', 'speech'], ['two', 'speech'], ['three', 'speech']]);
  const due = log.map((entry) => entry.due - first.heardAt);
  assert.ok([0, 300, 700].every((want, i) => near(due[i], want)), `each word is revealed as the player plays it: ${due}`);
  for (const entry of log) assert.ok(entry.revealedAt - entry.due < 20, `revealed ${entry.revealedAt - entry.due} ms late`);
});

test('a lost connection ends the conversation, and Start opens a fresh one that ignores the old socket', async () => {
  page = await loadPage();
  const old = await page.start();
  old.message({ type: 'user_transcript', event_id: 2, text: 'hello', final: true });
  await page.clock.advance(0);
  old.drop(1006);
  await page.clock.advance(0);
  assert.equal(page.debug.endedReason, 'connection_lost');
  assert.match(page.debug.statusText, /connection to the relay was lost/);
  assert.equal(page.el('start').disabled, false);
  assert.equal(page.audioContext().state, 'closed');

  const fresh = await page.start();
  assert.notEqual(fresh, old);
  assert.equal(fresh.sentOf('start').length, 1);
  assert.equal(page.debug.status, 'listening');
  assert.equal(page.debug.endedReason, null);
  assert.deepEqual(page.bubbles('user'), [], 'the transcript starts afresh');
  old.readyState = 1; // a late frame on the old socket (it must not reach the new conversation)
  old.onmessage?.({ data: JSON.stringify({ type: 'ended', reason: 'shutdown' }) });
  await page.clock.advance(0);
  assert.equal(page.debug.status, 'listening');
  fresh.message({ type: 'user_transcript', event_id: 1, text: 'again', final: true });
  await page.clock.advance(0);
  assert.deepEqual(page.bubbles('user').map((b) => b.text), ['again']);
});

test('a tentative user transcript is replaced by the final one in the same bubble', async () => {
  page = await loadPage();
  const ws = await page.start();
  ws.message({ type: 'user_transcript', event_id: 7, text: 'what are', final: false });
  await page.clock.advance(0);
  assert.deepEqual(page.bubbles('user').map((b) => [b.text, b.classes.includes('tentative')]), [['what are', true]]);
  ws.message({ type: 'user_transcript', event_id: 7, text: 'what are your opening hours?', final: true });
  ws.message({ type: 'user_transcript', event_id: 8, text: 'and', final: false });
  await page.clock.advance(0);
  assert.deepEqual(page.bubbles('user').map((b) => [b.text, b.classes.includes('tentative')]),
    [['what are your opening hours?', false], ['and', true]]);
});

// ------------------------------------------------------------------------------------------------------------------
// What each turn felt like (turn-meter.js), as the page reports it in `client_metrics`

test('a typed message and a spoken turn are timed to the first agent audio heard, and reported to the relay', async () => {
  page = await loadPage();
  const ws = await page.start();
  page.widget.sendText('what time is it');
  await page.clock.advance(700);
  ws.message({ type: 'agent_response', event_id: 3, text: 'nine' });
  ws.message({ type: 'agent_alignment', event_id: 3, offset_ms: 0, words: [{ text: 'nine', start_ms: 0, end_ms: 300 }] });
  ws.audio(pcm(300));
  await page.clock.advance(0);
  const heardAfter = page.debug.audioChunks[0].heardAt - 1020; // the message went at 1020 (after `ready`)
  assert.equal(ws.sentOf('client_metrics').length, 0, 'a turn is reported once it settles');
  await page.clock.advance(4100);
  const [report] = ws.sentOf('client_metrics');
  assert.deepEqual(Object.keys(report).sort(), ['freezes_ms', 'turns', 'type']);
  assert.equal(report.turns.length, 1);
  const [turn] = report.turns;
  assert.equal(turn.event_id, 3);
  assert.ok(Math.abs(turn.speech_to_audio_ms - heardAfter) < 1, `${turn.speech_to_audio_ms} vs ${heardAfter}`);
  assert.ok(turn.speech_to_audio_ms >= 700);
  assert.equal(turn.speech_to_mouth_ms, null, 'voice only: no mouth');
  assert.equal(typeof turn.caption_offset_ms, 'number');

  // Spoken: the relay's final transcript is the end of the user's speech; Stop sends the turn before `stop`.
  ws.message({ type: 'user_transcript', event_id: 4, text: 'and tomorrow', final: false });
  await page.clock.advance(300);
  ws.message({ type: 'user_transcript', event_id: 4, text: 'and tomorrow', final: true });
  await page.clock.advance(450);
  ws.message({ type: 'agent_response', event_id: 5, text: 'sunny' });
  ws.audio(pcm(200));
  await page.clock.advance(0);
  page.click('stop');
  await page.clock.advance(0);
  const reports = ws.sentOf('client_metrics');
  assert.equal(reports.length, 2);
  assert.ok(reports[1].turns[0].speech_to_audio_ms >= 450 && reports[1].turns[0].speech_to_audio_ms < 600);
  const order = ws.sent.filter((frame) => frame?.type).map((frame) => frame.type);
  assert.deepEqual(order.slice(-2), ['client_metrics', 'stop']);
});

test('a real avatar: its mouth is its first video frame after it says it speaks; its video\'s freezes are reported', async () => {
  const livekit = new URL('./fake-livekit.mjs', import.meta.url).href;
  page = await loadPage({ config: { livekit_client_url: livekit } });
  const ws = await page.start({
    avatar: { provider: 'liveavatar', session_id: 'la-1', livekit_url: 'wss://room.example', access_token: 't', simulated: false },
  });
  await until(() => globalThis.fakeLivekitRooms?.at(-1)?.connected, 'the avatar room');
  await settle();
  const video = page.el('avatar-video');
  const frames = [];
  video.requestVideoFrameCallback = (callback) => frames.push(callback);
  const present = () => frames.shift()?.(page.clock.now);
  globalThis.fakeLivekitRooms.at(-1).emit('trackSubscribed', { kind: 'video', attach() {} }, {}, { identity: 'x' });
  await page.clock.advance(0);
  assert.equal(page.debug.avatarMode, 'video');
  present();
  await page.clock.advance(40);
  present();

  const play = async (ms) => { // the avatar's video goes on at 25 frames a second
    for (let t = 0; t < ms; t += 40) {
      await page.clock.advance(40);
      present();
    }
  };
  page.widget.sendText('hello');
  await play(880);
  ws.message({ type: 'agent_response', event_id: 5, text: 'hi there' });
  ws.message({ type: 'avatar_state', speaking: true, event_id: 5 });
  await page.clock.advance(30);
  present(); // the avatar's first frame since it said it speaks
  await page.clock.advance(700);
  present(); // 700 ms without a frame: a freeze
  page.click('stop');
  await page.clock.advance(0);
  const reports = ws.sentOf('client_metrics');
  assert.deepEqual(reports.map((r) => r.freezes_ms), [[700], []], 'a freeze goes at once (the first report)');
  assert.deepEqual(reports.map((r) => r.turns), [[], [{ event_id: 5, speech_to_audio_ms: 910, speech_to_mouth_ms: 910, caption_offset_ms: null }]]);
});

test('the page acks the newest seq it has 5 s after it, once for a burst, and never without news', async () => {
  page = await loadPage();
  const ws = await page.start({ resume_token: 'rt1.r.AAAAAAAAAAAAAAAAAAAAAA.1700000100.mac', resume_window: 20 });
  ws.message({ type: 'user_transcript', text: 'hi', event_id: 1, final: true, seq: 1 });
  await page.clock.advance(300);
  ws.message({ type: 'agent_response', text: 'Hello!', event_id: 1, seq: 2 });
  ws.message({ type: 'agent_response', text: 'Hello!', event_id: 1, seq: 2 }); // a duplicate is no news
  await page.clock.advance(4600);
  assert.equal(ws.sentOf('ack').length, 0, 'acked before the 5 s were up');
  await page.clock.advance(100);
  assert.deepEqual(ws.sentOf('ack').map((m) => m.seq), [2]);
  await page.clock.advance(20000);
  assert.deepEqual(ws.sentOf('ack').map((m) => m.seq), [2], 'an ack with nothing new');
  ws.message({ type: 'agent_response', text: 'More.', event_id: 2, seq: 3 });
  await page.clock.advance(5000);
  assert.deepEqual(ws.sentOf('ack').map((m) => m.seq), [2, 3]);
});
