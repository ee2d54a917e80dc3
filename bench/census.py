"""A census of task steps: where a Trio implementation's CPU goes, task by task (`python -m bench --census`).

The process under test (the relay, `bench.trio_floor`, `bench.naive`) gets a Trio instrument through
`bench/process_hook/sitecustomize.py` (put first on its PYTHONPATH by the benchmark, with BENCH_CENSUS naming the file
to write): it times every task step by the task's name and the garbage collector's runs, and appends its running
totals as one JSON line every DUMP_EVERY seconds (`CensusRecorder`). The instrument costs a few µs per task step:
compare census runs with census runs. After the run, `window_rates` takes the lines around the
benchmark's CPU window (its start and end on the system's monotonic clock, which every process shares) and gives, per
task name, ms of step time per second, steps per second and µs per step, and the collector's ms per second — the
table docs/performance.md compares the relay and the floor with ("Round 9", "Round 10"). The asyncio baseline has no
Trio run loop: no census.

Pure functions and a recorder that only returns its lines: the hook writes them.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

DUMP_EVERY = 0.1  # seconds between two lines of running totals (the window is measured to within it)


class CensusRecorder:
    """Running totals of task-step time and count by task name (the last dotted part of the task's name, e.g.
    `pump_agent_to_browser`), and of the garbage collector's time and runs by generation. `line(now)` returns the
    JSON line to append when DUMP_EVERY has passed since the last one (else None)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.step_s: defaultdict[str, float] = defaultdict(float)
        self.steps: Counter[str] = Counter()
        self.gc_s = 0.0
        self.gc_runs = [0, 0, 0]
        self._step_began = 0.0
        self._gc_began = 0.0
        self._last_line = -float("inf")

    def step_began(self) -> None:
        self._step_began = self._clock()

    def step_ended(self, task_name: str) -> None:
        name = task_name.rsplit(".", 1)[-1]
        self.step_s[name] += self._clock() - self._step_began
        self.steps[name] += 1

    def gc_event(self, phase: str, info: dict[str, int]) -> None:
        """A `gc.callbacks` entry."""
        if phase == "start":
            self._gc_began = self._clock()
        else:
            self.gc_s += self._clock() - self._gc_began
            self.gc_runs[info["generation"]] += 1

    def line(self, now: float) -> str | None:
        """The totals as of `now` (monotonic seconds) as one JSON line, at most every DUMP_EVERY seconds."""
        if now - self._last_line < DUMP_EVERY:
            return None
        self._last_line = now
        return json.dumps({"at": now, "pid": os.getpid(), "step_s": self.step_s, "steps": self.steps, "gc_s": self.gc_s,
                           "gc_runs": self.gc_runs}) + "\n"


def read_lines(text: str) -> list[dict[str, Any]]:
    """The recorder's lines (a torn last line, from a process stopped mid-write, is left out)."""
    lines = []
    for raw in text.splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


def window_rates(lines: Iterable[dict[str, Any]], start: float, end: float) -> dict[str, Any] | None:
    """Per task name, ms of step time per second, steps per second and µs per step between the last line at or
    before `start` and the first at or after `end` (monotonic seconds), summed over the processes that wrote lines
    (`serve --workers`); the collector's ms per second and runs by generation; `seconds`, the span measured (the
    longest of the processes'). None when no process's lines cover the window."""
    by_process: dict[int, list[dict[str, Any]]] = {}
    for line in lines:
        by_process.setdefault(line.get("pid", 0), []).append(line)
    step_s: defaultdict[str, float] = defaultdict(float)
    steps: defaultdict[str, float] = defaultdict(float)
    gc_s, gc_runs, seconds = 0.0, [0, 0, 0], 0.0
    for own in by_process.values():
        own.sort(key=lambda line: line["at"])
        before = [line for line in own if line["at"] <= start]
        after = [line for line in own if line["at"] >= end]
        if not before or not after or after[0]["at"] <= before[-1]["at"]:
            continue
        first, last = before[-1], after[0]
        span = last["at"] - first["at"]
        seconds = max(seconds, span)
        for name, total in last["step_s"].items():  # per second of this process's own span
            step_s[name] += (total - first["step_s"].get(name, 0.0)) / span
            steps[name] += (last["steps"].get(name, 0) - first["steps"].get(name, 0)) / span
        gc_s += (last["gc_s"] - first["gc_s"]) / span
        gc_runs = [total + b - a for total, a, b in zip(gc_runs, first["gc_runs"], last["gc_runs"], strict=True)]
    if not seconds:
        return None
    tasks = {name: {"ms_per_s": round(step_s[name] * 1000, 2), "steps_per_s": round(steps[name], 1),
                    "us_per_step": round(step_s[name] * 1e6 / steps[name], 1)}
             for name in step_s if steps[name] > 0}
    return {
        "seconds": round(seconds, 2),
        "tasks": dict(sorted(tasks.items(), key=lambda item: -item[1]["ms_per_s"])),
        "all_tasks_ms_per_s": round(sum(task["ms_per_s"] for task in tasks.values()), 1),
        "gc_ms_per_s": round(gc_s * 1000, 2),
        "gc_runs": gc_runs,
    }


def summary_line(census: dict[str, Any], top: int = 5) -> str:
    """One line for the run's printout: all tasks, the `top` busiest, the collector."""
    busiest = ", ".join(f"{name} {task['ms_per_s']:g} ({task['us_per_step']:g} µs/step)"
                        for name, task in list(census["tasks"].items())[:top])
    return (f"census: tasks {census['all_tasks_ms_per_s']:g} ms/s — {busiest}; gc {census['gc_ms_per_s']:g} ms/s "
            f"{census['gc_runs']}")
