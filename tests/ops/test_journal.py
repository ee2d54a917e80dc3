"""The journal without a process: of two processes reaping at once, exactly one claims each row."""

from __future__ import annotations

import os
from pathlib import Path

import trio

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
