// Gapless playback of the agent's voice: PCM16 frames scheduled back to back on the AudioContext clock.
//
// Frames are resampled to the context rate with one streaming resampler (so frame edges never click), turned into
// AudioBuffers and started exactly where the previous one ends, behind a small jitter cushion. `flush()` stops
// everything at once (an interruption). The output goes through an AnalyserNode so the page can show — and tests
// can read — how loud the agent is. It must never hold audio across a flush.

import { StreamingResampler } from './resampler.js';

const JITTER_SECONDS = 0.08; // cushion added when playback (re)starts, absorbing network jitter

export class PcmPlayer {
  /**
   * @param {AudioContext} context
   * @param {number} sampleRate the rate of the PCM16 frames (ready.output_audio.sample_rate)
   */
  constructor(context, sampleRate) {
    this.context = context;
    this.sampleRate = sampleRate;
    this.resampler = new StreamingResampler(sampleRate, context.sampleRate);
    this.output = context.createGain();
    this.analyser = context.createAnalyser();
    this.analyser.fftSize = 1024;
    this.levelBuffer = new Float32Array(this.analyser.fftSize);
    this.output.connect(this.analyser);
    this.analyser.connect(context.destination);
    this.sources = new Set();
    this.nextStart = 0;
    this.carry = null; // an odd trailing byte from the previous frame
    this.framesPlayed = 0;
    this.underruns = 0;
  }

  /** Queue one binary frame (an ArrayBuffer of PCM16 little-endian mono). Returns when it will play, on the context
   * clock (`start`, seconds) and as heard (`heardAt`, performance.now() ms), and for how long (`duration`, seconds);
   * null if nothing was scheduled. */
  enqueue(arrayBuffer) {
    if (this.context.state === 'closed') return null;
    let bytes = new Uint8Array(arrayBuffer);
    if (this.carry !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = this.carry;
      joined.set(bytes, 1);
      bytes = joined;
      this.carry = null;
    }
    if (bytes.length % 2) {
      this.carry = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    if (bytes.length === 0) return null;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    const samples = new Float32Array(bytes.length / 2);
    for (let i = 0; i < samples.length; i++) samples[i] = view.getInt16(i * 2, true) / 0x8000;
    const resampled = this.resampler.process(samples);
    if (resampled.length === 0) return null;

    const buffer = this.context.createBuffer(1, resampled.length, this.context.sampleRate);
    buffer.copyToChannel(resampled, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.output);
    const now = this.context.currentTime;
    if (this.nextStart < now + 0.005) {
      if (this.sources.size > 0) this.underruns += 1;
      this.nextStart = now + JITTER_SECONDS;
    }
    const start = this.nextStart;
    source.start(start);
    this.nextStart += buffer.duration;
    this.sources.add(source);
    source.onended = () => {
      this.sources.delete(source);
      source.disconnect();
    };
    this.framesPlayed += 1;
    return { start, duration: buffer.duration, heardAt: this.heardAt(start) };
  }

  /** When a sample scheduled at context time `contextTime` reaches the listener, in performance.now() ms: through
   * the output timestamp (which includes the device's latency) when the browser gives one, else the current time
   * plus the announced output latency. */
  heardAt(contextTime) {
    const stamp = typeof this.context.getOutputTimestamp === 'function' ? this.context.getOutputTimestamp() : null;
    if (stamp && stamp.performanceTime > 0 && stamp.contextTime > 0) {
      return stamp.performanceTime + (contextTime - stamp.contextTime) * 1000;
    }
    const latency = (this.context.outputLatency || 0) + (this.context.baseLatency || 0);
    return performance.now() + (contextTime - this.context.currentTime + latency) * 1000;
  }

  /** Stop at once and drop everything queued (an interruption, or the end of the conversation). */
  flush() {
    for (const source of this.sources) {
      source.onended = null;
      try {
        source.stop();
      } catch {
        // never started: nothing to stop
      }
      source.disconnect();
    }
    this.sources.clear();
    this.nextStart = 0;
    this.carry = null;
    this.resampler.reset();
  }

  /** True while queued audio is still playing. */
  get playing() {
    return this.sources.size > 0 && this.context.currentTime < this.nextStart;
  }

  /** Seconds of audio queued ahead of the playhead. */
  get buffered() {
    return Math.max(0, this.nextStart - this.context.currentTime);
  }

  /** The RMS level (0..1) of what is being played right now. */
  level() {
    this.analyser.getFloatTimeDomainData(this.levelBuffer);
    let sum = 0;
    for (const s of this.levelBuffer) sum += s * s;
    return Math.sqrt(sum / this.levelBuffer.length);
  }

  /** Disconnect from the graph (the context itself belongs to the caller). */
  close() {
    this.flush();
    this.output.disconnect();
    this.analyser.disconnect();
  }
}
