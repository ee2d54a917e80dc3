"""The untracked-session comparison (relay.ops.untracked), with no sockets: which running sessions no relay holds,
a provider that can only count, a list that failed, and the two-checks-in-a-row rule the metric follows."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from relay.config import Settings
from relay.ops import untracked
from relay.ops.untracked import (
    METRIC,
    AccountView,
    Finding,
    RecordsUnavailable,
    UntrackedCheck,
    compare,
    confirmed,
    untracked_gauge,
)


def test_the_sessions_no_relay_holds_are_named_per_provider() -> None:
    held = {("liveavatar", "a"), ("liveavatar", "gone-already"), ("heygen", "h")}
    [live, heygen] = compare([AccountView("liveavatar", 3, frozenset({"a", "b", "c"})),
                              AccountView("heygen", 1, frozenset({"h"}))], held)
    assert live == Finding("liveavatar", True, 3, 2, 2, ("b", "c"))
    assert heygen == Finding("heygen", True, 1, 1, 0, ())


def test_a_provider_that_only_counts_is_compared_by_count() -> None:
    held = {("simli", "s1"), ("simli", "s2")}
    assert compare([AccountView("simli", 5)], held) == [Finding("simli", False, 5, 2, 3)]
    assert compare([AccountView("simli", 1)], held)[0].untracked == 0  # never below zero (one just stopped)


def test_a_list_that_failed_says_why_and_flags_nothing() -> None:
    [finding] = compare([AccountView("liveavatar", 0, None, "LiveAvatar could not be listed: no")], set())
    assert finding.error == "LiveAvatar could not be listed: no" and finding.untracked == 0


def test_the_metric_counts_what_two_checks_in_a_row_found() -> None:
    first = compare([AccountView("liveavatar", 2, frozenset({"new", "leak"})), AccountView("simli", 4)],
                    {("simli", "s1")})
    # A session created a moment ago may show once before the relay records it: nothing is confirmed yet.
    assert confirmed({}, first) == {"liveavatar": 0, "simli": 0}
    previous = {f.provider: f for f in first}
    second = compare([AccountView("liveavatar", 2, frozenset({"new", "leak"})), AccountView("simli", 2)],
                     {("liveavatar", "new"), ("simli", "s1")})
    assert confirmed(previous, second) == {"liveavatar": 1, "simli": 1}  # "leak" twice; the smaller excess
    failed = compare([AccountView("liveavatar", 0, None, "timed out")], set())
    assert confirmed(previous, failed) == {}  # a failed list leaves the metric as it was


async def test_the_periodic_check_sets_the_gauge_and_skips_a_round_without_records(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    rounds = [
        ({("liveavatar", "mine")}, {"mine", "leak"}),  # the leak seen once: not yet
        ({("liveavatar", "mine")}, {"mine", "leak"}),  # twice: counted
        (None, {"mine", "leak"}),  # the relay's records cannot be read: the gauge stays
        ({("liveavatar", "mine")}, {"mine"}),  # stopped: back to 0
    ]
    current: list[int] = [0]

    async def held() -> set[tuple[str, str]]:
        records = rounds[current[0]][0]
        if records is None:
            raise RecordsUnavailable("the fleet's session registry cannot be read")
        return set(records)

    async def accounts(settings: Settings, http: object) -> list[AccountView]:
        ids = frozenset(rounds[current[0]][1])
        return [AccountView("liveavatar", len(ids), ids)]

    monkeypatch.setattr(untracked, "read_accounts", accounts)
    settings = Settings(_env_file=None, relay_avatar="liveavatar")  # type: ignore[call-arg]
    registry = CollectorRegistry()
    gauge = untracked_gauge(registry, settings)
    check = UntrackedCheck(settings, None, held)  # type: ignore[arg-type]
    seen = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(check.run_periodically, 60.0, gauge)
        for index in range(len(rounds)):
            current[0] = index
            await trio.sleep(60)  # one interval: one check (the clock jumps)
            await trio.testing.wait_all_tasks_blocked()
            seen.append(registry.get_sample_value(METRIC, {"provider": "liveavatar"}))
        nursery.cancel_scope.cancel()
    assert seen == [0, 1, 1, 0]
