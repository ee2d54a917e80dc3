"""The relay's CPU per second of agent audio on an audio-driven avatar's socket: Simli (binary PCM16 at 16 kHz) and
LiveAvatar LITE (base64 JSON at 24 kHz), each against `avatar-relay sim` running in another process on loopback.

`python -m bench.avatar_audio_cpu [--seconds 120] [--repeat 3]`: for each provider and agent format (pcm_16000,
pcm_24000) one session takes `--seconds` of a 440 Hz tone in 0.25 s chunks (a turn every 10 s) as fast as the
socket takes it; prints the set-up time (token to session handed over, no injected latency) and this process's CPU
time per second of audio (the median of `--repeat` runs). Only loopback; nothing here is imported by the relay.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import httpx2
import numpy as np
import trio
from pydantic import SecretStr

from relay.config import Settings
from relay.liveavatar import LiveAvatarProvider
from relay.protocol.audio import AudioFormat
from relay.simli import SimliProvider

CHUNKS_PER_TURN = 40


async def one_run(kind: str, fmt: AudioFormat, urls: dict[str, str], seconds: float) -> tuple[float, float, float]:
    """(set-up seconds, CPU seconds, audio seconds) of one session."""
    chunk = (np.sin(np.arange(fmt.sample_rate // 4) / fmt.sample_rate * 2 * np.pi * 440) * 8000).astype("<i2")
    data = chunk.tobytes()
    turns = max(1, int(seconds / (CHUNKS_PER_TURN * 0.25)))
    settings = Settings(_env_file=None, elevenlabs_agent_id="bench",  # type: ignore[call-arg]
                        simli_api_key=SecretStr("bench"), simli_base_url=urls["SIMLI_BASE_URL"],
                        simli_face_id="cace3ef7-a4c4-425d-a8cf-a5358eb0c427",
                        liveavatar_api_key=SecretStr("bench"), liveavatar_base_url=urls["LIVEAVATAR_BASE_URL"],
                        liveavatar_avatar_id="6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01")
    async with httpx2.AsyncClient() as http:
        provider = SimliProvider(settings, http) if kind == "simli" else LiveAvatarProvider(settings, http)
        started = time.perf_counter()
        async with provider.open_session(lambda event: None) as session:
            setup = time.perf_counter() - started
            await session.wait_connected()
            cpu_before = time.process_time()
            for turn in range(turns):
                for _ in range(CHUNKS_PER_TURN):
                    await session.speak_audio(data, fmt, turn)
                await session.end_turn(turn)
            cpu = time.process_time() - cpu_before
    return setup, cpu, len(data) * CHUNKS_PER_TURN * turns / fmt.bytes_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sims = subprocess.Popen([sys.executable, "-m", "relay", "sim"], stdout=subprocess.PIPE, text=True)
    try:
        assert sims.stdout is not None
        urls = dict(sims.stdout.readline().strip().split("=", 1) for _ in range(4))
        for kind in ("simli", "liveavatar"):
            for rate in (16000, 24000):
                fmt = AudioFormat("pcm", rate)
                runs = [trio.run(one_run, kind, fmt, urls, args.seconds) for _ in range(args.repeat)]
                setup = sorted(r[0] for r in runs)[len(runs) // 2]
                per_second = sorted(r[1] / r[2] for r in runs)[len(runs) // 2]
                print(f"{kind:10s} pcm_{rate}: set-up {setup * 1000:.0f} ms, CPU {per_second * 1000:.2f} ms per second "
                      f"of agent audio (median of {len(runs)})", flush=True)
    finally:
        sims.terminate()
        sims.wait()


if __name__ == "__main__":
    main()
