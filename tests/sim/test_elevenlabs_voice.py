"""The simulated agent's voice and ears (relay/sim/elevenlabs_sim/voice.py), without sockets: the synthetic voice
sounds exactly where its alignment says, mu-law round-trips, and the VAD counts audio time."""

from __future__ import annotations

import numpy as np

from relay.sim.elevenlabs_sim.voice import ULAW_DECODE, Vad, audio_format, synthesize, ulaw_encode


def test_each_word_sounds_over_its_characters_and_each_space_is_silence() -> None:
    speech = synthesize(16000, "hi there", 50.0)
    assert len(speech.samples) == speech.boundary(len("hi there")) == 6400
    space = speech.samples[speech.boundary(2):speech.boundary(3)]
    word = speech.samples[speech.boundary(3):speech.boundary(8)]
    assert not space.any() and np.abs(word).max() > 1000


def test_mu_law_round_trips_within_its_step() -> None:
    samples = np.array([-32000, -1000, -1, 0, 1, 1000, 32000], dtype=np.int16)
    decoded = ULAW_DECODE[np.frombuffer(ulaw_encode(samples), dtype=np.uint8)].astype(int)
    assert (np.abs(decoded - samples) <= np.maximum(8, np.abs(samples.astype(int)) // 16)).all()
    assert audio_format("ulaw_8000").bytes_per_second == 8000 and audio_format("pcm_24000").bytes_per_second == 48000


def test_the_vad_hears_a_turn_in_audio_time_whatever_the_chunking() -> None:
    fmt = audio_format("pcm_16000")
    loud = (np.ones(16000 // 50, dtype=np.int16) * 3000).tobytes()  # 20 ms frames
    quiet = np.zeros(16000 // 50, dtype=np.int16).tobytes()
    vad = Vad(fmt, threshold=500, start_ms=100, end_ms=600, tentative_ms=500)
    audio = loud * 50 + quiet * 40  # 1 s of speech, 0.8 s of silence
    events = [event for i in range(0, len(audio), 999) for event in vad.feed(audio[i:i + 999])]  # odd chunks
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and "tentative" in kinds
    assert events[-1][1] == 1000  # voiced milliseconds, from the samples, not the clock
