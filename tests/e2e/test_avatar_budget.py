"""RELAY_MAX_AVATAR_SESSIONS without Redis (the real relay under hypercorn, in this process, on the simulators): over
the budget a conversation goes voice-only at once with `avatar_unavailable` `capacity` and no create call is made;
the seat comes back once the session is stopped; the metrics count it."""

from __future__ import annotations

import pytest

from tests.support.harness import running_relay, session_counts


@pytest.mark.timeout(60)
async def test_over_the_budget_the_conversation_goes_voice_only_without_a_create_call() -> None:
    async with running_relay(relay_avatar="liveavatar", relay_max_avatar_sessions=1) as relay:
        async with relay.browser() as first:
            ready = await first.start()
            assert ready["avatar"] is not None
            async with relay.browser() as second:
                await second.send(type="start")
                notice = await second.expect("avatar_unavailable")
                assert notice["reason"] == "capacity"
                ready = await second.expect("ready")
                assert ready["avatar"] is None
                assert session_counts(await relay.ledger("liveavatar")) == (1, 0)  # no create call for it
                await second.send(type="text", text="hello?")
                await second.expect("agent_response")  # voice-only, the conversation goes on
            await first.send(type="stop")
            await first.expect("ended")
        await relay.wait_all_sessions_stopped("liveavatar")
        async with relay.browser() as third:
            assert (await third.start())["avatar"] is not None  # the seat came back with the stop
        metrics = (await relay.http.get(relay.url + "/metrics")).text
        assert 'avatar_relay_admission_refusals_total{reason="avatar_budget"} 1.0' in metrics
        assert "avatar_relay_avatar_sessions_held" in metrics
