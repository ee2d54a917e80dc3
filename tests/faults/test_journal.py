"""The session journal: rows of dead processes are orphans (a reused pid does not fool it), and its writes, on a
worker thread, do not hold up the Trio loop (each statement waits for the loop to run while it is in progress)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
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


class LoopTicks:
    """Lets a thread wait until the Trio loop has run at least once more (`tick()` is called from the loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[threading.Event] = []

    def tick(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for event in waiting:
            event.set()

    def seen(self, timeout: float) -> bool:
        event = threading.Event()
        with self._lock:
            self._waiting.append(event)
        return event.wait(timeout)


class LoopWatchingConnection:
    """A stand-in for the journal's sqlite3 connection whose every statement waits, before it runs, until the Trio
    loop has run a tick during the statement (`LoopTicks.seen`): a statement run on the loop's own thread blocks the
    loop, so that tick never comes and the statement fails after `HANG_GUARD` seconds instead of running."""

    HANG_GUARD = 10.0

    def __init__(self, db: sqlite3.Connection, ticks: LoopTicks) -> None:
        self._db = db
        self._ticks = ticks
        self.statements = 0
        self.stalled = False

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        if self.stalled or not self._ticks.seen(self.HANG_GUARD):
            self.stalled = True  # the next statements fail at once
            raise AssertionError(f"the Trio loop did not run while the journal ran {sql.split()[0]} "
                                 f"(for {self.HANG_GUARD:.0f} s): the write holds up the loop")
        self.statements += 1
        return self._db.execute(sql, params)

    def __enter__(self) -> sqlite3.Connection:
        return self._db.__enter__()

    def __exit__(self, *exc: object) -> bool | None:
        return self._db.__exit__(*exc)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
async def test_journal_writes_do_not_stall_the_loop(tmp_path: Path) -> None:
    """Each journal statement (insert, delete, read) runs only once the loop has made progress after it began: on
    a worker thread it does at once; run on the loop itself, it would wait for a loop that cannot run, and fail.
    No clock is read: the loop either runs during the write or it does not."""
    ticks = LoopTicks()

    async def ticker() -> None:
        while True:
            ticks.tick()
            await trio.sleep(0.001)

    async with open_journal(tmp_path) as journal, trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        db = journal._db
        watched = LoopWatchingConnection(db, ticks)
        journal._db = watched  # type: ignore[assignment]

        async def one(i: int) -> None:
            row = await journal.opened("heygen", f"s{i}", "http://h")
            await journal.closed(row)

        try:
            async with trio.open_nursery() as sessions:
                for i in range(20):
                    sessions.start_soon(one, i)
            assert await journal.entries() == []
        finally:
            journal._db = db
        nursery.cancel_scope.cancel()
    assert watched.statements == 41  # 20 inserts, 20 deletes, 1 read: every one went through the watch
