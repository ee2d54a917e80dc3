"""Loaded by Python at start-up in the process under test when `python -m bench --census` puts this directory first
on its PYTHONPATH: with BENCH_CENSUS set (the file to append to), every `trio.run` gets the census instrument
(bench.census). Any other process that finds this file does nothing."""

import os

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
