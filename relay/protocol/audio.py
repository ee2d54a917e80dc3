"""Audio formats and streaming conversion. Pure functions and small stateful converters; no I/O.

ElevenLabs names formats `pcm_16000`, `ulaw_8000`, ...; avatars want PCM16 LE mono at their own rate (LiveAvatar:
24 kHz). Conversion must be streaming (chunk by chunk, state carried across chunks) so there are no clicks at chunk
boundaries. This module must never block on I/O or import trio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr  # type: ignore[import-untyped]

ELEVENLABS_FORMATS = (
    "pcm_8000",
    "pcm_16000",
    "pcm_22050",
    "pcm_24000",
    "pcm_44100",
    "pcm_48000",
    "ulaw_8000",
)


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """An audio format as ElevenLabs names it: `encoding` is "pcm" (PCM16 LE mono) or "ulaw"."""

    encoding: str
    sample_rate: int

    @property
    def name(self) -> str:
        return f"{self.encoding}_{self.sample_rate}"

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * (2 if self.encoding == "pcm" else 1)


def parse_format(name: str) -> AudioFormat:
    """`"pcm_16000"` -> AudioFormat("pcm", 16000). Raises ValueError on anything ElevenLabs does not define."""
    encoding, _, rate = name.partition("_")
    if encoding not in ("pcm", "ulaw") or not rate.isdigit():
        raise ValueError(f"unknown audio format {name!r}")
    fmt = AudioFormat(encoding, int(rate))
    if fmt.encoding == "ulaw" and fmt.sample_rate != 8000:
        raise ValueError(f"unknown audio format {name!r}")
    if fmt.sample_rate <= 0:
        raise ValueError(f"unknown audio format {name!r}")
    return fmt


def _ulaw_table() -> np.ndarray:
    # ITU-T G.711 mu-law decoding, the same table audioop.ulaw2lin builds.
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = ((mantissa << 3) + 0x84) << exponent
    sample = np.where(sign != 0, 0x84 - magnitude, magnitude - 0x84)
    return sample.astype(np.int16)


_ULAW_TO_PCM16 = _ulaw_table()


def ulaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 mu-law bytes to PCM16 LE (one sample per input byte)."""
    return _ULAW_TO_PCM16[np.frombuffer(data, dtype=np.uint8)].tobytes()


def _ulaw_encode_table() -> np.ndarray:
    # ITU-T G.711 mu-law encoding of every PCM16 value, on the 14-bit magnitude as the reference g711.c
    # `linear2ulaw` and audioop.lin2ulaw do: sample >> 2, sign, clip 8159, bias 0x21, segment, 4 mantissa bits,
    # everything inverted.
    value = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(value < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(value), 8159) + 0x21
    segment = np.maximum(np.floor(np.log2(magnitude)).astype(np.int32) - 5, 0)
    code = np.where(segment > 7, 0x7F, (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F))  # out of range
    return (code ^ mask).astype(np.uint8)


_PCM16_TO_ULAW = _ulaw_encode_table()


def pcm16_to_ulaw(data: bytes) -> bytes:
    """Encode PCM16 LE to G.711 mu-law (one byte per sample; a trailing odd byte is ignored)."""
    samples = np.frombuffer(data[: len(data) & ~1], dtype="<i2").astype(np.int32) + 32768
    return _PCM16_TO_ULAW[samples].tobytes()


def to_pcm16(data: bytes, fmt: AudioFormat) -> bytes:
    """Any ElevenLabs format -> PCM16 LE at the same sample rate."""
    return ulaw_to_pcm16(data) if fmt.encoding == "ulaw" else data


def duration_seconds(data: bytes, fmt: AudioFormat) -> float:
    return len(data) / fmt.bytes_per_second


class StreamingResampler:
    """Converts one continuous stream (one agent turn) from an ElevenLabs format to PCM16 LE at `out_rate`.

    Uses soxr's streaming resampler so filter state carries across chunks: the output of many small chunks is the
    same signal as the output of one big chunk (no clicks, no gaps). Call `flush()` once when the stream ends to get
    the filter's tail. Odd trailing bytes of a PCM chunk are carried to the next chunk.
    """

    def __init__(self, in_format: AudioFormat, out_rate: int) -> None:
        self.in_format = in_format
        self.out_rate = out_rate
        self._carry = b""
        self._passthrough = in_format.sample_rate == out_rate
        self._stream: soxr.ResampleStream | None = None  # made for the first audio after creation or a flush

    def process(self, data: bytes) -> bytes:
        pcm = to_pcm16(data, self.in_format)
        if self._carry:
            pcm = self._carry + pcm
            self._carry = b""
        if len(pcm) % 2:
            self._carry = pcm[-1:]
            pcm = pcm[:-1]
        if self._passthrough:
            return pcm
        if not pcm:
            return b""
        stream = self._stream
        if stream is None:
            stream = self._stream = soxr.ResampleStream(self.in_format.sample_rate, self.out_rate, 1, dtype="int16",
                                                        quality="HQ")
        out: bytes = stream.resample_chunk(np.frombuffer(pcm, dtype="<i2")).tobytes()
        return out

    def flush(self) -> bytes:
        """The filter's tail; the next `process` starts a new stream (made then: a turn's resampler is usually
        dropped after its flush, and making a soxr stream costs more than resampling a chunk)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return b""
        tail: bytes = stream.resample_chunk(np.zeros(0, dtype="<i2"), last=True).tobytes()
        return tail
