"""The benchmark's plain parts: the synthetic voice with a send timestamp inside each frame, summaries of latency
samples, and the matching of what the agent simulator sent with what the avatar simulators received. No I/O,
no event loop; every process of the benchmark imports it.

A frame's first `HEADER_SAMPLES` PCM16 samples carry the sender's `time.monotonic()` as a float64, one byte per
sample (values 0..255), so the header stays far below the simulated agent's VAD threshold (RMS 500): silence with
a header is still silence. On Linux `time.monotonic()` is CLOCK_MONOTONIC, the same clock in every process.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import orjson
import soxr  # type: ignore[import-untyped]

SAMPLE_RATE = 16_000
HEADER_SAMPLES = 8
HEADER_BYTES = HEADER_SAMPLES * 2
_FLOAT = struct.Struct("<d")


def stamp(frame: bytearray, sent_at: float) -> None:
    """Write `sent_at` into the first HEADER_SAMPLES samples of a PCM16 LE frame, in place."""
    frame[0:HEADER_BYTES:2] = _FLOAT.pack(sent_at)
    frame[1:HEADER_BYTES:2] = bytes(HEADER_SAMPLES)


def read_stamp(pcm: bytes) -> float | None:
    """The timestamp `stamp` wrote, or None if the frame does not carry one (too short, or high bytes set)."""
    if len(pcm) < HEADER_BYTES or any(pcm[1:HEADER_BYTES:2]):
        return None
    value: float = _FLOAT.unpack(pcm[0:HEADER_BYTES:2])[0]
    return value if math.isfinite(value) and value > 0 else None


def speech_cycle(chunk_ms: int, speech_s: float, silence_s: float) -> list[bytes]:
    """One turn of the synthetic user as PCM16 16 kHz frames of `chunk_ms`: a voiced stretch loud enough for the
    simulated agent's VAD (a ~150 Hz tone with harmonics, RMS ~3000), then silence long enough for it to answer.
    Frames are templates: `stamp` a copy before sending."""
    per_chunk = SAMPLE_RATE * chunk_ms // 1000
    total = int(SAMPLE_RATE * (speech_s + silence_s))
    t = np.arange(total) / SAMPLE_RATE
    voiced = t < speech_s
    signal = (np.sin(2 * np.pi * 150 * t) + 0.5 * np.sin(2 * np.pi * 300 * t)) * 3500.0 * voiced
    pcm = signal.astype("<i2").tobytes()
    step = per_chunk * 2
    return [pcm[i:i + step] for i in range(0, len(pcm) - step + 1, step)]


def summary(samples: Sequence[float] | np.ndarray, scale: float = 1000.0) -> dict[str, Any]:
    """count, p50, p99, max and mean of `samples` (seconds) in milliseconds (`scale`), or None values if empty."""
    values = np.asarray(samples, dtype=np.float64)
    if not len(values):
        return {"count": 0, "p50": None, "p99": None, "max": None, "mean": None}
    p50, p99 = np.percentile(values, [50, 99])
    return {"count": len(values), "p50": round(float(p50) * scale, 3), "p99": round(float(p99) * scale, 3),
            "max": round(float(values.max()) * scale, 3), "mean": round(float(values.mean()) * scale, 3)}


def text_to_avatar_latencies(el_ledger: dict[str, Any], heygen_ledger: dict[str, Any],
                             pairs: Iterable[tuple[str, str]]) -> list[float]:
    """HeyGen text mode: for each (conversation_id, heygen session_id) the relay announced in `ready`, the time
    from each `agent_response` the agent simulator sent to the `streaming.task` with that text the HeyGen
    simulator received. Replies never delivered (e.g. the conversation ended first) are not counted."""
    conversations = {c["id"]: c for c in el_ledger["conversations"]}
    sessions = heygen_ledger["sessions"]
    out: list[float] = []
    for conversation_id, session_id in pairs:
        conversation, session = conversations.get(conversation_id), sessions.get(session_id)
        if conversation is None or session is None:
            continue
        received = {task["text"]: task["received_at"] for task in session["tasks"]}
        for _event_id, sent_at, _first_audio_at, text in conversation["reply_times"]:
            at = received.get(text)
            if at is not None:
                out.append(at - sent_at)
    return out


def first_audio_latencies(el_ledger: dict[str, Any], liveavatar_ledger: dict[str, Any],
                          pairs: Iterable[tuple[str, str]]) -> list[float]:
    """LiveAvatar: for each (conversation_id, session_id), the time from the first audio chunk of each reply the
    agent simulator sent to the first `agent.speak` of that turn (`turn-<event_id>`) the LiveAvatar simulator
    received."""
    conversations = {c["id"]: c for c in el_ledger["conversations"]}
    sessions = liveavatar_ledger["sessions"]
    out: list[float] = []
    for conversation_id, session_id in pairs:
        conversation, session = conversations.get(conversation_id), sessions.get(session_id)
        if conversation is None or session is None:
            continue
        events = session["lite"]["events"]
        for event_id, _sent_at, first_audio_at, _text in conversation["reply_times"]:
            received = events.get(f"turn-{event_id}")
            if received is not None and first_audio_at is not None and received["first_chunk_at"] is not None:
                out.append(received["first_chunk_at"] - first_audio_at)
    return out


class LiteSpeech:
    """The LiveAvatar LITE `agent.speak` messages for the agent's 16 kHz PCM: resampled to 24 kHz by one soxr stream
    per turn, base64 in JSON, `event_id` `turn-<id>` — what the asyncio baseline and the Trio floor send, built here
    once for both. No I/O."""

    def __init__(self) -> None:
        self._streams: dict[int, soxr.ResampleStream] = {}

    def message(self, pcm: bytes, event_id: int) -> str | None:
        """The message for one chunk of turn `event_id`, or None while the resampler holds it all back."""
        stream = self._streams.get(event_id)
        if stream is None:
            stream = self._streams[event_id] = soxr.ResampleStream(16000, 24000, 1, dtype="int16")
        out = stream.resample_chunk(np.frombuffer(pcm, dtype="<i2")).tobytes()
        if not out:
            return None
        return orjson.dumps({"type": "agent.speak", "event_id": f"turn-{event_id}",
                             "audio": base64.b64encode(out).decode()}).decode()
