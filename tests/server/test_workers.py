"""relay/server/workers.py without processes: the restart policy and the exit statuses' names (the shared caps:
test_seats.py; the merged /metrics: test_worker_metrics.py; journal claims: tests/ops/test_journal.py; the worker
index on log lines: tests/ops/test_logs.py)."""

from __future__ import annotations

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
