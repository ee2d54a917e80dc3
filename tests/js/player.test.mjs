// The page's player (relay/static/player.js) on a fake AudioContext whose clock is the test's: frames are scheduled
// back to back behind the jitter cushion, an underrun restarts the cushion, and a flush drops everything.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { FakeAudioContext, FakeClock, STATIC, pcm } from './harness.mjs';

const { PcmPlayer } = await import(new URL('player.js', STATIC).href);

function setUp() {
  const clock = new FakeClock();
  Object.defineProperty(globalThis, 'performance', { value: { now: () => clock.now }, configurable: true, writable: true });
  const context = new FakeAudioContext(clock);
  return { clock, context, player: new PcmPlayer(context, 16000) };
}

const near = (got, want, what) => assert.ok(Math.abs(got - want) < 0.002, `${what}: ${got} instead of ${want}`);

test('frames are scheduled back to back behind an 80 ms cushion', () => {
  const { context, player } = setUp();
  const scheduled = [100, 250, 100].map((ms) => player.enqueue(pcm(ms)));
  near(scheduled[0].start, 0.08, 'the first frame');
  near(scheduled[1].start, scheduled[0].start + scheduled[0].duration, 'the second frame');
  near(scheduled[2].start, scheduled[1].start + scheduled[1].duration, 'the third frame');
  near(scheduled[0].duration + scheduled[1].duration + scheduled[2].duration, 0.45, 'the frames last');
  near(player.buffered, 0.53, 'buffered');
  assert.equal(context.started.length, 3);
  assert.equal(player.underruns, 0);
});

test('an underrun restarts behind the cushion and is counted; a flush drops everything queued', async () => {
  const { clock, player } = setUp();
  player.enqueue(pcm(100));
  await clock.advance(500); // the frame has played out and nothing came: an underrun
  const late = player.enqueue(pcm(100));
  near(late.start, 0.5 + 0.08, 'after the underrun');
  assert.equal(player.underruns, 1);
  assert.equal(player.playing, true);
  player.flush();
  assert.equal(player.playing, false);
  assert.equal(player.buffered, 0);
  near(player.enqueue(pcm(100)).start, 0.5 + 0.08, 'after the flush');
});

test('the moment a frame is heard is the context time mapped onto performance.now()', () => {
  const { clock, player } = setUp();
  const first = player.enqueue(pcm(200));
  assert.ok(Math.abs(first.heardAt - (clock.now + 80)) < 1);
});
