"""A damaged session journal never keeps the relay down: it is moved aside, what SQLite can still read of it goes into
a fresh journal (and so to the reaper), and one ERROR line says what happened. A journal the operator must fix (a
state directory that cannot be created) is one line naming RELAY_STATE_DIR."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import trio

from relay.ops import journal as journal_module
from relay.ops.journal import (
    JOURNAL_FILE,
    Journal,
    JournalUnusable,
    _prepare_directory,
    damaged_journals,
    open_journal,
    open_journal_now,
)

DEAD = (999_999, "gone")  # a row owner no process is


async def write_rows(directory: Path, count: int) -> None:
    """`count` sessions of a dead process, checkpointed into the main file (as after a clean stop)."""
    async with open_journal(directory) as journal:
        journal._pid, journal._pid_started = DEAD
        for number in range(count):
            await journal.opened("heygen", f"session-{number:04d}-" + "x" * 40, "http://heygen.invalid")
        journal._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def moved_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "moved aside" in r.getMessage()]


async def test_a_file_that_is_not_a_database_is_moved_aside_and_a_fresh_journal_works(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / JOURNAL_FILE).write_bytes(b"this is not a database, it is a half-written note\n" * 100)
    async with open_journal(tmp_path) as journal:
        assert journal.moved_aside is not None
        await journal.opened("heygen", "s-new", "http://h")
        assert [e.session_id for e in await journal.entries()] == ["s-new"]
        assert journal.moved_aside_count == 1
    (moved,) = damaged_journals(tmp_path)
    assert moved.read_bytes().startswith(b"this is not a database")  # kept as it was, for whoever investigates
    (line,) = moved_lines(caplog)
    assert str(tmp_path / JOURNAL_FILE) in line and str(moved) in line and "avatar-relay reap" in line
    assert "no session could be read back" in line


async def test_a_half_copied_journal_gives_back_the_rows_on_its_intact_pages(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    await write_rows(tmp_path, 400)
    path = tmp_path / JOURNAL_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a backup copied halfway
    async with open_journal(tmp_path) as journal:
        assert journal.moved_aside is not None
        entries = await journal.entries()
    assert 0 < len(entries) < 400, len(entries)
    assert all(e.orphaned and e.session_id.startswith("session-") and (e.pid, e.pid_started) == DEAD
               for e in entries)  # as they were: the reaper stops them
    assert journal.moved_aside.salvaged == len(entries)
    (line,) = moved_lines(caplog)
    assert f"{len(entries)} session(s) read back" in line


async def test_a_journal_with_a_damaged_page_gives_back_the_other_pages_rows(tmp_path: Path) -> None:
    await write_rows(tmp_path, 400)
    path = tmp_path / JOURNAL_FILE
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    middle = (len(data) // page // 2) * page
    data[middle: middle + page] = b"\xff" * page  # one leaf page of rows overwritten
    path.write_bytes(bytes(data))
    async with open_journal(tmp_path) as journal:
        assert journal.moved_aside is not None
        entries = await journal.entries()
    assert 300 < len(entries) < 400, len(entries)
    assert len({e.session_id for e in entries}) == len(entries)


async def test_the_wal_of_a_damaged_journal_moves_with_it_and_its_index_is_dropped(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_FILE).write_bytes(b"\0" * 4096)
    (tmp_path / (JOURNAL_FILE + "-wal")).write_bytes(b"the latest rows")
    (tmp_path / (JOURNAL_FILE + "-shm")).write_bytes(b"an index")
    async with open_journal(tmp_path) as journal:
        assert journal.moved_aside is not None
        moved = journal.moved_aside.moved_to
    assert (moved.parent / (moved.name + "-wal")).read_bytes() == b"the latest rows"
    assert sorted(os.listdir(tmp_path)) == sorted(  # no -shm, no scratch copy left
        [JOURNAL_FILE, JOURNAL_FILE + ".lock", moved.name, moved.name + "-wal"])


async def test_another_programs_database_under_that_name_is_moved_aside(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / JOURNAL_FILE)
    db.execute("CREATE TABLE sessions (token TEXT)")
    db.commit()
    db.close()
    async with open_journal(tmp_path) as journal:
        assert journal.moved_aside is not None and "not a session journal" in journal.moved_aside.reason
        await journal.opened("heygen", "s", "http://h")


async def test_a_healthy_journal_is_not_moved(tmp_path: Path) -> None:
    await write_rows(tmp_path, 3)
    async with open_journal(tmp_path) as journal:
        assert journal.moved_aside is None and len(await journal.entries()) == 3
    assert damaged_journals(tmp_path) == []


async def test_a_state_directory_that_cannot_be_created_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(JournalUnusable) as caught:
        async with open_journal(tmp_path / "a-file" / "state"):
            pass
    message = str(caught.value)
    assert "RELAY_STATE_DIR" in message and str(tmp_path / "a-file" / "state") in message
    assert "\n" not in message


async def test_a_directory_where_the_journal_file_goes_is_one_line(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_FILE).mkdir()
    with pytest.raises(JournalUnusable) as caught:
        async with open_journal(tmp_path):
            pass
    assert str(tmp_path / JOURNAL_FILE) in str(caught.value) and "not a file" in str(caught.value)


@pytest.mark.parametrize("sibling", ["-wal", "-shm"])
async def test_a_damaged_wal_or_index_beside_a_healthy_journal_keeps_its_rows(sibling: str, tmp_path: Path) -> None:
    """Every state file with damaged content: SQLite ignores a -wal whose checksums fail and rebuilds the -shm."""
    await write_rows(tmp_path, 3)
    (tmp_path / (JOURNAL_FILE + sibling)).write_bytes(b"\xde\xad" * 20_000)
    async with open_journal(tmp_path) as journal:
        assert journal.moved_aside is None and len(await journal.entries()) == 3


async def test_the_count_of_moved_aside_journals_follows_the_directory(tmp_path: Path) -> None:
    """What /metrics shows: counted at open, counted again at each sweep (after the operator deleted the file)."""
    (tmp_path / JOURNAL_FILE).write_bytes(b"not a database" * 10)
    async with open_journal(tmp_path) as journal:
        assert journal.moved_aside_count == 1
        for moved in damaged_journals(tmp_path):
            os.unlink(moved)
        assert await journal.count_moved_aside() == 0 and journal.moved_aside_count == 0


async def test_two_processes_opening_a_damaged_journal_together_move_it_aside_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second must not take the fresh journal the first has just made for damaged and move it aside too (the
    first's connection would then write where no one reads). The second's check is slowed to open the window."""
    real_check = journal_module._check_header
    delays = [0.0, 0.4]  # the second to find it damaged acts after the first has made the fresh journal

    def check_header(path: Path) -> None:
        try:
            real_check(path)
        except journal_module.JournalDamaged:
            time.sleep(delays.pop(0))
            raise

    monkeypatch.setattr(journal_module, "_check_header", check_header)
    (tmp_path / JOURNAL_FILE).write_bytes(b"not a database" * 10)
    opened: list[Journal] = []
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(lambda: _open_into(tmp_path, opened))
    try:
        assert len(damaged_journals(tmp_path)) == 1
        await opened[0].opened("heygen", "s-1", "http://h")
        assert [e.session_id for e in await opened[1].entries()] == ["s-1"]  # one journal, seen by both
    finally:
        for journal in opened:
            journal.close()


async def _open_into(directory: Path, opened: list[Journal]) -> None:
    opened.append(await open_journal_now(directory))


def test_a_journal_moved_aside_while_the_directory_is_checked_is_not_taken_for_something_else(tmp_path: Path) -> None:
    """Another relay renames a damaged journal aside while this one checks the directory (before taking the lock): the
    name is then briefly free. Seen once in a full run as "is not a file" — `exists()` saw the file, `is_file()` no
    longer did. The check must read the path once: a file, nothing, or something else."""
    path = tmp_path / "sessions.sqlite3"
    path.write_bytes(b"not a database")
    aside = tmp_path / "sessions.sqlite3.damaged"
    done = threading.Event()

    def move_back_and_forth() -> None:
        while not done.is_set():
            os.rename(path, aside)
            os.rename(aside, path)

    mover = threading.Thread(target=move_back_and_forth)
    mover.start()
    refused = 0
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                _prepare_directory(path)
            except JournalUnusable:
                refused += 1
    finally:
        done.set()
        mover.join()
    assert refused == 0
    (tmp_path / "a_directory").mkdir()
    with pytest.raises(JournalUnusable, match="is not a file"):
        _prepare_directory(tmp_path / "a_directory")
    loop = tmp_path / "a_loop"
    loop.symlink_to(loop)
    with pytest.raises(JournalUnusable, match="cannot be looked at"):  # one line, not a traceback
        _prepare_directory(loop)
