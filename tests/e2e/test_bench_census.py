"""The benchmark's census of task steps (bench.census, `python -m bench --census`): the recorder and the window's
rates with no process at all, the start-up hook in a real Trio process, and the census of a short benchmark run of
the relay and the Trio floor (the asyncio baseline has none)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.census import DUMP_EVERY, CensusRecorder, read_lines, summary_line, window_rates
from bench.run import HOOK, ROOT, main


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_recorder_times_steps_by_task_name_and_writes_at_most_every_dump_interval() -> None:
    clock = FakeClock()
    recorder = CensusRecorder(clock)
    for name, took in (("relay.conversation.pumps.pump_agent_to_browser", 0.002), ("pump_agent_to_browser", 0.001),
                       ("run", 0.004)):
        recorder.step_began()
        clock.now += took
        recorder.step_ended(name)
    recorder.gc_event("start", {"generation": 0})
    clock.now += 0.0005
    recorder.gc_event("stop", {"generation": 0})
    line = recorder.line(10.0)
    assert line is not None and line.endswith("\n")
    totals = json.loads(line)
    assert totals["steps"] == {"pump_agent_to_browser": 2, "run": 1}  # a task's name is its last dotted part
    assert totals["step_s"]["pump_agent_to_browser"] == pytest.approx(0.003)
    assert totals["gc_s"] == pytest.approx(0.0005) and totals["gc_runs"] == [1, 0, 0]
    assert recorder.line(10.0 + DUMP_EVERY / 2) is None  # not yet
    assert recorder.line(10.0 + DUMP_EVERY * 1.01) is not None


def line(at: float, pid: int, step_s: dict[str, float], steps: dict[str, int], gc_s: float = 0.0) -> dict[str, object]:
    return {"at": at, "pid": pid, "step_s": step_s, "steps": steps, "gc_s": gc_s, "gc_runs": [0, 0, 0]}


def test_the_window_rates_come_from_the_lines_around_the_window_summed_over_processes() -> None:
    lines = [
        line(0.0, 1, {}, {}),
        line(1.0, 1, {"up": 0.05}, {"up": 1000}),  # the last at or before the window's start
        line(6.0, 1, {"up": 0.30}, {"up": 3500}, gc_s=0.01),
        line(11.0, 1, {"up": 0.55, "down": 0.1}, {"up": 6000, "down": 500}, gc_s=0.02),  # the first at or after its end
        line(12.0, 1, {"up": 9.0}, {"up": 9000}),
        line(1.0, 2, {"up": 0.0}, {"up": 0}),  # a second worker
        line(11.0, 2, {"up": 0.1}, {"up": 1000}),
    ]
    census = window_rates(lines, start=1.0, end=10.5)
    assert census is not None
    assert census["seconds"] == 10.0
    assert census["tasks"]["up"] == {"ms_per_s": 60.0, "steps_per_s": 600.0, "us_per_step": 100.0}
    assert census["tasks"]["down"] == {"ms_per_s": 10.0, "steps_per_s": 50.0, "us_per_step": 200.0}
    assert list(census["tasks"]) == ["up", "down"]  # the busiest first
    assert census["all_tasks_ms_per_s"] == 70.0
    assert census["gc_ms_per_s"] == 2.0
    assert "up 60 (100 µs/step)" in summary_line(census)
    assert window_rates(lines, start=0.5, end=20.0) is None  # no line after the end: not covered
    assert read_lines('{"at": 1}\n{"at": 2, "pid"') == [{"at": 1}]  # a torn last line is left out


def test_the_hook_counts_the_tasks_of_a_real_trio_process(tmp_path: Path) -> None:
    out = tmp_path / "census.jsonl"
    program = ("import trio\n"
               "async def busy():\n"
               "    for _ in range(300):\n"
               "        await trio.sleep(0.001)\n"
               "async def main():\n"
               "    async with trio.open_nursery() as nursery:\n"
               "        nursery.start_soon(busy, name='pumps.busy')\n"
               "trio.run(main)\n")
    env = {**os.environ, "BENCH_CENSUS": str(out),
           "PYTHONPATH": os.pathsep.join((str(HOOK), str(ROOT)))}
    subprocess.run([sys.executable, "-c", program], env=env, check=True, timeout=60)
    lines = read_lines(out.read_text())
    assert lines and lines[-1]["steps"]["busy"] >= 100
    # Without BENCH_CENSUS the hook does nothing (any process that finds it on its path).
    del env["BENCH_CENSUS"]
    subprocess.run([sys.executable, "-c", program], env=env, check=True, timeout=60)
    assert len(read_lines(out.read_text())) == len(lines)


@pytest.mark.timeout(200)
def test_a_census_run_reports_the_trio_implementations_tasks(tmp_path: Path) -> None:
    report = main(["--avatar", "liveavatar", "--clients", "2", "--duration", "4", "--impl", "relay,trio_floor,baseline",
                   "--upstream-tries", "1", "--census", "--out", str(tmp_path / "census.json")])
    rows = {row["impl"]: row for row in report["rows"]}
    assert {"pump_browser_to_agent", "pump_agent_to_browser"} <= set(rows["relay"]["census"]["tasks"])
    assert {"up", "down"} <= set(rows["trio_floor"]["census"]["tasks"])
    assert "census" not in rows["baseline"]  # asyncio: no Trio run loop
    for impl in ("relay", "trio_floor"):
        census = rows[impl]["census"]
        assert census["all_tasks_ms_per_s"] > 0 and census["seconds"] >= 0.5
        assert rows[impl]["errors"] == 0
