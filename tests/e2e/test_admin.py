"""The operator's endpoints on the real relay (hypercorn + the simulators on loopback): who gets in (no token, a
wrong one), the live conversations as the operator sees them, ending one (`ended` `admin` in the browser, its
avatar stopped at the provider), and the avatar sessions the provider bills that no relay holds — on demand and in
`avatar_relay_untracked_avatar_sessions`."""

from __future__ import annotations

import logging
from typing import Any

import httpx2
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from relay.config import Settings
from relay.protocol.liveavatar import SANDBOX_AVATAR_ID
from relay.simli import SimliProvider
from tests.support.harness import Relay, running_relay
from tests.support.resumable import ResumingBrowser

pytestmark = pytest.mark.timeout(60)

TOKEN = "admin-token-for-the-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def admin_get(relay: Relay, path: str, **headers: str) -> httpx2.Response:
    return await relay.http.get(relay.url + path, headers=headers or AUTH)


async def listed(relay: Relay) -> list[dict[str, Any]]:
    answer = await admin_get(relay, "/admin/conversations")
    assert answer.status_code == 200, answer.text
    conversations: list[dict[str, Any]] = answer.json()["conversations"]
    return conversations


async def wait_listed(relay: Relay, condition: Any, what: str) -> list[dict[str, Any]]:
    with trio.move_on_after(10):
        while True:
            found = await listed(relay)
            if condition(found):
                return found
            await trio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; last listing: {await listed(relay)}")


async def leak_liveavatar_session(relay: Relay) -> str:
    """A session opened on the simulated account by someone else than the relay (as a crashed process would leave
    one): billed, held by no relay."""
    answer = await relay.http.post(relay.sims.liveavatar + "/v1/sessions/token", headers={"X-API-KEY": "la-test"},
                                   json={"mode": "LITE", "avatar_id": SANDBOX_AVATAR_ID})
    session_id: str = answer.json()["data"]["session_id"]
    return session_id


async def test_admin_endpoints_are_off_without_a_token() -> None:
    async with running_relay(relay_avatar="liveavatar") as relay:
        for path in ("/admin/conversations", "/admin/avatar-sessions"):
            assert (await admin_get(relay, path)).status_code == 404
        assert (await relay.http.post(relay.url + "/admin/conversations/x/end", headers=AUTH)).status_code == 404


async def test_no_token_and_a_wrong_token_get_the_same_401_and_a_log_line_without_the_token(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.admin")
    wrong = "not-the-admin-token-but-long-enough"
    async with running_relay(relay_avatar="liveavatar", relay_admin_token=TOKEN) as relay:
        answers = [await relay.http.get(relay.url + "/admin/conversations"),
                   await admin_get(relay, "/admin/conversations", Authorization=f"Bearer {wrong}"),
                   await admin_get(relay, "/admin/avatar-sessions", Authorization=f"Basic {wrong}"),
                   await relay.http.post(relay.url + "/admin/conversations/x/end",
                                         headers={"Authorization": f"Bearer {TOKEN}x"})]
    assert [a.status_code for a in answers] == [401] * 4
    assert len({a.content for a in answers}) == 1  # no hint of what was wrong
    assert b"RELAY_ADMIN_TOKEN" not in answers[0].content
    refusals = [r.getMessage() for r in caplog.records if "admin request refused" in r.getMessage()]
    assert len(refusals) == 4
    assert "(no token)" in refusals[0] and "(wrong token)" in refusals[1]
    assert wrong not in caplog.text and TOKEN not in caplog.text


async def test_the_operator_lists_a_live_conversation_and_ends_it() -> None:
    async with running_relay(relay_avatar="liveavatar", relay_admin_token=TOKEN) as relay:
        async with relay.browser() as browser:
            ready = await browser.start()
            [shown] = await wait_listed(relay, lambda found: found and found[0]["state"] == "live", "a live one")
            assert shown["conversation_id"] == ready["conversation_id"]
            assert shown["id"].startswith("r-")
            assert shown["provider"] == "liveavatar"
            assert shown["avatar_session_id"] == ready["avatar"]["session_id"]
            assert shown["client"] == "127.0.0.1"
            assert shown["subject"] is None
            assert shown["avatar_sessions"] == 1 and shown["avatar_seconds"] >= 0
            later = await wait_listed(relay, lambda found: found[0]["avatar_seconds"] > shown["avatar_seconds"],
                                      "avatar time to run")
            assert later[0]["avatar_seconds"] <= later[0]["seconds"] + 0.2

            answer = await relay.http.post(relay.url + f"/admin/conversations/{ready['conversation_id']}/end",
                                           headers=AUTH)
            assert answer.status_code == 200, answer.text
            assert answer.json()["ended"] == ready["conversation_id"] and answer.json()["stopped"] is True
            ended = await browser.expect("ended")
            assert ended["reason"] == "admin"
        assert await listed(relay) == []
        session = (await relay.ledger("liveavatar"))["sessions"][ready["avatar"]["session_id"]]
        assert session["stopped"] is not None and session["stop_calls"] == 1  # before the operator was answered
        again = await relay.http.post(relay.url + f"/admin/conversations/{ready['conversation_id']}/end",
                                      headers=AUTH)
        assert again.status_code == 404


async def test_the_comparison_names_a_session_the_provider_bills_that_no_relay_holds() -> None:
    async with running_relay(relay_avatar="liveavatar", relay_admin_token=TOKEN) as relay:
        async with relay.browser() as browser:
            ready = await browser.start()
            leaked = await leak_liveavatar_session(relay)
            answer = await admin_get(relay, "/admin/avatar-sessions")
            assert answer.status_code == 200, answer.text
            [finding] = answer.json()["providers"]
            assert finding["provider"] == "liveavatar" and finding["listable"] is True
            assert finding["running"] == 2 and finding["held"] == 1
            assert finding["untracked_ids"] == [leaked] and finding["untracked"] == 1
            assert ready["avatar"]["session_id"] not in finding["untracked_ids"]


async def scrape_untracked(relay: Relay) -> dict[str, float]:
    text = (await relay.http.get(relay.url + "/metrics")).text
    return {sample.labels["provider"]: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "avatar_relay_untracked_avatar_sessions"}


async def wait_untracked(relay: Relay, provider: str, expected: float) -> None:
    with trio.move_on_after(10):
        while (await scrape_untracked(relay)).get(provider) != expected:
            await trio.sleep(0.05)
        return
    raise AssertionError(f"avatar_relay_untracked_avatar_sessions: {await scrape_untracked(relay)}, wanted {expected}")


async def test_the_periodic_check_counts_an_untracked_session_until_it_is_stopped() -> None:
    async with running_relay(relay_avatar="liveavatar", relay_untracked_check_interval=0.1) as relay:
        await wait_untracked(relay, "liveavatar", 0)
        leaked = await leak_liveavatar_session(relay)
        await wait_untracked(relay, "liveavatar", 1)
        stopped = await relay.http.post(relay.sims.liveavatar + "/v1/sessions/stop",
                                        headers={"X-API-KEY": "la-test"}, json={"session_id": leaked})
        assert stopped.status_code == 200, stopped.text
        await wait_untracked(relay, "liveavatar", 0)


async def test_a_simli_session_no_relay_holds_is_counted() -> None:
    """Simli cannot list its sessions, only count them: what it counts beyond the relay's own is flagged."""
    async with running_relay(relay_avatar="simli", relay_admin_token=TOKEN) as relay:
        async with relay.browser() as browser:
            await browser.start()
            assert relay.settings is not None
            foreign = SimliProvider(relay.settings, relay.http)
            async with foreign.open_session(lambda event: None) as session:
                await session.wait_connected()
                [finding] = (await admin_get(relay, "/admin/avatar-sessions")).json()["providers"]
                assert finding == {"provider": "simli", "listable": False, "running": 2, "held": 1, "untracked": 1,
                                   "untracked_ids": [], "error": None}


def test_settings_refuse_a_short_admin_token() -> None:
    with pytest.raises(ValueError):
        Settings(_env_file=None, relay_admin_token="short")  # type: ignore[call-arg]


async def test_a_held_conversation_is_shown_held_and_the_operator_can_end_it() -> None:
    async with running_relay(relay_avatar="liveavatar", relay_admin_token=TOKEN, relay_resume_window=60) as relay:
        browser = ResumingBrowser(relay.url)
        await browser.connect()
        await browser.send(type="start")
        ready = await browser.expect("ready")
        browser.drop()  # the connection is lost without a close: the conversation waits for a resume
        [held] = await wait_listed(relay, lambda found: found and found[0]["state"] == "held", "a held one")
        assert held["avatar_session_id"] == ready["avatar"]["session_id"]  # still billed while held
        answer = await relay.http.post(relay.url + f"/admin/conversations/{held['id']}/end", headers=AUTH)
        assert answer.status_code == 200 and answer.json()["stopped"] is True
        assert await listed(relay) == []
        session = (await relay.ledger("liveavatar"))["sessions"][ready["avatar"]["session_id"]]
        assert session["stopped"] is not None
        refused = await browser.resume(ready["resume_token"])
        assert refused["type"] == "error" and refused["reason"] == "ended"


async def test_a_request_a_proxy_forwarded_never_reaches_the_endpoints(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.admin")
    async with running_relay(relay_avatar="liveavatar", relay_admin_token=TOKEN) as relay:
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP", "Via"):
            answer = await admin_get(relay, "/admin/conversations", **AUTH, **{header: "for=203.0.113.9"})
            assert answer.status_code == 404, header  # with the right token: as if the endpoints were off
        assert (await admin_get(relay, "/admin/conversations")).status_code == 200
    assert caplog.text.count("admin request through a proxy refused") == 4 and TOKEN not in caplog.text


async def test_the_untracked_metric_is_there_from_the_start_for_each_listed_provider() -> None:
    async with running_relay(relay_avatar="liveavatar,simli") as relay:  # the default interval: no check yet
        assert await scrape_untracked(relay) == {"liveavatar": 0, "simli": 0}


async def test_a_conversation_whose_avatar_is_being_replaced_shows_replacing() -> None:
    async with running_relay(relay_avatar="liveavatar", relay_admin_token=TOKEN) as relay:
        async with relay.browser() as browser:
            first = (await browser.start())["avatar"]
            await wait_listed(relay, lambda found: found and found[0]["state"] == "live", "a live one")
            await relay.faults("liveavatar", latency_ms={"token": 2000})  # the replacement takes a while to open
            await relay.http.post(relay.sims.liveavatar + "/v1/sessions/stop", headers={"X-API-KEY": "la-test"},
                                  json={"session_id": first["session_id"], "reason": "USER_CLOSED"})
            [between] = await wait_listed(relay, lambda found: found[0]["state"] == "replacing", "replacing")
            assert between["avatar_session_id"] is None and between["avatar_sessions"] == 1
            second = (await browser.expect("avatar_changed"))["avatar"]
            [after] = await wait_listed(relay, lambda found: found[0]["state"] == "live", "live again")
            assert after["avatar_session_id"] == second["session_id"] and after["avatar_sessions"] == 2
