"""A damaged session journal (relay.ops.journal): moved aside beside itself with a UTC timestamp, and what can still
be read of it salvaged, row range by row range, for the fresh journal the relay goes on with. Blocking file and
SQLite work: run on a worker thread, as `relay.ops.journal` does. Holds no secret (rows hold provider names, session
ids and base URLs only).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOURNAL_FILE = "sessions.sqlite3"

# SQLite's result codes for a file that is not a usable database: damaged pages, or not a database at all.
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
DAMAGED_SUFFIX = ".damaged-"  # sessions.sqlite3.damaged-20260102T030405Z: a journal moved aside
SALVAGE_QUERY_BUDGET = 4096  # range reads tried on a damaged file before giving up on the rest
COLUMNS = "id, provider, session_id, base_url, pid, pid_started, opened_at"


class JournalUnusable(Exception):
    """The journal cannot be used for a reason the operator must fix (its directory cannot be created or written,
    its file cannot be opened): the message is one line naming the file and what to do. A damaged file is not this:
    it is moved aside (`open_journal_now`)."""


class JournalDamaged(Exception):
    """The file is not a usable journal (SQLite says it is corrupt or not a database, or its table is not ours)."""


@dataclass(frozen=True)
class MovedAside:
    """A damaged journal that was moved aside at start-up: where it went, why, and how many of its rows were read
    back (copied into the fresh journal, so the reaper stops those whose process is gone)."""

    original: Path
    moved_to: Path
    reason: str
    salvaged: int

    def describe(self) -> str:
        """The one ERROR line an operator reads."""
        read = (f"{self.salvaged} session(s) read back from it are in the fresh journal and will be stopped if "
                "their relay is gone" if self.salvaged else "no session could be read back from it")
        return (f"the session journal {self.original} was damaged ({self.reason}) and has been moved aside to "
                f"{self.moved_to}; the relay goes on with a fresh journal. {read}; avatar sessions it listed that "
                "could not be read cannot be stopped automatically: run `avatar-relay reap` (it also asks the "
                "provider's own list of running sessions), then delete the moved file")


def damaged_journals(directory: Path) -> list[Path]:
    """The journals moved aside in `directory` (oldest first); [] when there are none or it cannot be listed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(directory / name for name in names
                  if name.startswith(JOURNAL_FILE + DAMAGED_SUFFIX) and not name.endswith(("-wal", "-shm", ".salvage")))


def move_aside(path: Path, reason: str) -> MovedAside | None:
    """Rename the damaged journal (and its -wal, which holds its latest rows) beside itself with a UTC timestamp;
    its -shm (an index, rebuilt from the others) is removed. None when the file is gone already."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{stamp}")
    serial = 1
    while target.exists():
        serial += 1
        target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{stamp}-{serial}")
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JournalUnusable(f"the session journal {path} is damaged ({reason}) and cannot be moved aside "
                              f"({exc.strerror}): move or delete it by hand, then run `avatar-relay reap`") from None
    for suffix in ("-wal", "-shm"):
        sibling = path.with_name(path.name + suffix)
        try:
            if suffix == "-wal":
                os.rename(sibling, target.with_name(target.name + suffix))
            else:
                sibling.unlink()
        except OSError:
            pass  # absent (a clean shutdown checkpoints and removes them)
    return MovedAside(path, target, reason[:160], 0)


def salvage(damaged: Path) -> list[tuple[Any, ...]]:
    """The rows that can still be read from a damaged journal. Read from a scratch copy (the moved file stays as it
    was, for whoever investigates), with its -wal, so the latest committed rows count: the whole table if SQLite can
    read it, else range by range of row ids, halving a range that fails (damaged pages are skipped, the rows on
    intact pages are read), within SALVAGE_QUERY_BUDGET reads. A file that is not a database at all yields [].
    Rows whose columns do not have the journal's types are dropped."""
    scratch = damaged.with_name(damaged.name + ".salvage")
    rows: list[tuple[Any, ...]] = []
    try:
        shutil.copyfile(damaged, scratch)
        wal = damaged.with_name(damaged.name + "-wal")
        if wal.exists():
            shutil.copyfile(wal, scratch.with_name(scratch.name + "-wal"))
        _fit_header_to_length(scratch)
        db = sqlite3.connect(scratch, isolation_level=None, timeout=0)
        try:
            rows = _read_rows(db)
        finally:
            db.close()
    except (OSError, sqlite3.Error):
        pass
    finally:
        for leftover in (scratch, scratch.with_name(scratch.name + "-wal"), scratch.with_name(scratch.name + "-shm")):
            with suppress(OSError):
                leftover.unlink()
    return [row for row in rows if _is_row(row)]


def _fit_header_to_length(copy: Path) -> None:
    """A truncated database (a backup copied halfway, a disk that lost its tail) says in its header that it has more
    pages than the file holds, and SQLite then refuses to read any of it. Make the copy's header say what is there
    (whole pages only), so the rows on the pages that survived can be read."""
    with copy.open("r+b") as file:
        header = file.read(100)
        if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
            return
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        if page_size < 512:
            return
        length = file.seek(0, os.SEEK_END)
        pages = length // page_size
        if pages and int.from_bytes(header[28:32], "big") > pages:
            file.truncate(pages * page_size)
            file.seek(28)
            file.write(pages.to_bytes(4, "big"))


def _read_rows(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    query = f"SELECT {COLUMNS} FROM sessions WHERE id BETWEEN ? AND ? ORDER BY id"
    try:
        return db.execute(f"SELECT {COLUMNS} FROM sessions ORDER BY id").fetchall()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) != SQLITE_CORRUPT:
            return []  # not a database, or no table of ours: nothing to read row by row
    highest = 2**31
    for probe in ("SELECT max(id) FROM sessions", "SELECT seq FROM sqlite_sequence WHERE name = 'sessions'"):
        try:
            found = db.execute(probe).fetchone()
        except sqlite3.DatabaseError:
            continue
        if found and isinstance(found[0], int):
            highest = found[0]
            break
    rows: list[tuple[Any, ...]] = []
    ranges = [(1, highest)]
    budget = SALVAGE_QUERY_BUDGET
    while ranges and budget > 0:
        low, high = ranges.pop()
        budget -= 1
        try:
            rows.extend(db.execute(query, (low, high)).fetchall())
        except sqlite3.DatabaseError:
            if low < high:
                middle = (low + high) // 2
                ranges += [(middle + 1, high), (low, middle)]
    return sorted(rows, key=lambda row: row[0] if isinstance(row[0], int) else 0)


def _is_row(row: tuple[Any, ...]) -> bool:
    types: tuple[type | tuple[type, ...], ...] = (int, str, str, str, int, str, (int, float))
    return len(row) == len(types) and all(isinstance(value, kind) for value, kind in zip(row, types, strict=True))
