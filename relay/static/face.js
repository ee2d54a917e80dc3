// The simulated avatar (demo mode): an SVG face whose mouth moves while the avatar speaks.
//
// Three things make it speak: the agent's audio actually playing (the mouth follows its loudness), an
// `avatar_state` speaking flag (audio-driven avatars), and an `avatar_speaking` duration (HeyGen text mode); with no
// audio the mouth moves in a syllable-like rhythm. It also blinks and breathes so it does not look frozen. It only
// draws: it never sends anything, and it reports what it shows (`mouthOpen`, `lastMouthMoveAt`) for tests.

const SYLLABLE_HZ = 4.2;

export class SimulatedFace {
  /** @param {SVGSVGElement} svg the face drawing in index.html */
  constructor(svg) {
    this.svg = svg;
    this.mouth = svg.querySelector('#mouth-shape');
    this.mouthClip = svg.querySelector('#mouth-clip-shape');
    this.tongue = svg.querySelector('#tongue');
    this.head = svg.querySelector('#head');
    this.eyes = [...svg.querySelectorAll('.eye')];
    this.brows = svg.querySelector('#brows');
    this.openness = 0;
    this.speakingUntil = 0;
    this.stateSpeaking = false;
    this.lastMouthMoveAt = 0;
    this.nextBlinkAt = performance.now() + 2500;
    this.blinkUntil = 0;
    this.draw(0, performance.now());
  }

  /** HeyGen text mode: the avatar speaks for about `ms` milliseconds from now. */
  speakFor(ms) {
    this.speakingUntil = performance.now() + Math.max(0, ms);
  }

  /** Audio-driven avatars: the avatar started or stopped speaking. */
  setSpeaking(speaking) {
    this.stateSpeaking = speaking;
  }

  /** Interrupted or ended: close the mouth now. */
  silence() {
    this.speakingUntil = 0;
    this.stateSpeaking = false;
  }

  /** True while the avatar is told to be speaking (audio aside). */
  get speaking() {
    return this.stateSpeaking || performance.now() < this.speakingUntil;
  }

  get mouthOpen() {
    return this.openness > 0.12;
  }

  /**
   * Advance the animation by one display frame.
   * @param {number} now performance.now()
   * @param {number} audioLevel RMS of the agent's audio being played right now (0..1)
   */
  tick(now, audioLevel) {
    let target = 0;
    if (audioLevel > 0.004) {
      target = Math.min(1, 0.12 + audioLevel * 5);
    } else if (this.speaking) {
      const t = now / 1000;
      const syllable = Math.abs(Math.sin(Math.PI * SYLLABLE_HZ * t)) * (0.75 + 0.25 * Math.sin(2 * Math.PI * 0.9 * t));
      target = 0.15 + 0.7 * syllable;
    }
    const previous = this.openness;
    // Open fast, close a little slower: it reads as speech rather than flapping.
    this.openness += (target - this.openness) * (target > this.openness ? 0.55 : 0.3);
    if (Math.abs(this.openness - previous) > 0.01) this.lastMouthMoveAt = Date.now();
    this.draw(this.openness, now);
  }

  draw(o, now) {
    const cx = 120;
    const cy = 156;
    const half = 22 - 3 * o;
    const d = `M ${cx - half} ${cy} Q ${cx} ${cy - 3 - 4 * o} ${cx + half} ${cy} Q ${cx} ${cy + 6 + 28 * o} ${cx - half} ${cy} Z`;
    this.mouth.setAttribute('d', d);
    this.mouthClip.setAttribute('d', d);
    this.tongue.setAttribute('cy', String(cy + 6 + 22 * o));

    if (now >= this.nextBlinkAt) {
      this.blinkUntil = now + 140;
      this.nextBlinkAt = now + 2600 + Math.random() * 2600;
    }
    const lid = now < this.blinkUntil ? 0.1 : 1;
    for (const eye of this.eyes) {
      const ex = Number(eye.dataset.cx);
      const ey = Number(eye.dataset.cy);
      eye.setAttribute('transform', `translate(${ex} ${ey}) scale(1 ${lid}) translate(${-ex} ${-ey})`);
    }
    const breathe = Math.sin(now / 900) * 1.2;
    const nod = this.openness > 0.05 ? Math.sin(now / 260) * 1.1 : 0;
    this.head.setAttribute('transform', `translate(0 ${breathe.toFixed(2)}) rotate(${nod.toFixed(2)} 120 200)`);
    this.brows.setAttribute('transform', `translate(0 ${(-3 * o).toFixed(2)})`);
  }
}
