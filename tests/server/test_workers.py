"""The pieces of `serve --workers N` that need no process: the restart policy, the merged /metrics exposition and
the shared conversation cap (journal claims: tests/ops/test_journal.py; the worker index on log lines:
tests/ops/test_logs.py)."""

from __future__ import annotations

import os

from prometheus_client.parser import text_string_to_metric_families

from relay.ops.metrics import RelayMetrics
from relay.server.admission import AdmissionRefused, Registry
from relay.server.seats import AVATARS, Seats, SharedAvatarBudget, create_seats_file
from relay.server.worker_metrics import merge_expositions
from relay.server.workers import RestartPolicy, describe_exit, restart_delay


def test_a_dead_worker_is_restarted_at_once_then_with_growing_delays_then_given_up() -> None:
    exits: list[float] = []
    delays = []
    for now in (0.0, 1.0, 3.0, 7.0, 15.0, 31.0):
        delays.append(restart_delay(exits, now))
        exits.append(now)
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, None]


def test_old_exits_are_forgotten_after_the_window() -> None:
    policy = RestartPolicy()
    assert restart_delay([0.0, 1.0, 2.0, 3.0, 4.0], 70.0, policy) == 0.0
    assert restart_delay([0.0, 1.0, 2.0, 3.0, 4.0], 30.0, policy) is None


def test_exit_statuses_are_named() -> None:
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(3) == "status 3"


def _families(text: bytes) -> dict[str, tuple[str, str]]:
    return {f.name: (f.type, f.documentation) for f in text_string_to_metric_families(text.decode())}


def test_merged_metrics_keep_names_types_and_help_and_label_every_sample_with_its_worker() -> None:
    one, two = RelayMetrics(avatar="heygen"), RelayMetrics(avatar="heygen")
    one.refused.labels("capacity").inc()
    two.refused.labels("capacity").inc(2)
    merged = merge_expositions({0: one.render(), 1: two.render(), 2: None})
    families = _families(merged)
    for name, kind in _families(one.render()).items():
        assert families[name] == kind
    samples = [s for f in text_string_to_metric_families(merged.decode()) for s in f.samples]
    assert all("worker" in s.labels for s in samples)
    refused = {s.labels["worker"]: s.value for s in samples if s.name == "avatar_relay_conversations_refused_total"}
    assert refused == {"0": 1.0, "1": 2.0}
    up = {s.labels["worker"]: s.value for s in samples if s.name == "avatar_relay_worker_up"}
    assert up == {"0": 1.0, "1": 1.0, "2": 0.0}
    assert merged.count(b"# TYPE avatar_relay_setup_seconds histogram") == 1


def test_shared_seats_cap_the_whole_relay_and_a_dead_workers_seats_are_freed() -> None:
    fd = create_seats_file(2)
    try:
        first, second = Seats(fd, 2, 0, 3), Seats(fd, 2, 1, 3)
        assert [first.take(), first.take(), second.take(), second.take(), first.take()] == [True] * 3 + [False] * 2
        assert first.taken() == second.taken() == 3
        second.give_back()
        assert first.take() and not second.take()
        first.clear(0)  # worker 0 died holding three
        assert second.taken() == 0
        assert [second.take(), second.take(), second.take(), second.take()] == [True] * 3 + [False]
        first.close()
        second.close()
    finally:
        os.close(fd)


async def test_a_registry_with_shared_seats_refuses_when_the_relay_is_full() -> None:
    fd = create_seats_file(2)
    try:
        other = Seats(fd, 2, 1, 2)
        registry = Registry(2, 10, shared=Seats(fd, 2, 0, 2))
        assert other.take()
        async with registry.admit("a"):
            assert not registry.under_capacity and not registry.ready
            try:
                async with registry.admit("b"):
                    raise AssertionError("admitted over the relay's cap")
            except AdmissionRefused as exc:
                assert "maximum number of conversations" in str(exc)
        assert registry.under_capacity and other.taken() == 1
    finally:
        os.close(fd)


async def test_the_avatar_budget_is_the_machines_and_a_dead_workers_seats_are_cleared() -> None:
    fd = create_seats_file(2)
    try:
        mine = SharedAvatarBudget(Seats(fd, 2, 0, 2, AVATARS))
        theirs = SharedAvatarBudget(Seats(fd, 2, 1, 2, AVATARS))
        conversations = Seats(fd, 2, 0, 5)
        assert await mine.take_avatar("a") and await theirs.take_avatar("b")
        assert not await mine.take_avatar("c") and not await theirs.take_avatar("d")
        assert conversations.taken() == 0  # the two kinds of seats are counted apart
        await mine.give_back_avatar("a")
        await mine.give_back_avatar("a")  # twice: given back once
        assert await theirs.take_avatar("e") and not await mine.take_avatar("f")
        assert conversations.take()
        Seats(fd, 2, 0, 0).clear(1)  # the supervisor, once worker 1 has died: its avatar seats go too
        assert await mine.take_avatar("g") and conversations.taken() == 1
    finally:
        os.close(fd)
