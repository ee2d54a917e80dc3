"""The journal without a process: of two processes reaping at once, exactly one claims each row."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from relay.ops import journal as journal_module
from relay.ops.journal import open_journal


async def test_of_two_processes_reaping_at_once_exactly_one_claims_each_row(tmp_path: Path) -> None:
    async with open_journal(tmp_path) as writer:
        writer._pid, writer._pid_started = 999_999, "gone"
        await writer.opened("heygen", "s-1", "http://h")
    async with open_journal(tmp_path) as a, open_journal(tmp_path) as b:
        (entry,) = await a.entries()
        assert entry.orphaned
        b._pid, b._pid_started = os.getpid() + 1, "another process"  # as if b were another worker
        wins: list[bool] = []
        async with trio.open_nursery() as nursery:
            for journal in (a, b):
                nursery.start_soon(lambda j=journal: _claim(j, entry, wins))
        assert sorted(wins) == [False, True]
        winner = a if (await a.entries())[0].pid == os.getpid() else b
        await winner.release(entry)  # could not stop it: back to its dead owner
        (again,) = await a.entries()
        assert (again.pid, again.pid_started) == (999_999, "gone") and again.orphaned


async def _claim(journal: object, entry: object, wins: list[bool]) -> None:
    wins.append(await journal.claim(entry))  # type: ignore[attr-defined]


class _LockedAtFirst:
    """A real SQLite connection whose first `fails` WAL switches answer "database is locked", as SQLite does when
    another process switches the same new file at the same moment."""

    def __init__(self, db: sqlite3.Connection, fails: int) -> None:
        self.db, self.fails, self.wal_attempts = db, fails, 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "PRAGMA journal_mode=WAL":
            self.wal_attempts += 1
            if self.wal_attempts <= self.fails:
                raise sqlite3.OperationalError("database is locked")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


async def test_a_journal_locked_while_another_process_switches_it_to_wal_opens_after_a_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[_LockedAtFirst] = []
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> _LockedAtFirst:
        opened.append(_LockedAtFirst(real_connect(*args, **kwargs), fails=3))
        return opened[-1]

    monkeypatch.setattr(journal_module, "WAL_SWITCH_PAUSE", 0.001)
    monkeypatch.setattr(journal_module.sqlite3, "connect", connect)
    async with open_journal(tmp_path) as journal:
        assert await journal.entries() == []
    assert opened[0].wal_attempts == 4


async def test_a_journal_that_stays_locked_fails_with_the_error_after_a_bounded_number_of_tries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[_LockedAtFirst] = []
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> _LockedAtFirst:
        opened.append(_LockedAtFirst(real_connect(*args, **kwargs), fails=10_000))
        return opened[-1]

    monkeypatch.setattr(journal_module, "WAL_SWITCH_PAUSE", 0.001)
    monkeypatch.setattr(journal_module.sqlite3, "connect", connect)
    with pytest.raises(journal_module.JournalUnusable, match="locked"):  # one line naming the file, at start-up
        async with open_journal(tmp_path):
            pass
    assert opened[0].wal_attempts == journal_module.WAL_SWITCH_ATTEMPTS
