"""The session journal: rows of dead processes are orphans (a reused pid does not fool it), and its writes, on a
worker thread, do not hold up the Trio loop (measured: the loop's longest stall while 500 sessions are recorded)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from relay.ops.journal import open_journal, process_alive, process_start_marker


async def test_rows_of_a_dead_process_are_orphans_and_ours_are_not(tmp_path: Path) -> None:
    dead = await trio.run_process([sys.executable, "-c", "import os; print(os.getpid())"], capture_stdout=True)
    dead_pid = int(dead.stdout)
    async with open_journal(tmp_path) as journal:
        await journal.opened("heygen", "ours", "http://h")
        journal._pid, journal._pid_started = dead_pid, "12345"
        await journal.opened("heygen", "theirs", "http://h")
        entries = {e.session_id: e for e in await journal.entries()}
    assert not entries["ours"].orphaned
    assert entries["theirs"].orphaned
    assert not process_alive(os.getpid(), "not-my-start-time")  # a reused pid is another process
    assert process_alive(os.getpid(), process_start_marker(os.getpid()))


def test_a_killed_process_not_yet_reaped_by_its_parent_is_dead() -> None:
    """A zombie (killed; its parent has not waited for it yet, e.g. a supervisor killed with it) still has a /proc
    entry with its start time: it must count as gone, or its sessions are never reaped."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        marker = process_start_marker(child.pid)
        assert process_alive(child.pid, marker)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.01)
        assert not process_alive(child.pid, marker)  # a zombie, not yet waited for
    finally:
        child.kill()
        child.wait()


async def test_a_reopened_journal_keeps_its_rows_and_forgets_closed_ones(tmp_path: Path) -> None:
    async with open_journal(tmp_path) as journal:
        kept = await journal.opened("liveavatar", "s-kept", "http://l")
        gone = await journal.opened("liveavatar", "s-gone", "http://l")
        await journal.closed(gone)
    async with open_journal(tmp_path) as journal:
        assert [(e.row, e.session_id) for e in await journal.entries()] == [(kept, "s-kept")]


async def test_journal_writes_do_not_stall_the_loop(tmp_path: Path) -> None:
    lag = 0.0

    async def ticker() -> None:
        nonlocal lag
        while True:
            before = time.perf_counter()
            await trio.sleep(0.001)
            lag = max(lag, time.perf_counter() - before - 0.001)

    # The garbage collector's pauses (tens of ms after the rest of the suite has run in this process) are not the
    # journal's: collect first and keep it off while measuring, so the stall measured is the journal's own.
    gc.collect()
    gc.disable()
    try:
        async with open_journal(tmp_path) as journal, trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            started = time.perf_counter()

            async def one(i: int) -> None:
                row = await journal.opened("heygen", f"s{i}", "http://h")
                await journal.closed(row)

            async with trio.open_nursery() as sessions:
                for i in range(500):
                    sessions.start_soon(one, i)
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()
    print(f"journal: 1000 writes in {elapsed:.2f} s, slowest write {journal.write_seconds_max * 1000:.1f} ms, "
          f"longest loop stall {lag * 1000:.1f} ms")
    assert lag < 0.05
    assert journal.write_seconds_max < 0.5
