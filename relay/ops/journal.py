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
from it are copied into a fresh journal (so the reaper stops those whose process is gone; both in
`relay.ops.journal_salvage`), and one ERROR line says what was moved where and that `avatar-relay reap` finds the
rest. A journal that cannot be used for a reason the
operator must fix (a directory that cannot be created or written) raises JournalUnusable, whose message is the one
line the relay prints before it exits.

This module must never store a secret: rows hold provider names, session ids and base URLs only.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from relay.avatars.hooks import MakeHooks, SessionHooks, SessionOutcome
from relay.config import Settings
from relay.ops.journal_salvage import (
    COLUMNS,
    JOURNAL_FILE,
    SQLITE_CORRUPT,
    SQLITE_NOTADB,
    JournalDamaged,
    JournalUnusable,
    MovedAside,
    damaged_journals,
    move_aside,
    salvage,
)

log = logging.getLogger("relay.journal")

__all__ = ["JOURNAL_FILE", "Journal", "JournalEntry", "JournalUnusable", "MovedAside", "damaged_journals",
           "default_state_dir", "journal_hooks", "open_journal", "open_journal_now", "process_alive",
           "process_start_marker", "state_dir"]

T = TypeVar("T")
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
        directory = self.path.parent
        self.moved_aside_count = len(await self._run(lambda: damaged_journals(directory)))
        return self.moved_aside_count

    def close(self) -> None:
        self._db.close()


# Switching a database to WAL can fail at once with "database is locked" when another process does the same at the
# same moment (the workers of `serve --workers N` opening a fresh journal together): SQLite refuses one of two lock
# escalations instead of calling its busy handler, so the 5 s busy timeout does not cover it. Seen once in the workers
# tests (a worker died at start-up and was restarted). The pragma is retried, briefly and boundedly.
WAL_SWITCH_ATTEMPTS = 20
WAL_SWITCH_PAUSE = 0.05  # seconds, times the attempt number

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
            db.execute(f"SELECT {COLUMNS} FROM sessions LIMIT 0")
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
    try:  # one look: another relay may be renaming a damaged journal aside right now (`exists` then `is_file` saw
        mode = path.stat().st_mode  # the file, then nothing, and called it "not a file")
    except FileNotFoundError:
        return
    except OSError as exc:  # a symlink loop, say
        raise JournalUnusable(f"the session journal {path} cannot be looked at ({exc.strerror or type(exc).__name__})"
                              ": move it away (the relay creates the journal there)") from None
    if not stat.S_ISREG(mode):
        raise JournalUnusable(f"the session journal {path} is not a file: move it away (the relay creates the "
                              "journal there)")


LOCK_WAIT = 30.0  # seconds a start-up waits for another process opening (or recovering) the same journal


def _open_or_recover(path: Path) -> tuple[sqlite3.Connection, MovedAside | None]:
    """Open the journal at `path`; a damaged one is moved aside, what can be read of it is copied into a fresh one.
    Processes opening the same journal take turns (a lock file beside it, held only while opening): two relays
    starting together must not both find it damaged and the second move aside the fresh journal the first has just
    made. Blocks (worker thread). Raises JournalUnusable."""
    _prepare_directory(path)
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise JournalUnusable(f"{_where(path)}: cannot create {lock_path.name} ({exc.strerror}): {_FIX}") from None
    try:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise JournalUnusable(f"the session journal {path} stayed locked by another process for "
                                          f"{LOCK_WAIT:g} s while opening it ({lock_path.name}): is a relay stuck "
                                          "starting?") from None
                time.sleep(0.05)
        return _open_locked(path)
    finally:
        os.close(lock)  # releases the lock


def _open_locked(path: Path) -> tuple[sqlite3.Connection, MovedAside | None]:
    moved: MovedAside | None = None
    for _ in range(3):  # another process may be moving the same damaged file aside right now
        try:
            _check_header(path)
            db = _connect(path)
        except JournalDamaged as exc:
            moved = move_aside(path, str(exc))
            if moved is None:
                continue  # someone else moved it first: open what is there now
            db = _connect(path)
            rows = salvage(moved.moved_to)
            with db:
                db.executemany(f"INSERT INTO sessions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            return db, MovedAside(moved.original, moved.moved_to, moved.reason, len(rows))
        except sqlite3.Error as exc:
            raise JournalUnusable(f"the session journal {path} cannot be opened ({exc}): check the permissions of "
                                  f"the file and of {path.parent}, or {_FIX}") from None
        return db, moved
    raise JournalUnusable(f"the session journal {path} kept changing while being opened: is another program "
                          "replacing it?")


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
