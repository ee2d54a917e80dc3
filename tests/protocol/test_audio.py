"""relay/protocol/audio.py against independent oracles: hand-made samples, the G.711 decoding table written out from the
standard (not from the module's bit tricks), numpy's sine, and soxr called directly on the whole signal."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import soxr  # type: ignore[import-untyped]

from relay.protocol.audio import (
    ELEVENLABS_FORMATS,
    AudioFormat,
    StreamingResampler,
    duration_seconds,
    parse_format,
    pcm16_to_ulaw,
    to_pcm16,
    ulaw_to_pcm16,
)


def pcm(*samples: int) -> bytes:
    """PCM16 LE bytes of the given samples."""
    return np.array(samples, dtype="<i2").tobytes()


def samples(data: bytes) -> list[int]:
    return [int(s) for s in np.frombuffer(data, dtype="<i2")]


def g711_ulaw_decode(code: int) -> int:
    """One mu-law byte to a 16-bit sample, from G.711's segment table: the byte is sent inverted; 1 sign bit,
    3 segment bits, 4 step bits; segment s, step q decodes to +/-(((2q + 33) << s) - 33) in the 14-bit range
    (0..8031), which is 4 x that in 16 bits."""
    inverted = code ^ 0xFF
    sign = -1 if inverted & 0x80 else 1
    segment = (inverted >> 4) & 0x7
    step = inverted & 0xF
    return sign * 4 * (((2 * step + 33) << segment) - 33)


# ---- formats ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ELEVENLABS_FORMATS)
def test_every_elevenlabs_format_parses_and_names_itself_back(name: str) -> None:
    assert parse_format(name).name == name


def test_parse_format_reads_encoding_and_rate() -> None:
    assert parse_format("pcm_16000") == AudioFormat("pcm", 16000)
    assert parse_format("ulaw_8000") == AudioFormat("ulaw", 8000)
    assert parse_format("pcm_44100").sample_rate == 44100


@pytest.mark.parametrize("name", ["mp3_44100", "ulaw_16000", "pcm_0", "pcm_", "pcm", "", "pcm_16k", "PCM_16000",
                                  "pcm_-16000", "opus_48000"])
def test_parse_format_refuses_what_elevenlabs_does_not_define(name: str) -> None:
    with pytest.raises(ValueError, match="unknown audio format"):
        parse_format(name)


def test_bytes_per_second_and_duration() -> None:
    assert AudioFormat("pcm", 16000).bytes_per_second == 32000
    assert AudioFormat("ulaw", 8000).bytes_per_second == 8000
    assert duration_seconds(b"\x00" * 16000, AudioFormat("pcm", 16000)) == 0.5
    assert duration_seconds(b"\xff" * 4000, AudioFormat("ulaw", 8000)) == 0.5


# ---- mu-law -------------------------------------------------------------------------------------------------------


def test_mu_law_known_values() -> None:
    # 0xFF and 0x7F are the two zeros; 0x80 / 0x00 the loudest positive / negative; 0xFE / 0x7E the smallest steps.
    decoded = samples(ulaw_to_pcm16(bytes([0xFF, 0x7F, 0x80, 0x00, 0xFE, 0x7E, 0xEF, 0xDF])))
    assert decoded == [0, 0, 32124, -32124, 8, -8, 132, 396]


def g711_linear2ulaw(sample: int) -> int:
    """The reference encoder, as g711.c's `linear2ulaw` (and Python's old audioop.lin2ulaw) computes it: the 14-bit
    magnitude (sample >> 2), the sign, clipped at 8159, biased by 0x21, the segment is the position of its top bit
    above bit 5, then 4 step bits; the byte is sent inverted (so +0 is 0xFF and -0, i.e. -1 >> 2, is 0x7F)."""
    value = sample >> 2
    mask = 0x7F if value < 0 else 0xFF
    magnitude = min(abs(value), 8159) + 0x21
    segment = magnitude.bit_length() - 6
    if segment > 7:  # only 8159 + 0x21 = 8192 itself: the top code
        return 0x7F ^ mask
    return ((segment << 4) | ((magnitude >> (segment + 1)) & 0x0F)) ^ mask


def test_mu_law_encoder_known_answers() -> None:
    # Silence is 0xFF (not the other zero, 0x7F); the loudest samples the top codes; small steps near zero (-1 is
    # already the first negative step, 0x7E, as in g711.c and audioop.lin2ulaw).
    codes = pcm16_to_ulaw(pcm(0, 3, -1, 32767, -32768, 8, -8, 132, 396))
    assert list(codes) == [0xFF, 0xFF, 0x7E, 0x80, 0x00, 0xFE, 0x7E, 0xEF, 0xDF]


def test_mu_law_encodes_every_pcm16_value_as_g711_says() -> None:
    every = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert list(pcm16_to_ulaw(every)) == [g711_linear2ulaw(v) for v in range(-32768, 32768)]


def test_mu_law_encoding_then_decoding_keeps_each_sample_within_its_step() -> None:
    values = [0, 1, -1, 100, -100, 1000, -1000, 10000, -10000, 32000, -32000]
    decoded = samples(ulaw_to_pcm16(pcm16_to_ulaw(pcm(*values))))
    for value, back in zip(values, decoded, strict=True):
        assert abs(back - value) <= max(8, abs(value) // 16), (value, back)
    assert pcm16_to_ulaw(pcm(5)[:1]) == b""  # a trailing odd byte is no sample


def test_mu_law_decodes_all_256_codes_as_g711_says() -> None:
    assert samples(ulaw_to_pcm16(bytes(range(256)))) == [g711_ulaw_decode(code) for code in range(256)]


def test_mu_law_is_one_sample_per_byte_in_order() -> None:
    assert ulaw_to_pcm16(b"") == b""
    assert samples(ulaw_to_pcm16(bytes([0x80, 0xFF, 0x00]))) == [32124, 0, -32124]


def test_to_pcm16_passes_pcm_through_and_decodes_mu_law() -> None:
    data = pcm(1, -2, 300, -32768, 32767)
    assert to_pcm16(data, AudioFormat("pcm", 24000)) == data
    assert samples(to_pcm16(bytes([0x80, 0xFF]), AudioFormat("ulaw", 8000))) == [32124, 0]


# ---- the streaming resampler --------------------------------------------------------------------------------------


def feed(resampler: StreamingResampler, data: bytes, sizes: list[int]) -> bytes:
    """Push `data` through in chunks of the given sizes (cycled), then flush."""
    out, at, i = [], 0, 0
    while at < len(data):
        size = sizes[i % len(sizes)]
        out.append(resampler.process(data[at:at + size]))
        at, i = at + size, i + 1
    out.append(resampler.flush())
    return b"".join(out)


def sine(rate: int, seconds: float, hz: float = 440.0, amplitude: float = 10000.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.sin(2 * np.pi * hz * t) * amplitude


def test_same_rate_pcm_passes_through_and_carries_a_split_sample() -> None:
    resampler = StreamingResampler(AudioFormat("pcm", 16000), 16000)
    # One sample (0x0201 = 513) split across two chunks, then another split the other way round.
    assert resampler.process(b"\x05\x00\x01") == pcm(5)
    assert resampler.process(b"\x02\x07") == pcm(513)
    assert resampler.process(b"\x00") == pcm(7)
    assert resampler.process(b"") == b""
    assert resampler.flush() == b""


def test_same_rate_bytes_one_at_a_time_come_out_whole() -> None:
    data = pcm(*range(-50, 50, 3))
    assert feed(StreamingResampler(AudioFormat("pcm", 22050), 22050), data, [1]) == data


def test_same_rate_mu_law_is_decoded() -> None:
    resampler = StreamingResampler(AudioFormat("ulaw", 8000), 8000)
    assert samples(resampler.process(bytes([0x80, 0x00, 0xFF]))) == [32124, -32124, 0]


def test_resampling_16k_to_24k_in_odd_chunks_is_the_same_signal_as_soxr_on_the_whole() -> None:
    source = sine(16000, 1.0).astype("<i2")
    out = feed(StreamingResampler(AudioFormat("pcm", 16000), 24000), source.tobytes(), [1, 333, 1001, 2, 4095, 7])
    got = np.frombuffer(out, dtype="<i2").astype(np.int32)
    whole = soxr.resample(source, 16000, 24000, quality="HQ").astype(np.int32)
    assert len(got) == len(whole) == 24000
    assert np.abs(got - whole).max() <= 2  # rounding of the int16 output only
    # and it is the same tone, sampled at 24 kHz (edges aside, where the filter rings in and out)
    expected = sine(24000, 1.0)
    assert np.abs(got[200:-200] - expected[200:-200]).max() < 10


def test_a_dropped_or_misplaced_split_byte_would_be_loud() -> None:
    # A quiet tone: any byte slip turns a sample's low byte into a high byte (hundreds of times louder).
    source = sine(16000, 0.25, amplitude=100).astype("<i2")
    out = feed(StreamingResampler(AudioFormat("pcm", 16000), 48000), source.tobytes(), [3])
    got = np.frombuffer(out, dtype="<i2").astype(np.int32)
    assert len(got) == 12000
    assert np.abs(got).max() < 120
    assert np.abs(got[300:-300] - sine(48000, 0.25, amplitude=100)[300:-300]).max() < 3


def test_mu_law_8k_to_24k() -> None:
    codes = bytes([0xFF] * 400 + [0x80, 0x00] * 200 + [0xFF] * 400)  # silence, a loud square burst, silence
    out = feed(StreamingResampler(AudioFormat("ulaw", 8000), 24000), codes, [77])
    got = np.frombuffer(out, dtype="<i2").astype(np.int32)
    decoded = np.array([g711_ulaw_decode(c) for c in codes], dtype="<i2")
    whole = soxr.resample(decoded, 8000, 24000, quality="HQ").astype(np.int32)
    assert len(got) == len(whole) == 3 * len(codes)
    assert np.abs(got - whole).max() <= 2
    assert np.abs(got[:900]).max() <= 1  # the leading silence stays silent (the filter rings in 70 ms ahead)


def test_flush_ends_a_turn_and_the_next_turn_starts_clean() -> None:
    source = sine(16000, 0.1).astype("<i2").tobytes()
    resampler = StreamingResampler(AudioFormat("pcm", 16000), 24000)
    whole = soxr.resample(np.frombuffer(source, dtype="<i2"), 16000, 24000, quality="HQ").astype(np.int32)
    for _turn in range(2):  # no tail of the first turn leaks into the second
        got = np.frombuffer(feed(resampler, source, [640]), dtype="<i2").astype(np.int32)
        assert len(got) == len(whole) == 2400
        assert np.abs(got - whole).max() <= 2


def test_a_turn_makes_one_soxr_stream_and_its_flush_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """A soxr stream costs more to make than a chunk to resample, and a turn's resampler is dropped after its flush:
    the stream is made for the turn's first audio, not again by the flush (only when audio follows it)."""
    made: list[object] = []
    real = soxr.ResampleStream

    def counting(*args: Any, **kwargs: Any) -> Any:
        made.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(soxr, "ResampleStream", counting)
    resampler = StreamingResampler(AudioFormat("pcm", 16000), 24000)
    assert made == []
    source = sine(16000, 0.1).astype("<i2").tobytes()
    feed(resampler, source, [640])  # process in chunks, then flush
    assert len(made) == 1
    assert resampler.flush() == b""  # nothing since the last flush: no tail, no stream
    assert len(made) == 1
    feed(resampler, source, [640])  # audio after a flush starts a new stream
    assert len(made) == 2
