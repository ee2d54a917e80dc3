// The captions (relay/static/captions.js) and the transcript (transcript.js) on the test's clock, without the rest of
// the page: the fallback timers (text-only turns after NO_ALIGNMENT_MS, aligned words nothing started after
// NO_ANCHOR_MS, the subtitle's linger), tentative → final transcripts, and what an interruption cuts.

import assert from 'node:assert/strict';
import { beforeEach, test } from 'node:test';

import { FakeClock, STATIC } from './harness.mjs';
import { parseHTML } from 'linkedom';

const { Captions } = await import(new URL('captions.js', STATIC).href);
const { Transcript } = await import(new URL('transcript.js', STATIC).href);

let clock;
let captions;
let transcript;
let list;
let subtitle;
let debug;

beforeEach(() => {
  clock = new FakeClock();
  const { document } = parseHTML('<!doctype html><html><body><ol id="t"></ol><p id="s" hidden></p></body></html>');
  for (const [name, value] of Object.entries({
    document, performance: { now: () => clock.now }, setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout,
  })) Object.defineProperty(globalThis, name, { value, configurable: true, writable: true });
  list = document.getElementById('t');
  subtitle = document.getElementById('s');
  debug = { captionLog: [] };
  transcript = new Transcript(list);
  captions = new Captions(transcript, subtitle, debug);
});

function agentBubble(eventId) {
  const li = list.querySelector(`li.agent[data-event-id="${eventId}"]`);
  return li && { caption: li.dataset.caption, revealed: Number(li.dataset.revealed), words: Number(li.dataset.words),
    spoken: li.querySelector('.spoken').textContent, unspoken: li.querySelector('.unspoken').textContent,
    interrupted: li.classList.contains('interrupted') };
}

test('a turn with text but neither alignment nor audio shows in full after 1.5 s, not before', async () => {
  captions.response(3, 'we open at nine');
  assert.equal(agentBubble(3).revealed, 0);
  assert.equal(agentBubble(3).unspoken, 'we open at nine', 'the text is there, dimmed');
  await clock.advance(1490);
  assert.equal(agentBubble(3).revealed, 0);
  await clock.advance(20);
  assert.deepEqual(agentBubble(3), { caption: 'spoken', revealed: 4, words: 4, spoken: 'we open at nine', unspoken: '', interrupted: false });
  assert.deepEqual(debug.captionLog.map((e) => e.why), ['no_alignment', 'no_alignment', 'no_alignment', 'no_alignment']);
});

test('streamed parts arm the text-only fallback at their stop; the final text replaces them in the same bubble', async () => {
  captions.part(4, 'start', '');
  captions.part(4, 'delta', 'we open ');
  captions.part(4, 'delta', 'at nin');
  await clock.advance(5000);
  assert.equal(agentBubble(4).revealed, 0, 'no fallback while the reply still streams');
  captions.part(4, 'stop', '');
  captions.response(4, 'we open at nine');
  await clock.advance(1510);
  assert.equal(agentBubble(4).spoken, 'we open at nine');
  assert.equal(list.querySelectorAll('li.agent').length, 1);
});

test('aligned words whose start never comes show after 10 s, not before', async () => {
  captions.response(5, 'hello there');
  captions.alignment({ event_id: 5, offset_ms: 0, words: [{ text: 'hello', start_ms: 0, end_ms: 300 }, { text: 'there', start_ms: 400, end_ms: 700 }] });
  await clock.advance(9990);
  assert.equal(agentBubble(5).revealed, 0, 'the alignment cancels the text-only fallback');
  await clock.advance(20);
  assert.equal(agentBubble(5).revealed, 2);
  assert.deepEqual(debug.captionLog.map((e) => e.why), ['no_anchor', 'no_anchor']);
});

test("an avatar's start reveals aligned words on their times, and the subtitle lingers 2.5 s after the last", async () => {
  captions.response(6, 'one two');
  captions.alignment({ event_id: 6, offset_ms: 0, words: [{ text: 'one', start_ms: 0, end_ms: 200 }, { text: 'two', start_ms: 500, end_ms: 700 }] });
  await clock.advance(300);
  const started = clock.now;
  captions.avatarStarted(6);
  await clock.advance(0);
  assert.equal(agentBubble(6).revealed, 1);
  assert.equal(subtitle.textContent, 'one');
  await clock.advance(490);
  assert.equal(agentBubble(6).revealed, 1);
  await clock.advance(10);
  assert.equal(agentBubble(6).revealed, 2);
  assert.deepEqual(debug.captionLog.map((e) => e.revealedAt - started), [0, 500]);
  assert.equal(subtitle.hidden, false);
  await clock.advance(2490);
  assert.equal(subtitle.hidden, false);
  await clock.advance(20);
  assert.equal(subtitle.hidden, true);
});

test('an interruption cuts the turns before it, and a part of its own turn that came first is still revealed', async () => {
  captions.response(7, 'the old reply goes on and on');
  captions.alignment({ event_id: 7, offset_ms: 0, words: [{ text: 'the', start_ms: 0, end_ms: 100 }, { text: 'old', start_ms: 200, end_ms: 300 }, { text: 'reply', start_ms: 5000, end_ms: 5300 }] });
  captions.chunkScheduled({ event_id: 7, offset_ms: 0 }, clock.now);
  // A part of the new turn 8 arrives before the interruption that names it.
  captions.part(8, 'delta', 'new answer');
  captions.alignment({ event_id: 8, offset_ms: 0, words: [{ text: 'new', start_ms: 0, end_ms: 100 }, { text: 'answer', start_ms: 200, end_ms: 400 }] });
  await clock.advance(250);
  captions.interruption(8);
  captions.chunkScheduled({ event_id: 8, offset_ms: 0 }, clock.now);
  await clock.advance(1000);
  assert.equal(agentBubble(7).caption, 'cut');
  assert.equal(agentBubble(7).spoken, 'the old');
  assert.equal(agentBubble(7).interrupted, true);
  assert.equal(agentBubble(8).caption, 'spoken', 'the new turn is not cut by the interruption that starts it');
  assert.equal(agentBubble(8).spoken, 'new answer');
});

test('a tentative user transcript is replaced by the final one: one bubble, final text, not tentative', () => {
  transcript.user(7, 'what', false);
  transcript.user(7, 'what are', false);
  transcript.user(7, 'what are your hours?', true);
  const users = [...list.querySelectorAll('li.user')];
  assert.equal(users.length, 1);
  assert.equal(users[0].querySelector('.text').textContent, 'what are your hours?');
  assert.equal(users[0].classList.contains('tentative'), false);
  transcript.user(8, 'and', false);
  assert.equal(list.querySelectorAll('li.user').length, 2);
  assert.equal(list.querySelectorAll('li.user.tentative').length, 1);
});
