"""`serve --workers N`: a worker that cannot start (exit status WORKER_STARTUP_FAILED, after printing its one line)
is not restarted: the supervisor stops the others and exits 1. Real child processes stand in for the workers."""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass

import trio

from relay.config import load_settings
from relay.server.seats import create_seats_file
from relay.server.startup import STARTUP_FAILED, WORKER_STARTUP_FAILED
from relay.server.workers import Plan, _Supervisor


@dataclass(frozen=True)
class ScriptedPlan(Plan):
    """Worker 0 runs `script`; the others sleep until signalled (as serving workers do)."""

    script: str = ""

    def command(self, index: int) -> list[str]:
        if index == 0:
            return [sys.executable, "-c", self.script]
        return [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, lambda *a: exit(0)); "
                                      "time.sleep(60)"]


async def run_supervisor_with(script: str) -> int:
    settings = load_settings(_env_file=None, relay_drain_timeout=1.0, relay_stop_timeout=1.0)
    seats = create_seats_file(2)
    try:
        plan = ScriptedPlan(settings, 2, listen_fd=seats, seats_fd=seats, directory=tempfile.gettempdir(),
                            script=script)
        with trio.fail_after(60):
            return await _Supervisor(plan).run()
    finally:
        os.close(seats)


async def test_a_worker_that_cannot_start_is_not_restarted_and_the_supervisor_exits_1() -> None:
    starts = os.path.join(tempfile.mkdtemp(), "starts")
    script = f"open({starts!r}, 'a').write('x'); raise SystemExit({WORKER_STARTUP_FAILED})"
    assert await run_supervisor_with(script) == STARTUP_FAILED
    assert await trio.Path(starts).read_text() == "x"  # started once: a restart would only repeat the mistake
