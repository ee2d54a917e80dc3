"""Loaded by Python at start-up in the benchmark's processes when `python -m bench` puts this directory first on
their PYTHONPATH (with the benchmark's tree after it):

- BENCH_TIME_RATE set (`--time-rate`; every process of the run): time runs that much slower (bench.slow_time);
- BENCH_CENSUS set (`--census`; the process under test; the file to append to): every `trio.run` gets the census
  instrument (bench.census).

Any other process that finds this file does nothing."""

import os

if os.environ.get("BENCH_TIME_RATE"):  # by its path: an older tree's `bench` (`--relay-src`) may come first
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "bench_slow_time", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "slow_time.py"))
    assert _spec is not None and _spec.loader is not None
    _slow_time = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_slow_time)
    _slow_time.install(float(os.environ["BENCH_TIME_RATE"]), float(os.environ["BENCH_TIME_BASE"]))

if os.environ.get("BENCH_CENSUS"):
    import gc
    import time

    import trio

    from bench.census import CensusRecorder

    _path = os.environ["BENCH_CENSUS"]
    _recorder = CensusRecorder()
    gc.callbacks.append(_recorder.gc_event)

    def _dump() -> None:
        line = _recorder.line(time.monotonic())
        if line is not None:
            with open(_path, "a") as out:
                out.write(line)

    class _Census(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            _recorder.step_began()

        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            _recorder.step_ended(task.name)
            _dump()

        def before_io_wait(self, timeout: float) -> None:
            _dump()

    _run = trio.run

    def _run_with_census(*args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["instruments"] = [*kwargs.get("instruments", ()), _Census()]
        return _run(*args, **kwargs)

    trio.run = _run_with_census
