// Captions in step with the agent's speech: each agent turn's words are revealed as they are actually said.
//
// A turn's text comes from `agent_response_part` (streamed) and `agent_response` (final, replaces it); its timing from
// `agent_alignment` frames (word start times in ms from the start of the turn's speech). What is missing is when
// that speech starts, and that depends on who plays it:
//   - the page's own player (voice only, simulated avatar): every `agent_alignment` precedes the binary audio chunk it
//     belongs to, so when the player schedules that chunk, each of its words is due at
//     chunk start + (start_ms − offset_ms) — on the audio clock, so jitter and underruns move the captions too;
//   - an audio-driven avatar (LiveAvatar): `avatar_state {speaking: true, event_id}` marks when it starts the turn;
//   - HeyGen's text mode: `avatar_speaking {duration_ms}` — its own voice, so the words are spread evenly over the
//     announced duration from receipt (an estimate).
// An interruption stops the reveal where speech was cut; a correction replaces the text with what was really said.
// Text is never lost: a turn without alignment shows in full (at once when its audio plays without alignment, or
// after NO_ALIGNMENT_MS without audio — text-only conversations), and every uncut turn shows in full at the end.
// Not-yet-spoken words are shown dimmed, the spoken ones plainly, and the stage's subtitle shows the words just said.

const NO_ALIGNMENT_MS = 1500; // a turn with text but neither alignment nor audio after this long shows in full
const NO_ANCHOR_MS = 10000; // aligned words nothing said were started (no avatar_state, no audio) show after this
const SUBTITLE_WORDS = 14; // the stage's subtitle shows at most this many of the latest spoken words
const SUBTITLE_LINGER_MS = 2500; // how long the subtitle stays after its turn's last word
const MAX_LOG = 2000;

/** Non-space runs of `text` with their end indexes: what counts as a word. */
function runs(text) {
  return [...String(text).matchAll(/\S+/g)].map((m) => ({ text: m[0], end: m.index + m[0].length }));
}

const TIMED = new Set(['aligned', 'even']);

export class Captions {
  /**
   * @param {import('./transcript.js').Transcript} transcript renders the agent's bubbles
   * @param {HTMLElement} subtitle the caption line on the stage
   * @param {object} debug window.__relayDebug: `captionLog` (every word revealed) is recorded there
   */
  constructor(transcript, subtitle, debug) {
    this.transcript = transcript;
    this.subtitle = subtitle;
    this.debug = debug;
    this.turns = new Map();
    this.label = 'Agent'; // the speaker's name for new turns ("Human agent" while a person has taken over)
    this.timer = 0;
    this.subtitleTurn = null;
    this.subtitleTimer = 0;
  }

  clear() {
    for (const turn of this.turns.values()) {
      clearTimeout(turn.fallback);
      clearTimeout(turn.anchorTimer);
    }
    this.turns.clear();
    clearTimeout(this.timer);
    clearTimeout(this.subtitleTimer);
    this.subtitleTurn = null;
    this.subtitle.textContent = '';
    this.subtitle.hidden = true;
  }

  turn(eventId) {
    let turn = this.turns.get(eventId);
    if (!turn) {
      turn = {
        id: eventId, text: '', final: false, words: [], revealed: 0, mode: 'pending', cut: false, corrected: false,
        fallback: 0, anchorTimer: 0, anchor: undefined, label: this.label,
      };
      this.turns.set(eventId, turn);
    }
    return turn;
  }

  // ------------------------------------------------------------------------------------------------------------
  // Text

  /** `agent_response_part`: the reply for turn `eventId` grows as it streams (ignored once the final text came). */
  part(eventId, part, text) {
    const turn = this.turn(eventId);
    if (turn.final || turn.corrected) return;
    if (part === 'delta') turn.text += text;
    this.render(turn);
    if (part === 'stop') this.armFallback(turn);
  }

  /** `agent_response`: the final text of turn `eventId`; replaces the streamed one in the same bubble. */
  response(eventId, text) {
    const turn = this.turn(eventId);
    if (turn.corrected) return;
    turn.text = text;
    turn.final = true;
    this.render(turn);
    this.armFallback(turn);
  }

  /** `agent_response_correction`: what the agent really said of an interrupted turn; all of it was said. */
  correction(eventId, text) {
    const turn = this.turn(eventId);
    clearTimeout(turn.fallback);
    turn.text = text;
    turn.final = true;
    turn.corrected = true;
    turn.cut = true;
    this.reveal(turn, runs(text).length, 'correction');
    this.render(turn);
  }

  armFallback(turn) {
    clearTimeout(turn.fallback);
    if (turn.mode !== 'pending') return;
    turn.fallback = setTimeout(() => {
      if (turn.mode === 'pending' && !turn.cut) this.showAll(turn, 'no_alignment');
    }, NO_ALIGNMENT_MS);
  }

  // ------------------------------------------------------------------------------------------------------------
  // Timing

  /** `agent_alignment`: add its words to their turn (with `continues`, a fragment joins the previous word). */
  alignment(msg) {
    const turn = this.turn(msg.event_id);
    clearTimeout(turn.fallback);
    if (turn.mode === 'plain' || turn.mode === 'even' || turn.cut) return;
    turn.mode = 'aligned';
    // Word times are already from the start of the turn's speech (offset_ms is where this chunk starts in it).
    for (const word of Array.isArray(msg.words) ? msg.words : []) {
      const text = String(word?.text ?? '');
      const start = Number(word?.start_ms) || 0;
      const end = Number(word?.end_ms) || 0;
      const last = turn.words[turn.words.length - 1];
      if (word?.continues && last) {
        last.text += text;
        last.endMs = Math.max(last.endMs, end);
        continue;
      }
      turn.words.push({ text, startMs: start, endMs: end, due: turn.anchor === undefined ? null : turn.anchor + start });
    }
    // Never wait forever for a start that does not come (an avatar that never says it started): show the text.
    clearTimeout(turn.anchorTimer);
    turn.anchorTimer = setTimeout(() => {
      if (!turn.cut && turn.mode === 'aligned' && turn.words.some((w) => w.due === null)) this.showAll(turn, 'no_anchor');
    }, NO_ANCHOR_MS);
    this.render(turn);
    this.schedule();
  }

  /** The page's player scheduled the chunk that `msg` (its `agent_alignment`) describes; the chunk is heard from
   * `perfStart` (performance.now() time) on, so each of its words is due at perfStart + start_ms − offset_ms. */
  chunkScheduled(msg, perfStart) {
    const turn = this.turns.get(msg.event_id);
    if (!turn || turn.mode !== 'aligned' || turn.cut) return;
    const offset = Number(msg.offset_ms) || 0;
    for (const word of turn.words) {
      // A word of an earlier chunk that never played (dropped before the player existed) is due with this one.
      if (word.due === null) word.due = perfStart + Math.max(0, word.startMs - offset);
    }
    this.schedule();
  }

  /** The turn's audio plays with no alignment: nothing to time the words by, show them all. */
  unaligned(eventId) {
    const turn = this.turns.get(eventId);
    if (turn && turn.mode === 'pending' && !turn.cut) this.showAll(turn, 'no_alignment');
  }

  /** `avatar_state {speaking: true}`: the avatar started saying turn `eventId` (null: the newest unsaid one) now. */
  avatarStarted(eventId) {
    const turn = eventId === null || eventId === undefined ? this.latestUnstarted() : this.turns.get(eventId);
    if (!turn || turn.cut || turn.anchor !== undefined || turn.mode === 'plain' || turn.mode === 'even') return;
    turn.anchor = performance.now();
    for (const word of turn.words) if (word.due === null) word.due = turn.anchor + word.startMs;
    this.schedule();
  }

  /** `avatar_speaking` (HeyGen text mode): the avatar says `text` over about `durationMs` from now in its own voice;
   * the words are spread evenly over that time. */
  avatarSpeaking(eventId, text, durationMs) {
    let turn = eventId === null || eventId === undefined ? this.latestUnstarted() : this.turn(eventId);
    if (!turn) turn = this.turn(`speech-${this.turns.size}`);
    if (turn.cut || turn.mode === 'plain') return;
    clearTimeout(turn.fallback);
    if (!turn.text) turn.text = text;
    const words = runs(turn.text);
    const now = performance.now();
    const step = words.length ? Math.max(0, durationMs) / words.length : 0;
    turn.mode = 'even';
    turn.words = words.map((w, i) => ({ text: w.text, startMs: i * step, endMs: (i + 1) * step, due: now + i * step }));
    turn.revealed = 0;
    this.render(turn);
    this.schedule();
  }

  latestUnstarted() {
    let found = null;
    for (const turn of this.turns.values()) {
      if (!turn.cut && turn.anchor === undefined && turn.revealed === 0 && turn.mode !== 'plain') found = turn;
    }
    return found;
  }

  // ------------------------------------------------------------------------------------------------------------
  // Interruptions and the end

  /** `interruption {event_id}`: turns before `eventId` stop where the speech was cut. */
  interruption(eventId) {
    for (const turn of this.turns.values()) {
      if (typeof turn.id === 'number' && turn.id < eventId) this.cut(turn);
    }
  }

  /** The user pressed Interrupt: every turn so far stops where it is. */
  cutAll() {
    for (const turn of this.turns.values()) this.cut(turn);
  }

  cut(turn) {
    if (turn.cut) return;
    this.tickTurn(turn, performance.now());
    clearTimeout(turn.fallback);
    if (turn.mode === 'pending') {
      // Nothing was timed: keep the text that came (text is never lost).
      if (turn.text) this.showAll(turn, 'no_alignment');
      return;
    }
    if (turn.mode === 'plain') return;
    if (turn.revealed >= Math.max(turn.words.length, runs(turn.text).length)) return; // all of it was said already
    turn.cut = true;
    this.render(turn);
  }

  /** The conversation is over: whatever was not cut shows in full (text is never lost). */
  finishAll() {
    for (const turn of this.turns.values()) {
      clearTimeout(turn.fallback);
      clearTimeout(turn.anchorTimer);
      if (!turn.cut) this.showAll(turn, 'end');
    }
    clearTimeout(this.timer);
    clearTimeout(this.subtitleTimer);
    this.subtitleTurn = null;
    this.subtitle.hidden = true;
  }

  showAll(turn, why) {
    clearTimeout(turn.fallback);
    clearTimeout(turn.anchorTimer);
    if (turn.mode === 'pending') turn.mode = 'plain';
    this.reveal(turn, Math.max(runs(turn.text).length, turn.words.length), why);
    this.render(turn);
  }

  // ------------------------------------------------------------------------------------------------------------
  // The clock

  /** Reveal every word that is due; called on every animation frame and by a timer aimed at the next word. */
  tick() {
    const now = performance.now();
    for (const turn of this.turns.values()) this.tickTurn(turn, now);
    this.schedule();
  }

  tickTurn(turn, now) {
    if (turn.cut || !TIMED.has(turn.mode)) return;
    let count = turn.revealed;
    while (count < turn.words.length && turn.words[count].due !== null && turn.words[count].due <= now) count += 1;
    if (count > turn.revealed) {
      this.reveal(turn, count, 'speech', now);
      this.render(turn);
    }
  }

  schedule() {
    clearTimeout(this.timer);
    let next = Infinity;
    for (const turn of this.turns.values()) {
      if (turn.cut || !TIMED.has(turn.mode)) continue;
      const word = turn.words[turn.revealed];
      if (word && word.due !== null) next = Math.min(next, word.due);
    }
    if (next === Infinity) return;
    this.timer = setTimeout(() => this.tick(), Math.max(0, next - performance.now()));
  }

  reveal(turn, count, why, now = performance.now()) {
    const log = this.debug.captionLog;
    for (let i = turn.revealed; i < count; i++) {
      const word = turn.words[i];
      log.push({ eventId: turn.id, index: i, text: word?.text ?? null, due: word?.due ?? null, revealedAt: now, why });
    }
    if (log.length > MAX_LOG) log.splice(0, log.length - MAX_LOG);
    turn.revealed = Math.max(turn.revealed, count);
    if (why === 'speech') this.subtitleTurn = turn;
  }

  // ------------------------------------------------------------------------------------------------------------
  // Drawing

  render(turn) {
    const text = turn.text || turn.words.map((w) => w.text).join(' ');
    const wordRuns = runs(text);
    const shown = Math.min(turn.revealed, wordRuns.length);
    const split = shown === 0 ? 0 : shown >= wordRuns.length ? text.length : wordRuns[shown - 1].end;
    let state = 'pending';
    if (turn.cut) state = 'cut';
    else if (turn.revealed > 0 && split >= text.length) state = 'spoken';
    else if (turn.revealed > 0) state = 'speaking';
    this.transcript.agentCaption(turn.id, text, split, {
      label: turn.label, state, revealed: shown, words: wordRuns.length, final: turn.final,
      interrupted: turn.corrected || (turn.cut && shown < wordRuns.length),
    });
    if (this.subtitleTurn !== turn) return;
    const said = wordRuns.slice(Math.max(0, shown - SUBTITLE_WORDS), shown).map((w) => w.text).join(' ');
    this.subtitle.textContent = said;
    this.subtitle.hidden = !said;
    clearTimeout(this.subtitleTimer);
    if (turn.cut || shown >= wordRuns.length) {
      // The turn is over: the subtitle lingers a moment, like a film's.
      this.subtitleTimer = setTimeout(() => {
        if (this.subtitleTurn !== turn) return;
        this.subtitleTurn = null;
        this.subtitle.hidden = true;
      }, SUBTITLE_LINGER_MS);
    }
  }
}
