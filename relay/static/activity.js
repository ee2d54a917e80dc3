// What the agent is doing besides talking: tools running (server tools, MCP tools, `end_call`), a person who has
// taken over the conversation and is typing — shown as chips in an aria-live list under the captions — and the
// approval dialog for MCP tool calls that wait for the user's yes or no.
//
// Text is always set with textContent. The dialog is a native <dialog> opened modally: focus moves into it (to Deny,
// the safer answer), Tab cycles its buttons, Enter answers the focused one, Escape denies. It counts down the
// service's own time-out and closes by itself when the call is answered elsewhere, fails or times out.

import { english } from './i18n.js';

// Well-known tools have friendly words of their own in the tables (chip.<tool>.running/done/failed); any other tool
// shows as its name.
const KNOWN_TOOLS = new Set(['lookup_order', 'get_weather', 'end_call', 'transfer_to_agent', 'transfer_to_number',
  'language_detection']);
const DONE_CHIP_MS = 4000; // a finished tool's chip stays this long
const FAILED_CHIP_MS = 8000;

function toolWords(t, name) {
  // A name is data: `toString` or `constructor` must not find Object.prototype's members (KNOWN_TOOLS is a Set).
  if (typeof name === 'string' && KNOWN_TOOLS.has(name)) return ['running', 'done', 'failed'].map((state) => t(`chip.${name}.${state}`));
  const spaced = String(name || 'tool').replaceAll('_', ' ');
  return [t('chip.using', { name: spaced }), t('chip.used', { name: spaced }), t('chip.tool_failed', { name: spaced })];
}

export class Activity {
  /**
   * @param {HTMLUListElement} list the chips' aria-live list
   * @param {import('./transcript.js').Transcript} transcript where each tool call also leaves a line
   * @param {(key: string, vars?: object) => string} t the widget's words (i18n.js)
   */
  constructor(list, transcript, t = english) {
    this.list = list;
    this.t = t;
    this.transcript = transcript;
    this.chips = new Map();
  }

  clear() {
    for (const chip of this.chips.values()) clearTimeout(chip.timer);
    this.chips.clear();
    this.list.replaceChildren();
  }

  /** Show (or update) chip `key`; `ttl` ms after which it goes away, or 0 to keep it. */
  chip(key, text, kind, state, ttl = 0) {
    let chip = this.chips.get(key);
    if (!chip) {
      const item = document.createElement('li');
      item.className = 'chip';
      const dot = document.createElement('span');
      dot.className = 'chip-dot';
      dot.setAttribute('aria-hidden', 'true');
      const label = document.createElement('span');
      label.className = 'chip-text';
      item.append(dot, label);
      this.list.append(item);
      chip = { item, label, timer: 0 };
      this.chips.set(key, chip);
    }
    clearTimeout(chip.timer);
    chip.item.dataset.kind = kind;
    chip.item.dataset.state = state;
    chip.item.dataset.key = key;
    if (chip.label.textContent !== text) chip.label.textContent = text;
    if (ttl > 0) chip.timer = setTimeout(() => this.remove(key), ttl);
  }

  remove(key) {
    const chip = this.chips.get(key);
    if (!chip) return;
    clearTimeout(chip.timer);
    chip.item.remove();
    this.chips.delete(key);
  }

  /** `tool_status`: a server tool (or `end_call`) is running, done or failed. */
  toolStatus(msg) {
    const id = String(msg.tool_call_id ?? msg.tool_name ?? 'tool');
    const name = String(msg.tool_name ?? 'tool');
    const state = ['running', 'done', 'failed'].includes(msg.state) ? msg.state : 'running';
    const [running, done, failed] = toolWords(this.t, name);
    const text = state === 'running' ? running : state === 'done' ? done : failed;
    this.chip(`tool:${id}`, text, 'tool', state, state === 'running' ? 0 : state === 'done' ? DONE_CHIP_MS : FAILED_CHIP_MS);
    this.transcript.tool(id, state === 'running' ? this.t('line.tool_running', { name })
      : this.t('line.tool_state', { name, state: this.t(`state.${state}`) }), state);
  }

  /** `mcp_tool_call`: an MCP tool's progress (the approval itself is the dialog's). */
  mcpToolCall(msg) {
    const id = String(msg.tool_call_id ?? 'mcp');
    const name = String(msg.tool_name ?? 'tool');
    const [running, done, failed] = toolWords(this.t, name);
    const states = {
      loading: [running, 'running', 0],
      awaiting_approval: [this.t('chip.awaiting_approval', { name }), 'waiting', 0],
      success: [done, 'done', DONE_CHIP_MS],
      failure: [msg.error_message ? this.t('chip.failed_detail', { text: failed, detail: msg.error_message }) : failed, 'failed',
        FAILED_CHIP_MS],
    };
    const [text, state, ttl] = Object.hasOwn(states, msg.state) ? states[msg.state] : states.loading;
    this.chip(`tool:${id}`, text, 'tool', state, ttl);
    const line = state === 'running' ? this.t('line.mcp_running', { name }) : state === 'waiting'
      ? this.t('line.mcp_waiting', { name }) : this.t('line.mcp_state', { name, state: this.t(`state.${state}`) });
    this.transcript.tool(id, line, state);
  }

  /** `human_agent`: a person took over (or left). */
  human(connected) {
    if (connected) this.chip('human', this.t('chip.human'), 'human', 'on');
    else {
      this.remove('human');
      this.remove('typing');
    }
  }

  /** `agent_typing`: the person is typing. */
  typing(typing) {
    if (typing) this.chip('typing', this.t('chip.typing'), 'typing', 'on');
    else this.remove('typing');
  }
}

export class ApprovalDialog {
  /**
   * @param {HTMLDialogElement} dialog the <dialog> in index.html
   * @param {(toolCallId: string, approved: boolean, how: string) => boolean} answer sends `mcp_approval`
   * @param {(key: string, vars?: object) => string} t the widget's words (i18n.js)
   */
  constructor(dialog, answer, t = english) {
    this.dialog = dialog;
    this.t = t;
    this.answer = answer;
    this.tool = dialog.querySelector('#approval-tool');
    this.service = dialog.querySelector('#approval-service');
    this.description = dialog.querySelector('#approval-description');
    this.params = dialog.querySelector('#approval-params');
    this.countdown = dialog.querySelector('#approval-countdown');
    this.bar = dialog.querySelector('#approval-bar > span');
    this.approveButton = dialog.querySelector('#approval-approve');
    this.denyButton = dialog.querySelector('#approval-deny');
    this.queue = []; // calls waiting for their turn in the dialog
    this.current = null; // {id, deadline, total}
    this.timer = 0;
    this.approveButton.addEventListener('click', () => this.decide(true, 'approve'));
    this.denyButton.addEventListener('click', () => this.decide(false, 'deny'));
    // Escape: the browser fires `cancel`; that is a "no".
    dialog.addEventListener('cancel', (event) => {
      event.preventDefault();
      this.decide(false, 'escape');
    });
  }

  get open() {
    return this.current !== null;
  }

  /** An `mcp_tool_call`: awaiting_approval asks; any other state for a call asked about closes its question. */
  update(msg) {
    const id = String(msg.tool_call_id ?? '');
    if (!id) return;
    if (msg.state === 'awaiting_approval') {
      if (this.current?.id === id || this.queue.some((q) => q.id === id)) return;
      const seconds = Number(msg.approval_timeout_secs);
      const total = Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : null;
      this.queue.push({ id, msg, deadline: total === null ? null : performance.now() + total, total });
      if (!this.current) this.next();
      return;
    }
    this.queue = this.queue.filter((q) => q.id !== id);
    if (this.current?.id === id) this.close();
  }

  next() {
    const item = this.queue.shift();
    if (!item) return;
    if (item.deadline !== null && item.deadline <= performance.now()) {
      this.next();
      return;
    }
    this.current = item;
    const { msg } = item;
    this.tool.textContent = String(msg.tool_name ?? this.t('approval.a_tool'));
    this.service.textContent = msg.service_id ? this.t('approval.from', { service: msg.service_id }) : '';
    this.description.textContent = msg.tool_description ? String(msg.tool_description) : '';
    this.description.hidden = !msg.tool_description;
    const rows = [];
    const params = msg.parameters && typeof msg.parameters === 'object' ? msg.parameters : {};
    for (const [key, value] of Object.entries(params)) {
      const dt = document.createElement('dt');
      dt.textContent = key;
      const dd = document.createElement('dd');
      dd.textContent = typeof value === 'string' ? value : JSON.stringify(value);
      rows.push(dt, dd);
    }
    this.params.replaceChildren(...rows);
    this.params.hidden = rows.length === 0;
    this.dialog.dataset.toolCallId = item.id;
    this.approveButton.disabled = false;
    this.denyButton.disabled = false;
    if (!this.dialog.open) this.dialog.showModal();
    this.denyButton.focus();
    this.tickCountdown();
  }

  tickCountdown() {
    clearTimeout(this.timer);
    const item = this.current;
    if (!item) return;
    if (item.deadline === null) {
      this.countdown.textContent = this.t('approval.waiting');
      this.bar.style.transform = 'scaleX(1)';
      return;
    }
    const left = Math.max(0, item.deadline - performance.now());
    const seconds = Math.ceil(left / 1000);
    const text = this.t('approval.left', { seconds });
    if (this.countdown.textContent !== text) this.countdown.textContent = text;
    this.bar.style.transform = `scaleX(${(left / item.total).toFixed(3)})`;
    if (left <= 0) {
      // The service gives up on its own (and tells us with a failure); an answer now would be dropped.
      this.close('expired');
      return;
    }
    this.timer = setTimeout(() => this.tickCountdown(), Math.min(250, left));
  }

  decide(approved, how) {
    const item = this.current;
    if (!item) return;
    this.answer(item.id, approved, how);
    this.close();
  }

  /** Close the question in the dialog (answered, settled elsewhere, or expired) and show the next one, if any. */
  close(why = 'closed') {
    clearTimeout(this.timer);
    const item = this.current;
    this.current = null;
    if (why === 'expired' && item) this.answer(item.id, null, 'expired');
    if (this.queue.length) {
      this.next();
      return;
    }
    if (this.dialog.open) this.dialog.close();
    delete this.dialog.dataset.toolCallId;
  }

  /** The conversation ended: drop every question. */
  reset() {
    this.queue = [];
    if (this.current) this.close();
  }
}
