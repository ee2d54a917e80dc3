// The microphone capture processor (runs in the AudioWorkletGlobalScope, off the main thread).
//
// It mixes the input down to mono, reports the input level about twenty times a second, and — once the page has
// told it the agent's input rate (after `ready`) — resamples with a streaming windowed-sinc filter and posts PCM16
// frames of the length the page asks for (RELAY_CLIENT_FRAME_MS, from client-config.json; FRAME_MS if none) to the
// page, transferring each buffer rather than copying it. Before it is configured it sends no audio at all: nothing may reach the relay before `ready`. It must never touch the DOM.

import { StreamingResampler } from './resampler.js';

const FRAME_MS = 60; // the default frame length, when the page does not say
const LEVEL_EVERY_SECONDS = 0.05;

class RelayCaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = null;
    this.frame = null;
    this.frameLength = 0;
    this.filled = 0;
    this.mono = new Float32Array(128);
    this.scratch = null;
    this.levelSum = 0;
    this.levelCount = 0;
    this.levelEvery = Math.round(sampleRate * LEVEL_EVERY_SECONDS);
    this.stopped = false;
    this.port.onmessage = (event) => {
      const msg = event.data;
      if (msg.type === 'configure') {
        this.resampler = new StreamingResampler(sampleRate, msg.sampleRate);
        const frameMs = Number.isFinite(msg.frameMs) ? Math.min(250, Math.max(20, msg.frameMs)) : FRAME_MS;
        this.frameLength = Math.round((msg.sampleRate * frameMs) / 1000);
        this.frame = new Int16Array(this.frameLength);
        this.filled = 0;
      } else if (msg.type === 'stop') {
        this.stopped = true;
      }
    };
  }

  process(inputs) {
    if (this.stopped) return false;
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const length = channels[0].length;
    if (this.mono.length !== length) this.mono = new Float32Array(length);
    const mono = this.mono;
    if (channels.length === 1) {
      mono.set(channels[0]);
    } else {
      mono.fill(0);
      for (const channel of channels) for (let i = 0; i < length; i++) mono[i] += channel[i] / channels.length;
    }

    for (let i = 0; i < length; i++) this.levelSum += mono[i] * mono[i];
    this.levelCount += length;
    if (this.levelCount >= this.levelEvery) {
      this.port.postMessage({ type: 'level', rms: Math.sqrt(this.levelSum / this.levelCount) });
      this.levelSum = 0;
      this.levelCount = 0;
    }

    if (this.resampler) this.emit(mono);
    return true;
  }

  emit(mono) {
    const needed = this.resampler.maxOutput(mono.length);
    if (!this.scratch || this.scratch.length < needed) this.scratch = new Float32Array(needed);
    const out = this.resampler.process(mono, this.scratch);
    for (let i = 0; i < out.length; i++) {
      const s = out[i] < -1 ? -1 : out[i] > 1 ? 1 : out[i];
      this.frame[this.filled++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.filled === this.frameLength) {
        const buffer = this.frame.buffer;
        this.port.postMessage({ type: 'frame', pcm: buffer }, [buffer]);
        // The transferred buffer is detached here (its view now has length 0): start a fresh one.
        this.frame = new Int16Array(this.frameLength);
        this.filled = 0;
      }
    }
  }
}

registerProcessor('relay-capture', RelayCaptureProcessor);
