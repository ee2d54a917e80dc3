// Live captions: the user's words, the agent's replies, corrections after an interruption, tool calls and notices.
//
// Entries are keyed by the protocol's event_id so a tentative user transcript is replaced by the final one, and an
// agent reply by its streamed parts, its final text and its correction (captions.js decides which of its words have
// been said: those are plain, the rest dimmed). The list is an aria-live region; it scrolls to the newest entry unless the reader
// has scrolled up to read something older. Text is always set with textContent, never parsed as HTML.

import { english } from './i18n.js';

// Thumb icons drawn inline (emoji fonts are not everywhere). Paths from Feather icons (MIT).
const THUMB_UP = 'M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3';
const THUMB_DOWN = 'M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3zm7-13h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17';
const SVG_NS = 'http://www.w3.org/2000/svg';

function icon(d) {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  const path = document.createElementNS(SVG_NS, 'path');
  path.setAttribute('d', d);
  svg.append(path);
  return svg;
}

export class Transcript {
  /**
   * @param {HTMLOListElement} list
   * @param {(key: string, vars?: object) => string} t the widget's words (i18n.js)
   */
  constructor(list, t = english) {
    this.list = list;
    this.t = t;
    this.entries = new Map();
    /** Set by the page: `(eventId, 'like' | 'dislike') => boolean` (true when the feedback was sent). */
    this.onFeedback = null;
  }

  clear() {
    this.list.replaceChildren();
    this.entries.clear();
  }

  /** What the user said; `final: false` is tentative and replaced by the next transcript for that event. */
  user(eventId, text, final) {
    const entry = this.entry(`user:${eventId}`, 'user', this.t('who.you'));
    entry.text.textContent = text;
    entry.item.classList.toggle('tentative', !final);
    this.scroll();
  }

  /** A message the user typed (it has no event_id of its own). */
  typed(text) {
    const entry = this.entry(null, 'user typed', this.t('who.you_typed'));
    entry.text.textContent = text;
    this.scroll();
  }

  /**
   * The agent's reply for turn `eventId`, drawn by the captions: `text[0:split]` has been said (shown plainly), the
   * rest is still to come (dimmed). The bubble carries what tests and styles need as data attributes.
   */
  agentCaption(eventId, text, split, { label = this.t('who.agent'), state = 'spoken', revealed = 0, words = 0, final = true, interrupted = false } = {}) {
    const key = `agent:${eventId}`;
    const isNew = !this.entries.has(key);
    const entry = this.entry(key, 'agent', label);
    if (isNew) {
      entry.spoken = document.createElement('span');
      entry.spoken.className = 'spoken';
      entry.unspoken = document.createElement('span');
      entry.unspoken.className = 'unspoken';
      entry.text.replaceChildren(entry.spoken, entry.unspoken);
      if (Number.isInteger(eventId)) entry.item.dataset.eventId = String(eventId);
    }
    const said = text.slice(0, split);
    const rest = text.slice(split);
    if (entry.spoken.textContent !== said) entry.spoken.textContent = said;
    if (entry.unspoken.textContent !== rest) entry.unspoken.textContent = rest;
    Object.assign(entry.item.dataset, { caption: state, revealed: String(revealed), words: String(words), final: String(final) });
    entry.item.classList.toggle('streaming', !final);
    if (interrupted) this.markInterrupted(entry.item);
    if (final && !entry.feedback && this.onFeedback && Number.isInteger(eventId)) {
      entry.feedback = this.feedbackButtons(eventId);
      entry.item.append(entry.feedback);
    }
    if (isNew || final) this.scroll();
  }

  /** A server tool's or MCP tool's progress, one line per call that changes with its state. */
  tool(callId, text, state) {
    const entry = this.entry(`tool:${callId}`, 'system tool', this.t('who.tool'));
    entry.text.textContent = text;
    entry.item.dataset.state = state;
    this.scroll();
  }

  feedbackButtons(eventId) {
    const group = document.createElement('div');
    group.className = 'feedback';
    group.setAttribute('role', 'group');
    group.setAttribute('aria-label', this.t('feedback.label'));
    const buttons = [['like', THUMB_UP, this.t('feedback.like')], ['dislike', THUMB_DOWN, this.t('feedback.dislike')]].map(([score, path, label]) => {
      const button = document.createElement('button');
      button.type = 'button';
      button.append(icon(path));
      button.setAttribute('aria-label', label);
      button.setAttribute('aria-pressed', 'false');
      button.addEventListener('click', () => {
        if (!this.onFeedback?.(eventId, score)) return;
        button.setAttribute('aria-pressed', 'true');
        for (const other of buttons) other.disabled = true;
      });
      return button;
    });
    group.append(...buttons);
    return group;
  }

  /** A line from the page itself (a tool call, a notice). */
  system(text, kind = 'note') {
    const entry = this.entry(null, `system ${kind}`, this.t(kind === 'tool' ? 'who.tool' : 'who.note'));
    entry.text.textContent = text;
    this.scroll();
  }

  markInterrupted(item) {
    if (item.classList.contains('interrupted')) return;
    item.classList.add('interrupted');
    const badge = document.createElement('span');
    badge.className = 'badge';
    badge.textContent = this.t('badge.interrupted');
    item.querySelector('.who').append(' ', badge);
  }

  entry(key, kind, label) {
    const existing = key === null ? undefined : this.entries.get(key);
    if (existing) return existing;
    const item = document.createElement('li');
    item.className = `entry ${kind}`;
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = label;
    const text = document.createElement('p');
    text.className = 'text';
    item.append(who, text);
    this.list.append(item);
    const entry = { item, text };
    if (key !== null) this.entries.set(key, entry);
    return entry;
  }

  scroll() {
    // Follow the conversation only if the reader has not scrolled up to read something older.
    const last = this.list.lastElementChild;
    if (!last) return;
    const el = this.list;
    if (el.scrollHeight - el.scrollTop - el.clientHeight < 48 + last.offsetHeight * 2) el.scrollTop = el.scrollHeight;
  }
}
