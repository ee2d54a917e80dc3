// What each turn felt like where the user is, measured by the page and reported to the relay (`client_metrics`).
//
// A turn starts at the end of the user's speech as the page sees it: the relay's final `user_transcript` (its voice
// activity and transcript signal), or the moment the page sends a typed message. From there the page times
//   - speech_to_audio_ms: the agent's first audio heard (the page's player says when a chunk reaches the ears;
//     an avatar that plays the voice itself speaks in its video, so there it is the mouth's time below),
//   - speech_to_mouth_ms: the avatar's mouth moving — the first video frame presented after the avatar's speaking
//     signal (requestVideoFrameCallback where the browser has it, else the next animation frame), or the drawn
//     face's mouth opening in demo mode,
//   - caption_offset_ms: how late the turn's captions were shown after their words were said (the captions already
//     log when each word was due and when it was revealed),
// and, whenever the avatar's video plays, each freeze (no new frame for FREEZE_MS or more) by its length.
// A turn is reported SETTLE_MS after its first audio or mouth (more of its captions by then), or as soon as the
// next turn starts; reports go at most every REPORT_EVERY_MS, at most MAX_TURNS turns and MAX_FREEZES freezes
// each (the relay drops anything bigger or more frequent), and once more, at once, when the conversation ends.
// Values only: what the relay labels them with (the avatar provider) it knows itself. This module never touches the
// DOM; the clock, the timers and the sender are given to it.

export const REPORT_EVERY_MS = 5000;
export const SETTLE_MS = 4000;
export const GIVE_UP_MS = 30000; // a turn the agent never answered is forgotten after this
export const FREEZE_MS = 500;
export const MAX_TURNS = 8;
export const MAX_FREEZES = 16;
const MAX_MS = 120000;

/** A duration for the report: a finite number of ms within [0, MAX_MS], rounded to 0.1 ms; else null. */
function bounded(ms) {
  return Number.isFinite(ms) && ms >= 0 && ms <= MAX_MS ? Math.round(ms * 10) / 10 : null;
}

/** The mean lateness (ms) of turn `eventId`'s captions: each word revealed by the speech clock, minus when it was
 * due (the captions' log, `debug.captionLog`); null when no word of it was timed. */
export function captionOffset(captionLog, eventId) {
  let sum = 0;
  let count = 0;
  for (const word of captionLog) {
    if (word.eventId !== eventId || word.why !== 'speech' || typeof word.due !== 'number') continue;
    sum += Math.max(0, word.revealedAt - word.due);
    count += 1;
  }
  return count ? sum / count : null;
}

export class TurnMeter {
  /**
   * @param {object} options
   * @param {(message: object) => boolean} options.send sends a `client_metrics` frame (false: not sent)
   * @param {(eventId: number) => number | null} [options.captionOffset] the turn's caption lateness (ms)
   * @param {() => number} [options.now] the clock (performance.now() ms)
   * @param {object} [options.debug] window.__relayDebug: `turnTimings` (every turn reported) is kept there
   */
  constructor({ send, captionOffset: offset = () => null, now = () => performance.now(), debug = null,
    setTimer = (fn, ms) => setTimeout(fn, ms), clearTimer = (id) => clearTimeout(id) }) {
    this.send = send;
    this.captionOffset = offset;
    this.now = now;
    this.debug = debug;
    this.setTimer = setTimer;
    this.clearTimer = clearTimer;
    this.turn = null; // the turn being timed: {stoppedAt, eventId, audioAt, mouthAt, settleTimer, giveUpTimer}
    this.ready = []; // turns finished, not reported yet
    this.freezes = []; // freezes seen since the last report (ms)
    this.lastSentAt = -Infinity;
    this.newestAgentTurn = -1; // the newest agent turn heard of: what the user answers, not what answers them
    this.sendTimer = 0;
    this.closed = false;
  }

  /** The end of the user's speech (a final transcript, or a typed message sent), at `at`: a new turn starts. */
  userStopped(at = this.now()) {
    if (this.closed) return;
    if (this.turn && (this.turn.audioAt !== null || this.turn.mouthAt !== null)) this.finishTurn();
    else if (this.turn) this.dropTurn(); // the user spoke again before any answer: time from their latest words
    const turn = { stoppedAt: at, after: this.newestAgentTurn, eventId: null, audioAt: null, mouthAt: null,
      settleTimer: 0, giveUpTimer: 0 };
    turn.giveUpTimer = this.setTimer(() => {
      if (this.turn === turn) this.dropTurn();
    }, GIVE_UP_MS);
    this.turn = turn;
  }

  /** The agent's audio of turn `eventId` is first heard at `heardAt` (performance.now() ms). */
  audioHeard(eventId, heardAt) {
    const turn = this.turn;
    if (!this.answers(eventId)) return; // the rest of a reply that began before the user's turn ended
    if (!turn || turn.audioAt !== null || !(heardAt >= turn.stoppedAt)) return;
    turn.audioAt = heardAt;
    if (typeof eventId === 'number' && eventId >= 0) turn.eventId = eventId;
    this.settleLater(turn);
  }

  /** The avatar's mouth is first seen moving at `at` (a video frame after its speaking signal, or the drawn
   * face's mouth opening); `speaksItself`: the avatar plays the voice (then this is when it is heard, too). */
  mouthMoved(at, speaksItself = false) {
    const turn = this.turn;
    if (!turn || turn.mouthAt !== null || !(at >= turn.stoppedAt)) return;
    turn.mouthAt = at;
    if (speaksItself && turn.audioAt === null) turn.audioAt = at;
    this.settleLater(turn);
  }

  /** The agent turn now answering (for the report's `event_id`, when the audio did not say). */
  agentTurn(eventId) {
    if (!this.answers(eventId)) return;
    if (this.turn && this.turn.eventId === null && typeof eventId === 'number' && eventId >= 0) this.turn.eventId = eventId;
  }

  /** Whether agent turn `eventId` can be the answer to the turn being timed (a newer one than the user heard
   * before they stopped; an unnumbered one may be); notes the newest agent turn. */
  answers(eventId) {
    if (typeof eventId !== 'number' || eventId < 0) return true;
    this.newestAgentTurn = Math.max(this.newestAgentTurn, eventId);
    return !this.turn || eventId > this.turn.after;
  }

  /** The avatar's video stood still for `ms` before its next frame. */
  freeze(ms) {
    if (this.closed || !(ms >= FREEZE_MS)) return;
    this.freezes.push(Math.min(ms, MAX_MS));
    if (this.freezes.length > MAX_FREEZES) this.freezes.splice(0, this.freezes.length - MAX_FREEZES);
    this.sendSoon();
  }

  settleLater(turn) {
    this.clearTimer(turn.settleTimer);
    turn.settleTimer = this.setTimer(() => {
      if (this.turn === turn) this.finishTurn();
    }, SETTLE_MS);
  }

  dropTurn() {
    this.clearTimer(this.turn.settleTimer);
    this.clearTimer(this.turn.giveUpTimer);
    this.turn = null;
  }

  finishTurn() {
    const turn = this.turn;
    this.dropTurn();
    const timings = {
      event_id: turn.eventId,
      speech_to_audio_ms: turn.audioAt === null ? null : bounded(turn.audioAt - turn.stoppedAt),
      speech_to_mouth_ms: turn.mouthAt === null ? null : bounded(turn.mouthAt - turn.stoppedAt),
      caption_offset_ms: turn.eventId === null ? null : bounded(this.captionOffset(turn.eventId)),
    };
    this.ready.push(timings);
    if (this.ready.length > MAX_TURNS) this.ready.splice(0, this.ready.length - MAX_TURNS);
    this.debug?.turnTimings?.push(timings);
    this.sendSoon();
  }

  /** Report what is ready now if the last report is REPORT_EVERY_MS old, else when it is. */
  sendSoon() {
    if (this.sendTimer || this.closed) return;
    const wait = this.lastSentAt + REPORT_EVERY_MS - this.now();
    if (wait <= 0) {
      this.report();
      return;
    }
    this.sendTimer = this.setTimer(() => {
      this.sendTimer = 0;
      this.report();
    }, wait);
  }

  report() {
    if (!this.ready.length && !this.freezes.length) return;
    const message = { type: 'client_metrics', turns: this.ready, freezes_ms: this.freezes };
    if (!this.send(message)) return; // not connected now (resuming): kept for the next report
    this.ready = [];
    this.freezes = [];
    this.lastSentAt = this.now();
    if (this.debug) this.debug.clientMetricsSent = (this.debug.clientMetricsSent ?? 0) + 1;
  }

  /** The conversation ends: the turn being timed, if answered, and everything not reported go now; nothing after. */
  close() {
    if (this.closed) return;
    if (this.turn && (this.turn.audioAt !== null || this.turn.mouthAt !== null)) this.finishTurn();
    else if (this.turn) this.dropTurn();
    this.clearTimer(this.sendTimer);
    this.sendTimer = 0;
    this.report();
    this.closed = true;
  }
}

/** Watches the avatar's <video>: each freeze (FREEZE_MS or more without a new frame while it plays) goes to
 * `onFreeze(ms)`, and `nextFrame(callback)` calls back with the time of the next frame presented. Uses
 * requestVideoFrameCallback where the browser has it, else the video's currentTime on animation frames (`tick`).
 * A hidden page draws no frames: `reset()` (the page hidden or shown) keeps that gap from counting. */
export class VideoWatch {
  constructor(video, onFreeze, { now = () => performance.now() } = {}) {
    this.video = video;
    this.onFreeze = onFreeze;
    this.now = now;
    this.lastFrameAt = null;
    this.lastTime = null;
    this.waiting = [];
    this.stopped = false;
    this.handle = 0;
    this.frameBased = typeof video.requestVideoFrameCallback === 'function';
    if (this.frameBased) this.handle = video.requestVideoFrameCallback((at) => this.onFrame(at));
  }

  onFrame(at) {
    if (this.stopped) return;
    this.frame(at);
    this.handle = this.video.requestVideoFrameCallback((next) => this.onFrame(next));
  }

  /** A new frame presented at `at`. */
  frame(at) {
    const gap = this.lastFrameAt === null ? 0 : at - this.lastFrameAt;
    this.lastFrameAt = at;
    if (gap >= FREEZE_MS && !this.video.paused) this.onFreeze(gap);
    const waiting = this.waiting;
    this.waiting = [];
    for (const callback of waiting) callback(at);
  }

  /** Without requestVideoFrameCallback: called on every animation frame; a frame is a change of currentTime. */
  tick(now = this.now()) {
    if (this.stopped || this.frameBased) return;
    const time = this.video.currentTime;
    if (time !== this.lastTime) {
      this.lastTime = time;
      this.frame(now);
    }
  }

  /** Forget the last frame (the page was hidden or shown: the gap is not the video's). */
  reset() {
    this.lastFrameAt = null;
  }

  /** Call `callback(at)` with the time of the next frame presented. */
  nextFrame(callback) {
    if (!this.stopped) this.waiting.push(callback);
  }

  stop() {
    this.stopped = true;
    this.waiting = [];
    if (this.frameBased && this.handle) this.video.cancelVideoFrameCallback?.(this.handle);
  }
}
