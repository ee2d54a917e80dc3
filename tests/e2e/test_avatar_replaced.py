"""An avatar replaced instead of lost (issue #23 §3), through the real relay on the simulators: when the avatar
session dies mid-conversation — the provider ends it, its socket drops mid-reply, it reports an error — the relay
opens another (the first of the list that starts) while the conversation goes on, tells the browser
`avatar_changed` (the shape of `ready.avatar`), journals the replacement, and every session of either provider ends
stopped."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.harness import BrowserClient, Relay, running_relay, session_counts

pytestmark = pytest.mark.timeout(60)


async def still_talking(browser: BrowserClient) -> None:
    await browser.send(type="text", text="are you still there")
    await browser.expect("agent_response", where=lambda m: "are you still there" in m["text"])


async def changed(browser: BrowserClient, before: dict[str, Any]) -> dict[str, Any]:
    notice = await browser.expect("avatar_changed")
    assert set(notice["avatar"]) == set(before), notice  # the shape of ready.avatar
    assert notice["avatar"]["session_id"] != before["session_id"]
    assert notice["reason"] in ("session_ended", "session_gone"), notice
    return notice  # type: ignore[no-any-return]


async def all_stopped(relay: Relay) -> None:
    await relay.wait_all_sessions_stopped("liveavatar")
    await relay.wait_for_ledger("simli", lambda ledger: ledger["active"] == 0, "every Simli session ended")
    assert relay.journal_rows() == []


async def test_a_session_the_provider_ends_is_replaced() -> None:
    async with running_relay(relay_avatar="liveavatar") as relay:
        async with relay.browser() as browser:
            first = (await browser.start())["avatar"]
            stop = await relay.http.post(relay.sims.liveavatar + "/v1/sessions/stop", headers={"X-API-KEY": "la-test"},
                                         json={"session_id": first["session_id"], "reason": "USER_CLOSED"})
            assert stop.status_code == 200, stop.text
            notice = await changed(browser, first)
            assert notice["avatar"]["provider"] == "liveavatar"
            assert [row[1] for row in relay.journal_rows()] == [notice["avatar"]["session_id"]]
            await still_talking(browser)
            await browser.send(type="stop")
            await browser.expect("ended")
        assert session_counts(await relay.ledger("liveavatar"))[0] == 2
        await all_stopped(relay)


async def test_a_socket_that_drops_mid_reply_is_replaced_by_the_next_provider() -> None:
    async with running_relay(relay_avatar="simli,liveavatar") as relay:
        async with relay.browser() as browser:
            first = (await browser.start())["avatar"]
            assert first["provider"] == "simli"
            await relay.faults("simli", drop_ws_after_audio_bytes=1, concurrency_limit=1)  # the next socket: refused
            await browser.send(type="text", text="tell me a story")
            notice = await changed(browser, first)
            assert notice["avatar"]["provider"] == "liveavatar"
            await relay.faults("simli", drop_ws_after_audio_bytes=None, concurrency_limit=None)
            await still_talking(browser)
            await browser.send(type="stop")
            await browser.expect("ended")
        await relay.wait_all_sessions_stopped("liveavatar")
        metrics = (await relay.http.get(relay.url + "/metrics")).text
        assert 'avatar_relay_avatar_sessions_created_total{provider="liveavatar"} 1.0' in metrics
        # Simli cannot stop a session whose socket dropped (no stop by id): it is reported, and bounded by
        # SIMLI_MAX_IDLE_TIME (docs/deploy.md); it is still "stopped through the provider's API" once: its socket
        # is closed and nothing else can be called.
        assert 'avatar_relay_avatar_sessions_stop_failed_total{provider="simli"} 1.0' in metrics


async def test_a_session_that_reports_an_error_is_replaced() -> None:
    async with running_relay(relay_avatar="liveavatar,simli") as relay:
        await relay.faults("liveavatar", concurrency_limit=0)
        await relay.faults("simli", terminate_after_ms={"text": "ERROR: BILLING_ERROR", "after_ms": 300})
        async with relay.browser() as browser:
            first = (await browser.start())["avatar"]
            assert first["provider"] == "simli"
            await relay.faults("liveavatar", concurrency_limit=None)
            notice = await changed(browser, first)
            assert notice["avatar"]["provider"] == "liveavatar"
            await still_talking(browser)
        await all_stopped(relay)


async def test_when_no_replacement_can_be_had_the_conversation_goes_on_voice_only() -> None:
    async with running_relay(relay_avatar="liveavatar") as relay:
        async with relay.browser() as browser:
            first = (await browser.start())["avatar"]
            await relay.faults("liveavatar", concurrency_limit=0)
            await relay.http.post(relay.sims.liveavatar + "/v1/sessions/stop", headers={"X-API-KEY": "la-test"},
                                  json={"session_id": first["session_id"], "reason": "USER_CLOSED"})
            notice = await browser.expect("avatar_unavailable")
            assert notice["reason"] == "concurrent_limit"
            await still_talking(browser)
        await all_stopped(relay)
