"""Reaping orphaned avatar sessions: sessions journaled by processes that are gone (or whose stop failed) are
stopped through the providers' stop-by-id calls, at start-up and every RELAY_REAP_INTERVAL (`reap_periodically`),
and by the operator's `avatar-relay reap` (`find_orphans`, `reap`), which also asks the providers' list APIs.

Each row is claimed before its stop (relay.ops.journal), so two reapers never stop the same session; a failed stop
gives it back. This module must never raise out of the background sweep, and never stop a session a live relay of
this state directory holds.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import suppress
from dataclasses import dataclass

import httpx2
import trio

from relay.avatars import AvatarError, registry
from relay.config import Settings
from relay.ops.journal import Journal, JournalEntry

log = logging.getLogger("relay.journal")


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


# `avatar-relay reap`: the operator's sweep, through the journal and the providers' list APIs.


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
