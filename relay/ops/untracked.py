"""Avatar sessions an account bills that no relay holds: each listed provider's running sessions, read with its own
list call, compared with the relay's records (its conversations' open sessions, the session journal, and with
RELAY_REDIS_URL the fleet's session registry), so that an alert fires before the invoice does.

What each provider offers (docs/operations.md, "Untracked avatar sessions"): LiveAvatar lists its active sessions
(`GET /v1/sessions?type=active`, paged) and HeyGen v1 its running ones (`GET /v2/streaming.list`, `/v1` as a
fallback): their untracked sessions are named. Simli has no list call, only a count of the account's running
sessions (`GET /ratelimiter/sessions`): what it counts beyond the sessions the relay holds is reported as a number.

`compare` and `confirmed` are plain functions. `UntrackedCheck.check` reads the relay's records before and after
the providers' lists (a session created or stopped meanwhile is held in one of them) and blocks on those calls, each
bounded by LIST_TIMEOUT; `run_periodically` sets the gauge `avatar_relay_untracked_avatar_sessions{provider}` from the
sessions found untracked by two checks in a row (one check may fall between a provider's answer and the relay's
record of a session it just created). Nothing here stops a session: an untracked session may be another
application's on the same account, and the operator decides (`avatar-relay reap` stops what the relay knows of).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import trio
from prometheus_client import CollectorRegistry, Gauge

from relay.avatars import AvatarUnavailable
from relay.config import Settings
from relay.providers import table as providers

log = logging.getLogger("relay.untracked")

LIST_TIMEOUT = 30.0  # seconds one provider's list (all its pages) may take
METRIC = "avatar_relay_untracked_avatar_sessions"

Held = set[tuple[str, str]]  # (provider, session id) the relay holds


class RecordsUnavailable(Exception):
    """The relay's own records cannot be read (the fleet's Redis): nothing can be concluded. Safe to show."""


@dataclass(frozen=True, slots=True)
class AccountView:
    """What one provider's account says is running: the ids (None when the provider can only count them)."""

    provider: str
    count: int
    ids: frozenset[str] | None = None
    error: str | None = None  # the list could not be read (its message; never a key)


@dataclass(frozen=True, slots=True)
class Finding:
    """One provider's comparison."""

    provider: str
    listable: bool  # the provider names its sessions (else only a count is compared)
    running: int  # sessions the account has running
    held: int  # of the relay's records, this provider's
    untracked: int  # running sessions no relay holds
    untracked_ids: tuple[str, ...] = ()  # their ids, when the provider names them
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "listable": self.listable, "running": self.running, "held": self.held,
                "untracked": self.untracked, "untracked_ids": list(self.untracked_ids), "error": self.error}


def compare(accounts: Iterable[AccountView], held: Held) -> list[Finding]:
    """Each account's running sessions against `held`: the ids no relay holds, or (a provider that can only
    count) how many it counts beyond the relay's sessions of it."""
    findings = []
    for account in accounts:
        mine = {session_id for provider, session_id in held if provider == account.provider}
        if account.error is not None:
            findings.append(Finding(account.provider, account.ids is not None, 0, len(mine), 0, (), account.error))
        elif account.ids is None:
            findings.append(Finding(account.provider, False, account.count, len(mine),
                                    max(0, account.count - len(mine))))
        else:
            untracked = tuple(sorted(account.ids - mine))
            findings.append(Finding(account.provider, True, account.count, len(mine), len(untracked), untracked))
    return findings


def confirmed(previous: dict[str, Finding], current: Iterable[Finding]) -> dict[str, int]:
    """Per provider, the sessions found untracked by both its previous good check and this one (the same ids; for
    a count, the smaller excess). A provider whose list failed now is left out (its number stays as it was)."""
    counts: dict[str, int] = {}
    for finding in current:
        if finding.error is not None:
            continue
        before = previous.get(finding.provider)
        if before is None:
            counts[finding.provider] = 0
        elif finding.listable:
            counts[finding.provider] = len(set(finding.untracked_ids) & set(before.untracked_ids))
        else:
            counts[finding.provider] = min(finding.untracked, before.untracked)
    return counts


async def read_accounts(settings: Settings, http: httpx2.AsyncClient) -> list[AccountView]:
    """Every listed provider's running sessions, one after the other, each bounded by LIST_TIMEOUT. A list that
    cannot be read is an `AccountView` with its error (the others are still read)."""
    views = []
    for entry in providers.listed(settings):
        try:
            with trio.fail_after(LIST_TIMEOUT):
                if entry.count_running is not None:
                    views.append(AccountView(entry.name, await entry.count_running(settings, http)))
                else:
                    ids = await entry.list_running_ids(settings, http)
                    views.append(AccountView(entry.name, len(set(ids)), frozenset(ids)))
        except AvatarUnavailable as exc:
            views.append(AccountView(entry.name, 0, None, f"{entry.title} could not be listed: {exc.message}"))
        except trio.TooSlowError:
            views.append(AccountView(entry.name, 0, None, f"{entry.title} did not list its sessions within "
                                                           f"{LIST_TIMEOUT:g} s"))
    return views


@dataclass
class Report:
    """One check: when, and each provider's finding (or why the relay's records could not be read)."""

    checked_at: float
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"checked_at": round(self.checked_at, 3), "error": self.error,
                "providers": [finding.to_json() for finding in self.findings]}


@dataclass
class UntrackedCheck:
    """The comparison for one relay: `held()` reads the relay's records (raising RecordsUnavailable), `settings`
    and `http` reach the providers."""

    settings: Settings
    http: httpx2.AsyncClient
    held: Callable[[], Awaitable[Held]]
    _previous: dict[str, Finding] = field(default_factory=dict)

    async def check(self) -> Report:
        """Compare once; blocks on the relay's records and every provider's list (each bounded). Cancelled by the
        caller's scope."""
        checked_at = time.time()
        try:
            before = await self.held()
            accounts = await read_accounts(self.settings, self.http)
            after = await self.held()
        except RecordsUnavailable as exc:
            return Report(checked_at, error=str(exc))
        return Report(checked_at, compare(accounts, before | after))

    async def run_periodically(self, interval: float, gauge: Gauge) -> None:
        """`check` every `interval` seconds until cancelled, setting `gauge` (`untracked_gauge`) to the sessions two
        checks in a row found untracked (a warning names them). Never raises: whatever goes wrong in one check is
        logged and the next one runs."""
        while True:
            await trio.sleep(interval)
            try:
                report = await self.check()
            except Exception:  # a damaged journal, ...: never out into the app's nursery (it would end the relay)
                log.exception("untracked-session check failed")
                continue
            if report.error is not None:
                log.warning("untracked-session check skipped: %s", report.error)
                continue
            self._record(report, gauge)

    def _record(self, report: Report, gauge: Gauge) -> None:
        for provider, count in confirmed(self._previous, report.findings).items():
            gauge.labels(provider).set(count)
            finding = next(f for f in report.findings if f.provider == provider)
            if count:
                named = f" ({', '.join(finding.untracked_ids[:20])})" if finding.listable else ""
                log.warning("%d %s session(s) running that no relay holds%s: billed, and nobody will stop them "
                            "(docs/operations.md, \"Untracked avatar sessions\")", count, provider, named)
        for finding in report.findings:
            if finding.error is not None:
                log.warning("untracked-session check: %s", finding.error)
            else:
                self._previous[finding.provider] = finding


def untracked_gauge(registry: CollectorRegistry, settings: Settings) -> Gauge:
    """`avatar_relay_untracked_avatar_sessions{provider}` in `registry`, 0 for every listed provider until a check says
    otherwise."""
    gauge = Gauge(METRIC, "Avatar sessions the provider's account has running (its own list call) that no relay "
                  "holds, found by two checks in a row (RELAY_UNTRACKED_CHECK_INTERVAL); billed, and nobody will "
                  "stop them.", ["provider"], registry=registry)
    for entry in providers.listed(settings):
        gauge.labels(entry.name).set(0)
    return gauge
