// A streaming windowed-sinc resampler (Blackman window) for mono Float32 audio.
//
// Shared by the capture worklet (microphone rate -> the agent's input rate) and the player (the agent's output
// rate -> the AudioContext rate). It keeps its history between blocks, so a stream cut into blocks of any size
// comes out exactly as if it had been resampled in one piece: no clicks at block edges. When downsampling, the
// cutoff is lowered below the output Nyquist frequency so the result does not alias. It must stay free of DOM and
// Web Audio APIs: it runs inside an AudioWorkletGlobalScope too.

const TABLE_RESOLUTION = 256; // kernel samples per input sample; linear interpolation in between
const ZERO_CROSSINGS = 8; // half-width of the kernel in zero crossings of the sinc

export class StreamingResampler {
  /**
   * @param {number} inputRate samples per second coming in
   * @param {number} outputRate samples per second going out
   */
  constructor(inputRate, outputRate) {
    if (!(inputRate > 0 && outputRate > 0)) throw new RangeError('sample rates must be positive');
    this.inputRate = inputRate;
    this.outputRate = outputRate;
    this.step = inputRate / outputRate; // input samples advanced per output sample
    // Cutoff in cycles per input sample (Nyquist = 0.5), a little under the lower of the two Nyquist frequencies.
    const cutoff = 0.5 * Math.min(1, outputRate / inputRate) * 0.92;
    this.gain = 2 * cutoff;
    this.halfWidth = ZERO_CROSSINGS / this.gain; // in input samples
    this.span = Math.ceil(this.halfWidth);
    const size = Math.ceil(this.halfWidth * TABLE_RESOLUTION) + 2;
    this.table = new Float32Array(size);
    for (let i = 0; i < size; i++) {
      const x = i / TABLE_RESOLUTION;
      if (x >= this.halfWidth) break;
      const u = this.gain * x;
      const sinc = u === 0 ? 1 : Math.sin(Math.PI * u) / (Math.PI * u);
      const w = 0.42 + 0.5 * Math.cos((Math.PI * x) / this.halfWidth) + 0.08 * Math.cos((2 * Math.PI * x) / this.halfWidth);
      this.table[i] = this.gain * sinc * w;
    }
    this.reset();
  }

  /** Forget all history (after an interruption, say): the next block starts a new stream. */
  reset() {
    this.buffer = new Float32Array(4096);
    // Start with `span` samples of silence so the first output sample can be centred on the first input sample.
    this.length = this.span;
    this.position = this.span;
  }

  /** The most output samples `process` can return for an input block of `inputLength` samples. */
  maxOutput(inputLength) {
    return Math.ceil((inputLength + this.span * 2 + 2) / this.step) + 2;
  }

  /**
   * Resample one block.
   * @param {Float32Array} input the next input samples
   * @param {Float32Array} [out] where to write (at least maxOutput(input.length) long); allocated when omitted
   * @returns {Float32Array} the output samples produced by this block (a view of `out`)
   */
  process(input, out) {
    if (this.inputRate === this.outputRate) return out ? (out.set(input), out.subarray(0, input.length)) : input.slice();
    out = out || new Float32Array(this.maxOutput(input.length));
    if (this.length + input.length > this.buffer.length) {
      const bigger = new Float32Array(Math.max(this.buffer.length * 2, this.length + input.length));
      bigger.set(this.buffer.subarray(0, this.length));
      this.buffer = bigger;
    }
    this.buffer.set(input, this.length);
    this.length += input.length;

    const buf = this.buffer;
    const table = this.table;
    const span = this.span;
    const halfWidth = this.halfWidth;
    let t = this.position;
    let n = 0;
    while (Math.floor(t) + span + 2 <= this.length) {
      const centre = Math.floor(t);
      let acc = 0;
      for (let k = centre - span; k <= centre + span + 1; k++) {
        const d = t > k ? t - k : k - t;
        if (d >= halfWidth) continue;
        const f = d * TABLE_RESOLUTION;
        const i = f | 0;
        const frac = f - i;
        acc += buf[k] * (table[i] + (table[i + 1] - table[i]) * frac);
      }
      out[n++] = acc;
      t += this.step;
    }
    // Drop the input no future output sample can reach.
    const drop = Math.floor(t) - span;
    if (drop > 0) {
      buf.copyWithin(0, drop, this.length);
      this.length -= drop;
      t -= drop;
    }
    this.position = t;
    return out.subarray(0, n);
  }
}
