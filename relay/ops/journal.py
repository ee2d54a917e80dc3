"""A journal of the avatar sessions this process has open, so that a relay killed without cleanup (kill -9, power
loss, OOM) does not leave billed sessions running: the next start stops what the dead process left behind.

The journal is one SQLite file, `sessions.sqlite3`, in the state directory (RELAY_STATE_DIR, default
`$XDG_STATE_HOME/avatar-relay`, i.e. `~/.local/state/avatar-relay`). A row is written when a session has been
opened and deleted when it has been stopped, so the table only ever holds sessions believed to be running. Each
row names its owner process by pid and kernel start time, so a row is an orphan exactly when its owner is gone
(a reused pid does not fool it). One state directory per machine: liveness is checked on this machine only.

`JournaledProvider` wraps any `AvatarProvider` and records around its `open_session`, leaving the providers
untouched. Writes run on a worker thread (`trio.to_thread.run_sync`, one at a time) so the Trio loop never waits on
the disk; they are shielded and bounded, and a failing journal is logged and never ends a conversation.

Before stopping an orphan's session, a reaper claims its row (one conditional UPDATE makes it the owner), so
processes reaping at once — the workers of `serve --workers N` starting together, `avatar-relay reap` — never stop
the same session twice; a failed stop gives the row back to its dead owner.

Rows are written as soon as the upstream id exists (the providers' `on_created`, alongside `streaming.start` /
`sessions/start`). The window it cannot cover: a process killed between the upstream answering the creation call
and that write landing (a few milliseconds). `avatar-relay reap` finds those through the providers' list APIs.
This module must never store a secret: rows hold provider names, session ids and base URLs only.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import trio

from relay.avatars import (
    AvatarError,
    AvatarProvider,
    AvatarSession,
    OnAvatarEvent,
    OnSessionCreated,
    OnStopFailed,
    registry,
)
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

    def close(self) -> None:
        self._db.close()


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash, cheap to commit
    db.execute(_SCHEMA)
    return db


async def open_journal_now(directory: Path) -> Journal:
    """Open (creating if needed) the journal in `directory` for the caller to `close()`. Raises OSError or
    sqlite3.Error if the directory or file cannot be used."""
    db = await trio.to_thread.run_sync(_connect, directory / JOURNAL_FILE)
    return Journal(directory / JOURNAL_FILE, db)


@asynccontextmanager
async def open_journal(directory: Path) -> AsyncIterator[Journal]:
    """`open_journal_now`, closed on exit."""
    journal = await open_journal_now(directory)
    try:
        yield journal
    finally:
        journal.close()


# ---------------------------------------------------------------------------------------------------------------
# The provider wrapper


class JournaledProvider:
    """An `AvatarProvider` that records each session of the wrapped provider in the journal while it is open."""

    def __init__(self, inner: AvatarProvider, journal: Journal, base_url: str) -> None:
        self.name = inner.name
        self._inner = inner
        self._journal = journal
        self._base_url = base_url

    @asynccontextmanager
    async def open_session(self, on_event: OnAvatarEvent, *, on_created: OnSessionCreated | None = None,
                           on_stop_failed: OnStopFailed | None = None) -> AsyncIterator[AvatarSession]:
        """The wrapped provider's session, journaled from the moment its upstream id exists (written while the
        provider goes on starting it, so a crash during start-up cannot leak it and `ready` does not wait for
        the disk) until it has been stopped (the wrapped context's exit). A session the provider could not stop
        stays in the journal, abandoned to the next sweep. The journal writes are shielded and bounded by
        WRITE_TIME_LIMIT."""
        row: int | None = None
        stop_failed = False

        async def record(session_id: str) -> None:
            nonlocal row
            row = await self._write(lambda: self._journal.opened(self.name, session_id, self._base_url))
            if on_created is not None:
                await on_created(session_id)

        async def keep(session_id: str) -> None:
            nonlocal stop_failed
            stop_failed = True
            if on_stop_failed is not None:
                await on_stop_failed(session_id)

        try:
            async with self._inner.open_session(on_event, on_created=record, on_stop_failed=keep) as session:
                yield session
        finally:
            if row is not None:
                done = row
                await self._write(lambda: self._journal.abandon(done) if stop_failed else self._journal.closed(done))

    async def _write(self, call: Callable[[], Any]) -> Any:
        with trio.move_on_after(WRITE_TIME_LIMIT, shield=True):
            try:
                return await call()
            except (sqlite3.Error, OSError) as exc:
                log.warning("session journal write failed (%s); a crash now could leave this session running "
                            "until `avatar-relay reap`", type(exc).__name__)
        return None


# ---------------------------------------------------------------------------------------------------------------
# Reaping


@dataclass(frozen=True)
class ReapResult:
    stopped: list[str]
    failed: list[str]


async def reap_orphans(settings: Settings, http: httpx2.AsyncClient, journal: Journal) -> ReapResult:
    """Stop every journaled session whose owner process is gone, and forget it; a session that cannot be stopped
    now stays in the journal for the next start (or `avatar-relay reap`). Never raises (it runs in the background
    at start-up): a journal that cannot be read is logged. Cancelled by the caller's scope."""
    stopped: list[str] = []
    failed: list[str] = []
    try:
        entries = await journal.entries()
    except (sqlite3.Error, OSError) as exc:
        log.error("cannot read the session journal %s (%s); run `avatar-relay reap`", journal.path,
                  type(exc).__name__)
        return ReapResult(stopped, failed)
    for entry in entries:
        if not entry.orphaned:
            continue
        try:
            if not await journal.claim(entry):
                continue  # another process is reaping it
        except (sqlite3.Error, OSError) as exc:
            log.warning("cannot claim orphaned %s session %s in the journal (%s)", entry.provider, entry.session_id,
                        type(exc).__name__)
            continue
        try:
            await registry.stop_by_id(settings, http, entry.provider, entry.session_id, entry.base_url)
        except (AvatarError, trio.TooSlowError) as exc:
            failed.append(entry.session_id)
            with suppress(sqlite3.Error, OSError):
                await journal.release(entry)
            log.warning("could not stop orphaned %s session %s (%s): %s", entry.provider, entry.session_id,
                        _left_by(entry), getattr(exc, "message", type(exc).__name__))
            continue
        with suppress(sqlite3.Error, OSError):
            await journal.closed(entry.row)
        stopped.append(entry.session_id)
        log.info("stopped orphaned %s session %s (%s)", entry.provider, entry.session_id, _left_by(entry))
    return ReapResult(stopped, failed)


def _left_by(entry: JournalEntry) -> str:
    return "its earlier stop had failed" if entry.pid == 0 else f"left by process {entry.pid}"


async def reap_periodically(settings: Settings, http: httpx2.AsyncClient, journal: Journal) -> None:
    """`reap_orphans` at once, then every RELAY_REAP_INTERVAL seconds (only once if it is 0): sessions left by dead
    processes and sessions whose stop failed are retried while this process serves. Runs until cancelled (by the
    app's shutdown); never raises."""
    while True:
        await reap_orphans(settings, http, journal)
        if settings.relay_reap_interval <= 0:
            return
        await trio.sleep(settings.relay_reap_interval)


# ---------------------------------------------------------------------------------------------------------------
# `avatar-relay reap`: the operator's sweep, through the journal and the providers' list APIs


@dataclass(frozen=True, slots=True)
class Orphan:
    """A session believed to run without a relay holding it. `source` is "journal" (left by a dead process on this
    machine) or "list" (running on the account, held by no live relay of this state directory)."""

    provider: str
    session_id: str
    source: str
    base_url: str | None = None
    row: int | None = None
    entry: JournalEntry | None = None  # its journal row, claimed before the stop


async def find_orphans(settings: Settings, http: httpx2.AsyncClient, journal: Journal | None, *,
                       journal_only: bool = False) -> list[Orphan]:
    """The journal's rows left by dead processes, then (unless `journal_only`) every session the account has
    running that no live relay of this state directory holds. The second kind includes sessions of any other
    deployment sharing the API key: say `journal_only` there."""
    orphans: list[Orphan] = []
    held: set[str] = set()
    if journal is not None:
        for entry in await journal.entries():
            if entry.orphaned:
                orphans.append(Orphan(entry.provider, entry.session_id, "journal", entry.base_url, entry.row, entry))
            else:
                held.add(entry.session_id)
    if not journal_only:
        known = {o.session_id for o in orphans} | held
        orphans.extend(Orphan(settings.avatar, session_id, "list")
                       for session_id in await registry.list_running_ids(settings, http) if session_id not in known)
    return orphans


async def reap(settings: Settings, http: httpx2.AsyncClient, journal: Journal | None, orphans: list[Orphan],
               ) -> ReapResult:
    """Stop each orphan (forgetting journaled ones once stopped). Never raises for one failed stop."""
    stopped: list[str] = []
    failed: list[str] = []
    for orphan in orphans:
        if journal is not None and orphan.entry is not None and not await journal.claim(orphan.entry):
            continue  # a relay starting now is reaping it
        try:
            await registry.stop_by_id(settings, http, orphan.provider, orphan.session_id, orphan.base_url)
        except (AvatarError, trio.TooSlowError):
            failed.append(orphan.session_id)
            if journal is not None and orphan.entry is not None:
                with suppress(sqlite3.Error, OSError):
                    await journal.release(orphan.entry)
            continue
        if journal is not None and orphan.row is not None:
            with suppress(sqlite3.Error, OSError):
                await journal.closed(orphan.row)
        stopped.append(orphan.session_id)
    return ReapResult(stopped, failed)
