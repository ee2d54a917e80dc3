"""`python -m bench --time-rate R` (bench.slow_time): every process of a run sees time pass R times as fast, so a
run slowed by callgrind keeps its pace at N in the tens. The clocks of a hooked process (asyncio's, Trio's, `time`'s)
agree with one another and run slow against the real one; a process without the variables is untouched; and a
slowed benchmark is as clean as a real-time one, and takes 1/R of the time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.run import HOOK, ROOT, main
from tests.e2e.test_bench_smoke import assert_clean

CLOCKS = """
import asyncio, json, time, trio
def timed(fn):
    real, slow = time.perf_counter(), time.monotonic()
    fn()
    return [time.perf_counter() - real, time.monotonic() - slow]
print(json.dumps({"asyncio": timed(lambda: asyncio.run(asyncio.sleep(0.2))),
                  "trio": timed(lambda: trio.run(trio.sleep, 0.2)),
                  "sleep": timed(lambda: time.sleep(0.2))}))
"""


def clocks(**env: str) -> dict[str, list[float]]:
    done = subprocess.run([sys.executable, "-c", CLOCKS], capture_output=True, text=True, check=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": f"{HOOK}{os.pathsep}{ROOT}", **env})
    return {name: pair for name, pair in json.loads(done.stdout).items()}


def test_a_hooked_process_sleeps_in_slowed_seconds_on_every_clock() -> None:
    slowed = clocks(BENCH_TIME_RATE="0.25", BENCH_TIME_BASE=repr(time.monotonic()))
    for name, (real, slow) in slowed.items():
        assert real >= 0.8 - 0.02, (name, real)  # 0.2 slowed seconds are 0.8 real ones
        assert 0.19 <= slow <= real / 4 + 0.05, (name, slow)  # and `time.monotonic` says 0.2
    plain = clocks()  # no BENCH_TIME_RATE: the hook does nothing
    for name, (real, slow) in plain.items():
        assert 0.19 <= real < 0.6 and abs(real - slow) < 0.05, (name, real, slow)


@pytest.mark.timeout(200)
def test_a_slowed_benchmark_is_clean_and_takes_the_slowed_time(tmp_path: Path) -> None:
    began = time.perf_counter()
    report = main(["--clients", "2", "--duration", "3", "--impl", "relay,trio_floor", "--avatar", "liveavatar",
                   "--time-rate", "0.5", "--out", str(tmp_path / "slow.json")])
    elapsed = time.perf_counter() - began
    assert report["time_rate"] == 0.5
    for row in report["rows"]:
        assert_clean(row)
        assert row["upstream_direct_ms"] is None and row["setup_over_upstream_p50"] is None
        assert row["window_s"] >= 0.5  # slowed seconds of the conversations' own time
        assert 0 < row["cpu_core_share"] < 1.5  # over real seconds
    assert elapsed >= 2 * 2 * 3  # two runs of at least 3 slowed seconds each, at half speed
