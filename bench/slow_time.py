"""Slowed time for a whole benchmark (`python -m bench --time-rate R`): every process of a run (the simulators, the
implementation under test, the load generator) sees time pass R times as fast as it does, so the whole system
behaves as in real time while running 1/R times slower. Under callgrind (~50x slower) that is what lets N=50 or
N=100 conversations keep their pace: a conversation-second of work is the same work, done over 1/R seconds.

`install(rate, base)` is called at start-up by `bench/process_hook/sitecustomize.py` when BENCH_TIME_RATE is set
(BENCH_TIME_BASE: a `time.monotonic()` reading shared by the run's processes, so their stamps compare). It
replaces, in that process:

- `time.monotonic` (and `_ns`): base + R * (now - base) — asyncio's loop clock, the simulators' ledgers, the load
  generator's stamps and windows;
- `time.sleep`: sleeps the slowed duration;
- the `selectors` classes' `select(timeout)`: waits timeout / R (asyncio computes its waits in its own clock);
- `trio.run`: with `trio.testing.MockClock(rate=R)` unless a clock is given (Trio's clock is its own).

What stays real: `time.perf_counter`, `time.time` and CPU time (a CPU second is still a second: the benchmark divides
it by slowed conversation-seconds, which is the cost per conversation-second of media). Timeouts taken in C with
a real clock (a lock's acquire timeout) are not slowed; nothing on a benchmark's path depends on one.
"""

from __future__ import annotations

import functools
import selectors
import time
from collections.abc import Callable
from typing import Any


def slowed(rate: float, base: float, real: Callable[[], float]) -> Callable[[], float]:
    """A clock that reads `base` at real time `base` and then advances `rate` seconds per real second."""

    def clock() -> float:
        return base + rate * (real() - base)

    return clock


def install(rate: float, base: float) -> None:
    """Slow this process's clocks by `rate` (0 < rate <= 1); see the module docstring. Once per process."""
    if not 0 < rate <= 1:
        raise ValueError(f"BENCH_TIME_RATE must be in (0, 1], not {rate}")
    real_monotonic, real_sleep = time.monotonic, time.sleep
    monotonic = slowed(rate, base, real_monotonic)
    _replace(time, "monotonic", monotonic)
    _replace(time, "monotonic_ns", lambda: int(monotonic() * 1e9))
    _replace(time, "sleep", lambda seconds: real_sleep(seconds / rate))
    for selector in (selectors.SelectSelector, getattr(selectors, "_PollLikeSelector", None),
                     getattr(selectors, "EpollSelector", None)):
        if selector is not None and "select" in vars(selector):
            _replace(selector, "select", _slowed_select(vars(selector)["select"], rate))

    import trio
    import trio.testing

    run = trio.run

    @functools.wraps(run)
    def run_slowed(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("clock") is None:
            kwargs["clock"] = trio.testing.MockClock(rate=rate)
        return run(*args, **kwargs)

    _replace(trio, "run", run_slowed)


def _replace(owner: object, name: str, value: object) -> None:
    """Monkey-patch `owner.name` (typed loosely on purpose: these are the library's own functions, swapped)."""
    setattr(owner, name, value)


def _slowed_select(select: Callable[..., Any], rate: float) -> Callable[..., Any]:
    @functools.wraps(select)
    def slowed_select(self: Any, timeout: float | None = None) -> Any:
        return select(self, timeout if timeout is None or timeout <= 0 else timeout / rate)

    return slowed_select
