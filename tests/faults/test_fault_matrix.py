"""Every way a conversation can end badly, on a real relay and the simulators: each avatar session created is
stopped, the relay is back to its baseline (no open conversation, no leftover task), and a healthy conversation run
alongside completes. Unsafe calls are never retried (`streaming.new`), safe ones are (stop, with Retry-After). The
relay runs as `avatar-relay serve` does by default: session journal on, production socket options. An avatar that
cannot start degrades the conversation to voice only (`avatar_unavailable`, then the conversation goes on)."""

from __future__ import annotations

import pytest

from tests.faults.matrix import SCENARIOS, Scenario, run_scenario


@pytest.mark.timeout(90)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_every_session_is_stopped_and_the_healthy_conversation_completes(scenario: Scenario) -> None:
    m = await run_scenario(scenario)
    assert m.created == m.stopped, f"leaked sessions: {m}"
    assert m.relay_back_to_baseline, f"{scenario.name}: a conversation or a task outlived it: {m}"
    assert m.healthy_completed, m
    if scenario.expect_created is not None:
        assert m.faulty_created == scenario.expect_created, m
    if scenario.expect_error is not None:
        assert m.error == scenario.expect_error, m
    if scenario.expect_ended is not None:
        assert m.ended == scenario.expect_ended, m
    if scenario.expect_degraded:
        assert m.avatar_unavailable is not None and m.error is None, f"{scenario.name}: not degraded to voice: {m}"
    for endpoint, count in scenario.expect_requests.items():
        assert m.requests.get(endpoint) == count, (endpoint, m)
    assert m.cleanup_seconds < 5.0, m
