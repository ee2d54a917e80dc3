"""Reaping orphaned avatar sessions: sessions journaled by processes that are gone (or whose stop failed) are
stopped through the providers' stop-by-id calls, at start-up and every RELAY_REAP_INTERVAL (`reap_periodically`),
and by the operator's `avatar-relay reap` (`find_orphans`, `reap`), which also asks the providers' list APIs.

Each row is claimed before its stop (relay.ops.journal), so two reapers never stop the same session; a failed stop
gives it back. With a fleet (RELAY_REDIS_URL), every stop also passes the fleet registry's gate
(`FleetSessions.claim`, relay.ops.fleet_sessions): a session another relay took over and stopped is forgotten, not
stopped again; one a live relay holds is left to it; while Redis is unreachable nothing is stopped (the next sweep
tries again), since the fleet may be stopping it right now (docs/decisions.md). This module must never raise out of
the background sweep, and never stop a session a live relay of this state directory (or of the fleet) holds.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import suppress
from dataclasses import dataclass

import httpx2
import trio

from relay.avatars import AvatarError
from relay.config import Settings
from relay.ops.fleet import FleetUnavailable
from relay.ops.fleet_sessions import FleetSessions
from relay.ops.journal import Journal, JournalEntry
from relay.providers import table as providers

log = logging.getLogger("relay.journal")


@dataclass(frozen=True)
class ReapResult:
    stopped: list[str]
    failed: list[str]


async def reap_orphans(settings: Settings, http: httpx2.AsyncClient, journal: Journal,
                       fleet: FleetSessions | None = None) -> ReapResult:
    """Stop every journaled session whose owner process is gone, and forget it; a session that cannot be stopped
    now stays in the journal for the next start (or `avatar-relay reap`). With `fleet`, each stop passes its gate
    first (`fleet_gate`). Never raises (it runs in the background at start-up): a journal that cannot be read is
    logged. Cancelled by the caller's scope."""
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
        if fleet is not None and not await fleet_gate(fleet, journal, entry):
            continue
        try:
            await providers.stop_by_id(settings, http, entry.provider, entry.session_id, entry.base_url)
        except (AvatarError, trio.TooSlowError) as exc:
            failed.append(entry.session_id)
            with suppress(sqlite3.Error, OSError):
                await journal.release(entry)
            if fleet is not None:
                await fleet.release(entry.provider, entry.session_id, entry.base_url)
            log.warning("could not stop orphaned %s session %s (%s): %s", entry.provider, entry.session_id,
                        _left_by(entry), getattr(exc, "message", type(exc).__name__))
            continue
        with suppress(sqlite3.Error, OSError):
            await journal.closed(entry.row)
        if fleet is not None:
            await fleet.finish(entry.provider, entry.session_id)
        stopped.append(entry.session_id)
        log.info("stopped orphaned %s session %s (%s)", entry.provider, entry.session_id, _left_by(entry))
    return ReapResult(stopped, failed)


async def fleet_gate(fleet: FleetSessions, journal: Journal | None, entry: JournalEntry | None, *,
                     provider: str = "", session_id: str = "", base_url: str | None = None) -> bool:
    """May this reaper stop the session (a claimed journal row's `entry`, or `provider`/`session_id`)? Asks the
    fleet registry's one gate. When it says no, the journal row is forgotten (stopped already by the fleet) or given
    back (a live relay holds it, or Redis cannot be asked now: the next sweep asks again)."""
    if entry is not None:
        provider, session_id, base_url = entry.provider, entry.session_id, entry.base_url
    verdict: str
    try:
        verdict = await fleet.claim(provider, session_id, base_url or "")
    except FleetUnavailable:
        verdict = "unavailable"
        log.info("not stopping orphaned %s session %s while Redis is unreachable (the fleet may hold it); the next "
                 "sweep tries again", provider, session_id)
    if verdict == "claimed":
        return True
    if journal is not None and entry is not None:
        with suppress(sqlite3.Error, OSError):
            if verdict == "done":
                await journal.closed(entry.row)
                log.info("orphaned %s session %s was stopped by the fleet already (%s)", provider, session_id,
                         _left_by(entry))
            else:
                await journal.release(entry)
    return False


def _left_by(entry: JournalEntry) -> str:
    return "its earlier stop had failed" if entry.pid == 0 else f"left by process {entry.pid}"


async def reap_periodically(settings: Settings, http: httpx2.AsyncClient, journal: Journal,
                            fleet: FleetSessions | None = None) -> None:
    """`reap_orphans` at once, then every RELAY_REAP_INTERVAL seconds (only once if it is 0): sessions left by dead
    processes and sessions whose stop failed are retried while this process serves. Runs until cancelled (by the
    app's shutdown); never raises."""
    while True:
        await reap_orphans(settings, http, journal, fleet)
        with suppress(OSError):
            await journal.count_moved_aside()  # for /metrics: the operator deletes them once reaped
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
                       journal_only: bool = False, fleet: FleetSessions | None = None) -> list[Orphan]:
    """The journal's rows left by dead processes, then (with `fleet`) the fleet registry's sessions whose relay's
    lease is gone, then (unless `journal_only`) every session the account has running that no live relay of this
    state directory or of the fleet holds. The last kind includes sessions of any other deployment sharing the API
    key: say `journal_only` there. Raises FleetUnavailable when the fleet's registry cannot be read."""
    orphans: list[Orphan] = []
    held: set[str] = set()
    registered = await fleet.listing() if fleet is not None else []
    fleet_live = {s.entry.session_id for s in registered if s.live}
    if journal is not None:
        for entry in await journal.entries():
            if entry.orphaned and entry.session_id not in fleet_live:
                orphans.append(Orphan(entry.provider, entry.session_id, "journal", entry.base_url, entry.row, entry))
            else:
                held.add(entry.session_id)
    held |= fleet_live
    known = {o.session_id for o in orphans} | held
    for session in registered:
        if not session.live and session.entry.session_id not in known:
            orphans.append(Orphan(session.entry.provider, session.entry.session_id, "fleet", session.entry.base_url))
            known.add(session.entry.session_id)
    if not journal_only:
        orphans.extend(Orphan(providers.chosen_name(settings), session_id, "list")
                       for session_id in await providers.list_running_ids(settings, http) if session_id not in known)
    return orphans


async def reap(settings: Settings, http: httpx2.AsyncClient, journal: Journal | None, orphans: list[Orphan],
               fleet: FleetSessions | None = None) -> ReapResult:
    """Stop each orphan (forgetting journaled ones once stopped), each through the fleet's gate with `fleet`.
    Never raises for one failed stop."""
    stopped: list[str] = []
    failed: list[str] = []
    for orphan in orphans:
        if journal is not None and orphan.entry is not None and not await journal.claim(orphan.entry):
            continue  # a relay starting now is reaping it
        if fleet is not None and not await fleet_gate(fleet, journal, orphan.entry, provider=orphan.provider,
                                                      session_id=orphan.session_id, base_url=orphan.base_url):
            continue  # stopped already, or held by a live relay of the fleet, or Redis is unreachable now
        try:
            await providers.stop_by_id(settings, http, orphan.provider, orphan.session_id, orphan.base_url)
        except (AvatarError, trio.TooSlowError):
            failed.append(orphan.session_id)
            if journal is not None and orphan.entry is not None:
                with suppress(sqlite3.Error, OSError):
                    await journal.release(orphan.entry)
            if fleet is not None:
                await fleet.release(orphan.provider, orphan.session_id, orphan.base_url or "")
            continue
        if journal is not None and orphan.row is not None:
            with suppress(sqlite3.Error, OSError):
                await journal.closed(orphan.row)
        if fleet is not None:
            await fleet.finish(orphan.provider, orphan.session_id)
        stopped.append(orphan.session_id)
    return ReapResult(stopped, failed)
