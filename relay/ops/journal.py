"""A journal of the avatar sessions this process has open, so that a relay killed without cleanup (kill -9, power
loss, OOM) does not leave billed sessions running: the next start stops what the dead process left behind.

The journal is one SQLite file, `sessions.sqlite3`, in the state directory (RELAY_STATE_DIR, default
`$XDG_STATE_HOME/avatar-relay`, i.e. `~/.local/state/avatar-relay`). A row is written when a session has been
opened and deleted when it has been stopped, so the table only ever holds sessions believed to be running. Each
row names its owner process by pid and kernel start time, so a row is an orphan exactly when its owner is gone
(a reused pid does not fool it). One state directory per machine: liveness is checked on this machine only.

`journal_hooks` records each session through the providers' `SessionHooks` (relay.avatars.hooks), leaving the
providers untouched. Writes run on a worker thread (`trio.to_thread.run_sync`, one at a time) so the Trio loop never
waits on the disk; they are shielded and bounded, and a failing journal is logged and never ends a conversation.

Before stopping an orphan's session, a reaper (relay.ops.reaper) claims its row (one conditional UPDATE makes it the
owner), so processes reaping at once — the workers of `serve --workers N` starting together, `avatar-relay reap` —
never stop the same session twice; a failed stop gives the row back to its dead owner.

Rows are written as soon as the upstream id exists (the providers' `on_created`, alongside `streaming.start` /
`sessions/start`). The window it cannot cover: a process killed between the upstream answering the creation call
and that write landing (a few milliseconds). `avatar-relay reap` finds those through the providers' list APIs.
A journal that is damaged (SQLite: corrupt, or not a database, or a `sessions` table that is not ours) never keeps
the relay down: it is renamed beside itself (`sessions.sqlite3.damaged-<UTC time>`), the rows SQLite can still read
from it are copied into a fresh journal (so the reaper stops those whose process is gone), and one ERROR line says
what was moved where and that `avatar-relay reap` finds the rest. A journal that cannot be used for a reason the
operator must fix (a directory that cannot be created or written) raises JournalUnusable, whose message is the one
line the relay prints before it exits.

This module must never store a secret: rows hold provider names, session ids and base URLs only.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from relay.avatars.hooks import MakeHooks, SessionHooks, SessionOutcome
from relay.config import Settings

log = logging.getLogger("relay.journal")

T = TypeVar("T")
JOURNAL_FILE = "sessions.sqlite3"
WRITE_TIME_LIMIT = 2.0  # seconds a journal write may hold a conversation's cleanup

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    provider TEXT NOT NULL,
    session_id TEXT NOT NULL,
    base_url TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_started TEXT NOT NULL,
    opened_at REAL NOT NULL
)
"""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "avatar-relay"


def state_dir(settings: Settings) -> Path:
    return Path(settings.relay_state_dir).expanduser() if settings.relay_state_dir else default_state_dir()


def process_start_marker(pid: int) -> str:
    """The kernel's start time of `pid` (Linux: field 22 of /proc/<pid>/stat), "" where unknown or gone — a zombie
    (killed, not yet reaped by its parent: field 3 "Z" or "X") counts as gone, since it holds nothing any more.
    Together with the pid it names one live process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) is parenthesised and may hold spaces: count from the last ")".
    fields = stat[stat.rfind(")") + 2:].split()
    if not fields or fields[0] in ("Z", "X"):
        return ""
    return fields[19] if len(fields) > 19 else ""


def process_alive(pid: int, marker: str) -> bool:
    """Is the process that wrote a row (its pid and start marker) still running on this machine?"""
    if pid == os.getpid():
        return marker == process_start_marker(pid)
    if Path("/proc").is_dir():
        return bool(marker) and process_start_marker(pid) == marker
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True, slots=True)
class JournalEntry:
    row: int
    provider: str
    session_id: str
    base_url: str
    pid: int
    pid_started: str
    opened_at: float

    @property
    def orphaned(self) -> bool:
        return not process_alive(self.pid, self.pid_started)


@dataclass
class Journal:
    """The open-sessions table of one state directory. Use `open_journal`; every method that touches the disk
    runs on a worker thread, one at a time."""

    path: Path
    _db: sqlite3.Connection
    _limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    _pid: int = field(default_factory=os.getpid)
    _pid_started: str = ""
    write_seconds_max: float = 0.0
    moved_aside: MovedAside | None = None  # this open moved a damaged journal aside
    moved_aside_count: int = 0  # damaged journals lying in the state directory (`damaged_journals`)

    def __post_init__(self) -> None:
        self._pid_started = process_start_marker(self._pid)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter, abandon_on_cancel=True)

    def _timed_write(self, sql: str, params: tuple[Any, ...]) -> int:
        started = time.perf_counter()
        with self._db:
            row = self._db.execute(sql, params).lastrowid or 0
        self.write_seconds_max = max(self.write_seconds_max, time.perf_counter() - started)
        return row

    async def opened(self, provider: str, session_id: str, base_url: str) -> int:
        """Record a session as open; returns its row. Cancelled by the caller's scope (the write may still land)."""
        return await self._run(lambda: self._timed_write(
            "INSERT INTO sessions (provider, session_id, base_url, pid, pid_started, opened_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (provider, session_id, base_url, self._pid, self._pid_started, time.time())))

    def _swap_owner(self, row: int, old: tuple[int, str], new: tuple[int, str]) -> bool:
        with self._db:
            cursor = self._db.execute("UPDATE sessions SET pid = ?, pid_started = ? WHERE id = ? AND pid = ? AND "
                                      "pid_started = ?", (*new, row, *old))
        return cursor.rowcount == 1

    async def claim(self, entry: JournalEntry) -> bool:
        """Take an orphaned row over for this process before stopping its session: one conditional UPDATE, so of
        several processes reaping at once (workers starting together, `avatar-relay reap`) exactly one gets each
        row. False when another process took it first or it is gone. A process that dies holding a claim leaves
        the row orphaned again, for the next one."""
        return await self._run(lambda: self._swap_owner(entry.row, (entry.pid, entry.pid_started),
                                                        (self._pid, self._pid_started)))

    async def release(self, entry: JournalEntry) -> None:
        """Give a claimed row back to its dead owner (its session could not be stopped): the next start, or
        `avatar-relay reap`, tries again."""
        await self._run(lambda: self._swap_owner(entry.row, (self._pid, self._pid_started),
                                                 (entry.pid, entry.pid_started)))

    async def abandon(self, row: int) -> None:
        """Give up this process's row for a session it could not stop: the row's owner becomes nobody (pid 0), so
        the next sweep of any process (`reap_periodically`, a start-up, `avatar-relay reap`) tries again."""
        await self._run(lambda: self._swap_owner(row, (self._pid, self._pid_started), (0, "")))

    async def closed(self, row: int) -> None:
        """Forget a session that has been stopped."""
        await self._run(lambda: self._timed_write("DELETE FROM sessions WHERE id = ?", (row,)))

    def _entries(self) -> list[JournalEntry]:
        cursor = self._db.execute(
            "SELECT id, provider, session_id, base_url, pid, pid_started, opened_at FROM sessions ORDER BY id")
        return [JournalEntry(*row) for row in cursor.fetchall()]

    async def entries(self) -> list[JournalEntry]:
        """Every row: sessions believed running, this process's and others'."""
        return await self._run(self._entries)

    async def count_moved_aside(self) -> int:
        """Count again the damaged journals lying beside this one (the operator deletes them once reaped)."""
        self.moved_aside_count = len(await trio.to_thread.run_sync(damaged_journals, self.path.parent))
        return self.moved_aside_count

    def close(self) -> None:
        self._db.close()


# Switching a database to WAL can fail at once with "database is locked" when another process does the same at the
# same moment (the workers of `serve --workers N` opening a fresh journal together): SQLite refuses one of two lock
# escalations instead of calling its busy handler, so the 5 s busy timeout does not cover it. Seen once in the workers
# tests (a worker died at start-up and was restarted). The pragma is retried, briefly and boundedly.
WAL_SWITCH_ATTEMPTS = 20
WAL_SWITCH_PAUSE = 0.05  # seconds, times the attempt number

# SQLite's result codes for a file that is not a usable database: damaged pages, or not a database at all.
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
DAMAGED_SUFFIX = ".damaged-"  # sessions.sqlite3.damaged-20260102T030405Z: a journal moved aside
SALVAGE_QUERY_BUDGET = 4096  # range reads tried on a damaged file before giving up on the rest
_COLUMNS = "id, provider, session_id, base_url, pid, pid_started, opened_at"


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
                  if name.startswith(JOURNAL_FILE + DAMAGED_SUFFIX) and not name.endswith(("-wal", "-shm")))


def _connect(path: Path) -> sqlite3.Connection:
    """Open the journal file in WAL mode with its table, checked (`PRAGMA quick_check`, our columns). Blocks (run it
    on a worker thread). Raises JournalDamaged for a file that is not a usable journal, sqlite3.Error if the file
    cannot be used otherwise, or if it is still locked after WAL_SWITCH_ATTEMPTS tries."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5.0)
    try:
        try:
            for attempt in range(1, WAL_SWITCH_ATTEMPTS + 1):
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == WAL_SWITCH_ATTEMPTS:
                        raise
                    time.sleep(WAL_SWITCH_PAUSE * attempt)
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash, cheap to commit
            db.execute(_SCHEMA)
            verdict = db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) in (SQLITE_CORRUPT, SQLITE_NOTADB):
                raise JournalDamaged(str(exc)) from exc
            raise
        if not verdict or verdict[0] != "ok":
            raise JournalDamaged(f"integrity check: {str(verdict[0] if verdict else 'no answer')[:120]}")
        try:
            db.execute(f"SELECT {_COLUMNS} FROM sessions LIMIT 0")
        except sqlite3.OperationalError as exc:  # a `sessions` table that is not ours: another program's file
            raise JournalDamaged(f"not a session journal: {exc}") from exc
    except BaseException:
        db.close()
        raise
    return db


def _check_header(path: Path) -> None:
    """JournalDamaged when the file is there but does not start as an SQLite database does. Checked before SQLite
    opens it: closing a connection to such a file would delete its -wal, which may hold the latest rows."""
    try:
        with path.open("rb") as file:
            header = file.read(100)
    except FileNotFoundError:
        return
    except OSError:
        return  # SQLite says why it cannot open it
    if header and (len(header) < 100 or not header.startswith(b"SQLite format 3\x00")):
        raise JournalDamaged("file is not a database")


def _where(path: Path) -> str:
    return f"the session journal's directory {path.parent} (RELAY_STATE_DIR)"


_FIX = ("point RELAY_STATE_DIR at a directory this user can write (or set RELAY_JOURNAL=false to run without the "
        "journal: a crash then leaves avatar sessions running until `avatar-relay reap`)")


def _prepare_directory(path: Path) -> None:
    """Create the journal's directory; JournalUnusable (one line) when it cannot be created or written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalUnusable(f"{_where(path)} cannot be created ({exc.strerror or type(exc).__name__}): "
                              f"{_FIX}") from None
    if not path.parent.is_dir():
        raise JournalUnusable(f"{_where(path)} is not a directory: {_FIX}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise JournalUnusable(f"{_where(path)} is not writable by this user: {_FIX}")
    if path.exists() and not path.is_file():
        raise JournalUnusable(f"the session journal {path} is not a file: move it away (the relay creates the "
                              "journal there)")


def _open_or_recover(path: Path) -> tuple[sqlite3.Connection, MovedAside | None]:
    """Open the journal at `path`; a damaged one is moved aside, what can be read of it is copied into a fresh one.
    Blocks (worker thread). Raises JournalUnusable."""
    _prepare_directory(path)
    moved: MovedAside | None = None
    for _ in range(3):  # another process may be moving the same damaged file aside right now
        try:
            _check_header(path)
            db = _connect(path)
        except JournalDamaged as exc:
            moved = _move_aside(path, str(exc))
            if moved is None:
                continue  # someone else moved it first: open what is there now
            db = _connect(path)
            rows = _salvage(moved.moved_to)
            with db:
                db.executemany(f"INSERT INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            return db, MovedAside(moved.original, moved.moved_to, moved.reason, len(rows))
        except sqlite3.Error as exc:
            raise JournalUnusable(f"the session journal {path} cannot be opened ({exc}): check the permissions of "
                                  f"the file and of {path.parent}, or {_FIX}") from None
        return db, moved
    raise JournalUnusable(f"the session journal {path} kept changing while being opened: is another program "
                          "replacing it?")


def _move_aside(path: Path, reason: str) -> MovedAside | None:
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


def _salvage(damaged: Path) -> list[tuple[Any, ...]]:
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
    query = f"SELECT {_COLUMNS} FROM sessions WHERE id BETWEEN ? AND ? ORDER BY id"
    try:
        return db.execute(f"SELECT {_COLUMNS} FROM sessions ORDER BY id").fetchall()
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


async def open_journal_now(directory: Path) -> Journal:
    """Open (creating if needed) the journal in `directory` for the caller to `close()`. A damaged journal is moved
    aside and replaced (the caller logs `journal.moved_aside.describe()`); raises JournalUnusable (one line naming
    the directory or file and what to do) when the journal cannot be used at all."""
    path = directory / JOURNAL_FILE
    db, moved = await trio.to_thread.run_sync(_open_or_recover, path)
    journal = Journal(path, db, moved_aside=moved)
    if moved is not None:
        log.error("%s", moved.describe())
    journal.moved_aside_count = len(await trio.to_thread.run_sync(damaged_journals, directory))
    return journal


@asynccontextmanager
async def open_journal(directory: Path) -> AsyncIterator[Journal]:
    """`open_journal_now`, closed on exit."""
    journal = await open_journal_now(directory)
    try:
        yield journal
    finally:
        journal.close()


# ----------------------------------------------------------------------------------------------------------------------
# The session hooks


def journal_hooks(journal: Journal, base_url: str) -> MakeHooks:
    """Hooks that journal each session (of the provider reached at `base_url`) from the moment its upstream id exists
    (written while the provider goes on starting it, so a crash during start-up cannot leak it and `ready` does not
    wait for the disk) until it has been stopped. A session the provider could not stop stays in the journal,
    abandoned to the next sweep. The writes are shielded and bounded by WRITE_TIME_LIMIT."""

    def make(provider: str) -> SessionHooks:
        row: int | None = None

        async def record(session_id: str) -> None:
            nonlocal row
            row = await _write(lambda: journal.opened(provider, session_id, base_url))

        async def forget(outcome: SessionOutcome) -> None:
            if row is not None:
                done = row
                await _write(lambda: journal.abandon(done) if outcome.stop_failed else journal.closed(done))

        return SessionHooks(on_created=record, on_closed=forget)

    return make


async def _write(call: Callable[[], Any]) -> Any:
    with trio.move_on_after(WRITE_TIME_LIMIT, shield=True):
        try:
            return await call()
        except (sqlite3.Error, OSError) as exc:
            log.warning("session journal write failed (%s); a crash now could leave this session running until "
                        "`avatar-relay reap`", type(exc).__name__)
    return None
