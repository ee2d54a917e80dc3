// The page's turn timings (relay/static/turn-meter.js) on the test's clock: what a turn measures from the end of the
// user's speech, when it is reported, how often reports go (and how big they get), and the video's freezes.

import assert from 'node:assert/strict';
import { beforeEach, test } from 'node:test';

import { FakeClock, STATIC } from './harness.mjs';

const meterModule = await import(new URL('turn-meter.js', STATIC).href);
const { TurnMeter, VideoWatch, captionOffset, REPORT_EVERY_MS, SETTLE_MS, GIVE_UP_MS, MAX_TURNS, MAX_FREEZES } = meterModule;

let clock;
let sent;
let meter;
let debug;
let connected;

function makeMeter(offsets = {}) {
  return new TurnMeter({
    send: (message) => {
      if (!connected) return false;
      sent.push(JSON.parse(JSON.stringify(message)));
      return true;
    },
    captionOffset: (eventId) => offsets[eventId] ?? null,
    now: () => clock.now, setTimer: clock.setTimeout, clearTimer: clock.clearTimeout, debug,
  });
}

beforeEach(() => {
  clock = new FakeClock();
  sent = [];
  connected = true;
  debug = { turnTimings: [] };
  meter = makeMeter({ 4: 12.34 });
});

test('a spoken turn is timed from the end of speech to the first audio heard and the mouth moving', async () => {
  meter.userStopped(); // at 1000
  await clock.advance(650);
  meter.audioHeard(4, clock.now + 80); // scheduled now, heard 80 ms later (the output latency)
  await clock.advance(120);
  meter.mouthMoved(clock.now);
  assert.deepEqual(sent, [], 'not reported before it settles');
  await clock.advance(SETTLE_MS);
  assert.deepEqual(sent, [{ type: 'client_metrics', freezes_ms: [],
    turns: [{ event_id: 4, speech_to_audio_ms: 730, speech_to_mouth_ms: 770, caption_offset_ms: 12.3 }] }]);
  assert.equal(debug.clientMetricsSent, 1);
  assert.deepEqual(debug.turnTimings.map((t) => t.speech_to_audio_ms), [730]);
});

test('an avatar that speaks itself is heard when its mouth moves; a voice-only turn has no mouth', async () => {
  meter.userStopped();
  await clock.advance(900);
  meter.mouthMoved(clock.now, true);
  meter.agentTurn(7);
  meter.userStopped(); // the next turn reports this one at once
  await clock.advance(300);
  meter.audioHeard(8, clock.now);
  meter.close();
  assert.deepEqual(sent.map((m) => m.turns), [
    [{ event_id: 7, speech_to_audio_ms: 900, speech_to_mouth_ms: 900, caption_offset_ms: null }],
    [{ event_id: 8, speech_to_audio_ms: 300, speech_to_mouth_ms: null, caption_offset_ms: null }],
  ]);
});

test('speech again before any answer restarts the clock; a turn never answered is forgotten', async () => {
  meter.userStopped();
  await clock.advance(2000);
  meter.userStopped(); // the user went on speaking: the latest end of speech counts
  await clock.advance(500);
  meter.audioHeard(2, clock.now);
  await clock.advance(SETTLE_MS);
  assert.equal(sent[0].turns[0].speech_to_audio_ms, 500);
  meter.userStopped();
  await clock.advance(GIVE_UP_MS + 1);
  meter.audioHeard(3, clock.now); // far too late, and no turn is waiting for it
  await clock.advance(REPORT_EVERY_MS + SETTLE_MS);
  assert.equal(sent.length, 1);
});

test('audio heard before the end of speech, or with no turn, is not a measurement', async () => {
  meter.audioHeard(1, clock.now);
  meter.mouthMoved(clock.now);
  meter.userStopped(clock.now);
  meter.audioHeard(1, clock.now - 5); // scheduled before the user stopped: an earlier reply's
  meter.mouthMoved(clock.now - 1);
  meter.close();
  assert.deepEqual(sent, []);
});

test('reports go at most every 5 s; what comes meanwhile waits, bounded; the end sends the rest at once', async () => {
  for (let i = 0; i < MAX_TURNS + 3; i++) {
    meter.userStopped();
    await clock.advance(100);
    meter.audioHeard(i, clock.now);
    await clock.advance(SETTLE_MS - 1000);
  }
  assert.ok(sent.length >= 2);
  for (const message of sent) assert.ok(message.turns.length <= MAX_TURNS);
  for (let i = 0; i < MAX_FREEZES + 4; i++) meter.freeze(600 + i);
  meter.close();
  const last = sent[sent.length - 1];
  assert.equal(last.freezes_ms.length, MAX_FREEZES, 'the newest freezes');
  assert.equal(last.freezes_ms[MAX_FREEZES - 1], 600 + MAX_FREEZES + 3);
  meter.userStopped();
  meter.freeze(900);
  await clock.advance(60000);
  assert.equal(sent[sent.length - 1], last, 'nothing after the end');
});

test('the interval between reports is kept, whatever arrives', async () => {
  const at = [];
  const timed = new TurnMeter({
    send: () => { at.push(clock.now); return true; },
    now: () => clock.now, setTimer: clock.setTimeout, clearTimer: clock.clearTimeout,
  });
  for (let i = 0; i < 40; i++) {
    timed.freeze(700);
    await clock.advance(250);
  }
  assert.ok(at.length >= 2);
  for (let i = 1; i < at.length; i++) assert.ok(at[i] - at[i - 1] >= REPORT_EVERY_MS, `${at}`);
});

test('a report that cannot be sent (no socket) is kept for the next one', async () => {
  connected = false;
  meter.userStopped();
  meter.audioHeard(1, clock.now + 400);
  await clock.advance(SETTLE_MS + 500);
  assert.deepEqual(sent, []);
  connected = true;
  meter.freeze(800);
  await clock.advance(REPORT_EVERY_MS);
  assert.equal(sent.length, 1);
  assert.equal(sent[0].turns[0].speech_to_audio_ms, 400);
  assert.deepEqual(sent[0].freezes_ms, [800]);
});

test('caption lateness is the mean of the turn\'s words revealed by the speech clock', () => {
  const log = [
    { eventId: 3, why: 'speech', due: 100, revealedAt: 110 },
    { eventId: 3, why: 'speech', due: 200, revealedAt: 230 },
    { eventId: 3, why: 'no_alignment', due: null, revealedAt: 999 },
    { eventId: 4, why: 'speech', due: 100, revealedAt: 500 },
  ];
  assert.equal(captionOffset(log, 3), 20);
  assert.equal(captionOffset(log, 9), null);
});

test('the video watch reports a freeze by its length and hands the next frame to whoever waits for it', () => {
  const callbacks = [];
  const video = { paused: false, requestVideoFrameCallback: (cb) => { callbacks.push(cb); return callbacks.length; },
    cancelVideoFrameCallback: () => {} };
  const freezes = [];
  const watch = new VideoWatch(video, (ms) => freezes.push(ms));
  const present = (at) => callbacks.shift()(at);
  present(1000);
  present(1040);
  let mouth = null;
  watch.nextFrame((at) => { mouth = at; });
  present(1080);
  assert.equal(mouth, 1080);
  present(1900); // 820 ms without a frame
  present(1940);
  watch.reset(); // the page was hidden: the gap is not the video's
  present(9000);
  present(9040);
  assert.deepEqual(freezes, [820]);
  watch.stop();
  assert.equal(callbacks.length, 1);
  callbacks.shift()(9999); // a frame after the stop is ignored
  assert.deepEqual(freezes, [820]);
});

test('without requestVideoFrameCallback a frame is a new currentTime on an animation frame', () => {
  const video = { paused: false, currentTime: 0 };
  const freezes = [];
  const watch = new VideoWatch(video, (ms) => freezes.push(ms));
  watch.tick(1000);
  video.currentTime = 0.04;
  watch.tick(1016);
  watch.tick(1600); // the same picture
  video.currentTime = 0.08;
  watch.tick(1700);
  assert.deepEqual(freezes, [684]);
});

test('the rest of a reply that began before the user stopped is not their answer', async () => {
  meter.agentTurn(6);
  meter.audioHeard(6, clock.now); // turn 6 plays
  meter.userStopped();
  await clock.advance(200);
  meter.audioHeard(6, clock.now); // more of turn 6, not the answer
  meter.agentTurn(6);
  await clock.advance(500);
  meter.audioHeard(7, clock.now); // the answer
  meter.close();
  assert.deepEqual(sent.map((m) => m.turns), [[{ event_id: 7, speech_to_audio_ms: 700, speech_to_mouth_ms: null, caption_offset_ms: null }]]);
});

test('figures out of bounds are not reported; turn 0 and audio heard at the very moment of the stop count', async () => {
  const odd = makeMeter({ 0: 120001, 1: Number.NaN, 2: 120000 });
  odd.userStopped();
  odd.agentTurn(0);
  odd.audioHeard(0, clock.now); // at the moment the user stopped
  odd.userStopped();
  await clock.advance(10);
  odd.mouthMoved(clock.now); // the mouth alone: the voice was not heard here (the page does not play it)
  odd.agentTurn(1);
  odd.userStopped();
  odd.audioHeard(2, clock.now);
  odd.close();
  assert.deepEqual(sent.flatMap((m) => m.turns), [
    { event_id: 0, speech_to_audio_ms: 0, speech_to_mouth_ms: null, caption_offset_ms: null },
    { event_id: 1, speech_to_audio_ms: null, speech_to_mouth_ms: 10, caption_offset_ms: null },
    { event_id: 2, speech_to_audio_ms: 0, speech_to_mouth_ms: null, caption_offset_ms: 120000 },
  ]);
  assert.deepEqual(debug.turnTimings.map((t) => t.event_id), [0, 1, 2]);
});

test('a freeze is 500 ms or more; nothing is taken after the end, and closing twice sends once', async () => {
  meter.freeze(499);
  meter.freeze(Number.NaN);
  meter.freeze(500);
  assert.deepEqual(sent.map((m) => m.freezes_ms), [[500]], 'the first report goes at once');
  meter.close();
  meter.close();
  meter.freeze(900);
  meter.userStopped();
  meter.audioHeard(3, clock.now + 100);
  await clock.advance(REPORT_EVERY_MS + SETTLE_MS);
  assert.equal(sent.length, 1);
});

test('the next report goes exactly one interval after the last one, not before', async () => {
  meter.freeze(600);
  assert.equal(sent.length, 1);
  await clock.advance(1000);
  meter.freeze(700);
  await clock.advance(REPORT_EVERY_MS - 1000 - 1);
  assert.equal(sent.length, 1, 'not before the interval');
  await clock.advance(1);
  assert.deepEqual(sent.map((m) => m.freezes_ms), [[600], [700]]);
  await clock.advance(REPORT_EVERY_MS);
  meter.freeze(800); // a whole interval later: at once
  assert.deepEqual(sent.map((m) => m.freezes_ms), [[600], [700], [800]]);
});

test('while nothing can be sent, the newest turns are kept, at most MAX_TURNS', async () => {
  connected = false;
  for (let i = 0; i < MAX_TURNS + 2; i++) {
    meter.userStopped();
    meter.audioHeard(i, clock.now + i);
  }
  meter.userStopped(); // the last one answered is finished by the next
  connected = true;
  meter.close();
  assert.equal(sent.length, 1);
  assert.deepEqual(sent[0].turns.map((t) => t.event_id), [2, 3, 4, 5, 6, 7, 8, 9]);
  assert.equal(sent[0].turns.length, MAX_TURNS);
});

test('captions count only the words the speech clock revealed, each against its own due time', () => {
  const log = [
    { eventId: 3, why: 'speech', due: 100, revealedAt: 130 },
    { eventId: 3, why: 'end', due: 100, revealedAt: 5000 }, // shown at the end, not by the clock
    { eventId: 3, why: 'speech', due: null, revealedAt: 5000 },
    { eventId: 3, why: 'speech', due: 300, revealedAt: 290 }, // never early: counted as 0
  ];
  assert.equal(captionOffset(log, 3), 15);
});

test('the video watch: a gap of exactly 500 ms is a freeze, a paused video\'s is not; after stop nothing waits', () => {
  const callbacks = [];
  const cancelled = [];
  let handles = 0;
  const video = { paused: false, currentTime: 0, requestVideoFrameCallback: (cb) => { callbacks.push(cb); return ++handles; },
    cancelVideoFrameCallback: (handle) => cancelled.push(handle) };
  const freezes = [];
  const watch = new VideoWatch(video, (ms) => freezes.push(ms));
  callbacks.shift()(1000);
  callbacks.shift()(1500);
  video.paused = true;
  callbacks.shift()(3000);
  video.paused = false;
  watch.tick(9000); // frame-based: ticks do nothing
  video.currentTime = 5;
  watch.tick(9100);
  callbacks.shift()(3040);
  assert.deepEqual(freezes, [500]);
  watch.stop();
  assert.deepEqual(cancelled, [5]);
  let called = false;
  watch.nextFrame(() => { called = true; });
  callbacks.shift()?.(4000);
  assert.equal(called, false);
  const polled = new VideoWatch({ paused: false, currentTime: 0 }, () => {});
  polled.stop();
  polled.tick(100);
  assert.equal(polled.lastFrameAt, null, 'a stopped watch reads no frame');
});

test('audio of no known agent turn (-1 before any reply, or none) is the answer, with no event id', async () => {
  meter.agentTurn(4); // an earlier reply
  meter.userStopped();
  meter.audioHeard(-1, clock.now + 300);
  meter.userStopped();
  meter.audioHeard(undefined, clock.now + 200);
  meter.agentTurn(-1);
  meter.agentTurn(null);
  meter.close();
  assert.deepEqual(sent.flatMap((m) => m.turns).map((t) => [t.event_id, t.speech_to_audio_ms]), [[null, 300], [null, 200]]);
});
