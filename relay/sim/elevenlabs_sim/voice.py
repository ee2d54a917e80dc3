"""The agent's voice and ears: audio formats, mu-law, the synthetic voice (each word one voiced burst, so an
alignment says exactly when it sounds), and an energy VAD that counts audio time, not wall time."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from relay.sim.elevenlabs_sim.defaults import FORMATS

_VAD_FRAME_MS = 20


@dataclass(frozen=True, slots=True)
class AudioFormatSpec:
    ulaw: bool
    rate: int

    @property
    def bytes_per_second(self) -> int:
        return self.rate * (1 if self.ulaw else 2)


def audio_format(name: str) -> AudioFormatSpec:
    if name not in FORMATS:
        raise ValueError(f"unknown audio format {name!r}")
    encoding, _, rate = name.partition("_")
    return AudioFormatSpec(encoding == "ulaw", int(rate))


def _ulaw_decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    magnitude = (((codes & 0x0F) << 3) + 0x84) << exponent
    return np.where(codes & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


ULAW_DECODE = _ulaw_decode_table()


def ulaw_encode(samples: np.ndarray) -> bytes:
    """G.711 mu-law encoding of int16 samples (the inverse of the decode table above)."""
    values = samples.astype(np.int32)
    sign = (values < 0).astype(np.int32) << 7
    magnitude = np.minimum(np.abs(values), 32635) + 0x84
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 7, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    codes: np.ndarray = (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)
    return codes.tobytes()


@lru_cache(maxsize=16)
def _tone(rate: int, seconds: float) -> np.ndarray:
    """The voice's carrier without its syllable envelope: a gliding ~140 Hz fundamental with decaying harmonics
    (float, peak ~1). Cached: every reply uses a prefix of it."""
    t = np.arange(int(rate * seconds)) / rate
    pitch = 140.0 * (1.0 + 0.12 * np.sin(np.floor(t * 4.5) * 1.7)) * (1.0 + 0.01 * np.sin(2 * np.pi * 5.0 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    signal: np.ndarray = sum(np.sin(k * phase) / k for k in range(1, 7)) / 1.6  # type: ignore[assignment]
    return signal


@dataclass(frozen=True, slots=True)
class Speech:
    """A reply's synthetic speech: the PCM16 samples, and each character's start and duration (ms): every word
    (a run of non-space characters) is one voiced burst over exactly its characters' time, every space is
    silence — so the alignment sent with the audio says precisely when each word sounds."""

    samples: np.ndarray
    char_ms: float
    rate: int

    def boundary(self, char_index: int) -> int:
        return round(self.rate * char_index * self.char_ms / 1000)


def synthesize(rate: int, text: str, char_ms: float) -> Speech:
    total = Speech(np.zeros(0, dtype=np.int16), char_ms, rate).boundary(len(text))
    tone = _tone(rate, max(0.5, total / rate + 0.1))
    samples = np.zeros(total, dtype=np.float64)
    speech = Speech(samples, char_ms, rate)
    for word in re.finditer(r"\S+", text):
        start, end = speech.boundary(word.start()), speech.boundary(word.end())
        if end > start:
            x = (np.arange(end - start) + 0.5) / (end - start)
            samples[start:end] = tone[start:end] * np.sin(np.pi * x) ** 0.5 * 9000.0
    return Speech(np.clip(samples, -32767, 32767).astype(np.int16), char_ms, rate)


# Energy VAD (audio time, not wall time)


@dataclass(slots=True)
class Vad:
    fmt: AudioFormatSpec
    threshold: float
    start_ms: int
    end_ms: int
    tentative_ms: int
    leftover: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    odd_byte: bytes = b""
    speaking: bool = False
    above_ms: int = 0
    silence_ms: int = 0
    speech_ms: int = 0
    voiced_ms: int = 0
    last_tentative_ms: int = 0

    def feed(self, chunk: bytes) -> list[tuple[str, int]]:
        """Feed raw input audio; returns ("start", 0), ("tentative", ms) and ("end", voiced_ms) events."""
        if self.fmt.ulaw:
            samples = ULAW_DECODE[np.frombuffer(chunk, dtype=np.uint8)]
        else:
            data = self.odd_byte + chunk
            cut = len(data) & ~1
            self.odd_byte = data[cut:]
            samples = np.frombuffer(data[:cut], dtype=np.int16)
        if len(self.leftover):
            samples = np.concatenate((self.leftover, samples))
        frame = self.fmt.rate * _VAD_FRAME_MS // 1000
        whole = len(samples) // frame * frame
        self.leftover = samples[whole:].copy()
        if not whole:
            return []
        frames = samples[:whole].astype(np.float32).reshape(-1, frame)
        loud = (frames * frames).mean(axis=1) > self.threshold * self.threshold
        events: list[tuple[str, int]] = []
        for above in loud.tolist():
            if not self.speaking:
                self.above_ms = self.above_ms + _VAD_FRAME_MS if above else 0
                if self.above_ms >= self.start_ms:
                    self.speaking = True
                    self.speech_ms = self.voiced_ms = self.above_ms
                    self.silence_ms = self.last_tentative_ms = 0
                    self.above_ms = 0
                    events.append(("start", 0))
                continue
            self.speech_ms += _VAD_FRAME_MS
            if above:
                self.silence_ms = 0
                self.voiced_ms = self.speech_ms
                # Tentative transcripts only while words keep coming, like a streaming recogniser.
                if self.speech_ms - self.last_tentative_ms >= self.tentative_ms:
                    self.last_tentative_ms = self.speech_ms
                    events.append(("tentative", self.voiced_ms))
            else:
                self.silence_ms += _VAD_FRAME_MS
                if self.silence_ms >= self.end_ms:
                    self.speaking = False
                    events.append(("end", self.voiced_ms))
        return events
