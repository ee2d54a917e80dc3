"""RELAY_AVATAR=liveavatar,simli through the real relay (hypercorn, the simulators on loopback, issue #23 §2): each
kind of LiveAvatar refusal moves the conversation's avatar on to Simli inside RELAY_SETUP_TIMEOUT, the metrics
count it by provider and reason, the journal records the session under Simli's own name and base URL; when every
provider refuses, the conversation goes voice-only with the last reason; the doctor and the reaper cover every
listed provider; each provider's budget is its own."""

from __future__ import annotations

import logging
from typing import Any

import httpx2
import pytest
import trio

from relay.ops import reaper
from relay.ops.doctor import run_checks
from relay.protocol.liveavatar import SANDBOX_AVATAR_ID
from relay.providers.liveavatar import DEMO_AVATAR
from relay.providers.table import serve_simulators
from relay.sim.runner import SimulatorURLs
from tests.support.harness import Relay, relay_settings, running_relay, session_counts

pytestmark = pytest.mark.timeout(60)

UNKNOWN_FACE = "00000000-0000-4000-8000-00000000dead"


def failovers(metrics: str) -> dict[tuple[str, str], float]:
    """avatar_relay_avatar_failovers_total by (provider, reason)."""
    found: dict[tuple[str, str], float] = {}
    for line in metrics.splitlines():
        if line.startswith("avatar_relay_avatar_failovers_total{"):
            labels, value = line.rsplit(" ", 1)
            parts = dict(p.split("=", 1) for p in labels[labels.index("{") + 1:-1].split(","))
            found[(parts["provider"].strip('"'), parts["reason"].strip('"'))] = float(value)
    return found


async def simli_took_over(relay: Relay) -> None:
    """A conversation whose avatar comes from Simli: `ready` names it, no `avatar_unavailable`, and the session is
    journaled under Simli's name; after `stop`, every session of both providers is stopped."""
    async with relay.browser() as browser:
        await browser.send(type="start")
        ready = await browser.expect("ready")
        assert ready["avatar"] is not None and ready["avatar"]["provider"] == "simli"
        assert [row[0] for row in relay.journal_rows()] == ["simli"]
        await browser.send(type="text", text="hello")
        await browser.expect("agent_response")
        await browser.send(type="stop")
        await browser.expect("ended")
    simli = await relay.wait_for_ledger("simli", lambda ledger: ledger["active"] == 0, "Simli's session stopped")
    assert len(simli["sessions"]) == 1
    await relay.wait_all_sessions_stopped("liveavatar")


@pytest.mark.parametrize(("faults", "overrides", "reason"), [
    ({"concurrency_limit": 0}, {}, "concurrent_limit"),
    ({"no_credits": True}, {}, "no_credits"),
    ({"fail": {"token": {"status": 429, "message": "slow down"}}}, {}, "rate_limited"),
    ({"fail": {"token": {"status": 503, "message": "down"}}}, {}, "upstream_error"),
    ({"latency_ms": {"token": 30_000}}, {"relay_setup_timeout": 4.0}, "timeout"),
    ({"invalid_keys": ["la-test"]}, {}, "unauthorized"),
])
async def test_each_liveavatar_refusal_moves_on_to_simli(faults: dict[str, Any], overrides: dict[str, Any],
                                                        reason: str, caplog: pytest.LogCaptureFixture) -> None:
    async with running_relay(relay_avatar="liveavatar,simli", **overrides) as relay:
        if faults:
            await relay.faults("liveavatar", **faults)
        with caplog.at_level(logging.INFO, logger="relay.avatars"):
            await simli_took_over(relay)
        metrics = (await relay.http.get(relay.url + "/metrics")).text
        assert failovers(metrics) == {("liveavatar", reason): 1.0}
        assert 'avatar_relay_avatar_sessions_created_total{provider="simli"} 1.0' in metrics
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR and "liveavatar" in r.getMessage()]
    assert bool(loud) == (reason in ("unauthorized", "bad_config"))  # a configuration mistake is said loudly


async def test_an_unknown_simli_face_is_said_loudly_and_moves_on_to_liveavatar(
        caplog: pytest.LogCaptureFixture) -> None:
    async with running_relay(relay_avatar="simli,liveavatar", simli_face_id=UNKNOWN_FACE) as relay:
        with caplog.at_level(logging.INFO, logger="relay.avatars"):
            async with relay.browser() as browser:
                assert (await browser.start())["avatar"]["provider"] == "liveavatar"
                assert [row[0] for row in relay.journal_rows()] == ["liveavatar"]
        metrics = (await relay.http.get(relay.url + "/metrics")).text
        assert failovers(metrics) == {("simli", "bad_config"): 1.0}
        await relay.wait_all_sessions_stopped("liveavatar")
    assert any(r.levelno >= logging.ERROR and "simli" in r.getMessage() and "configuration" in r.getMessage()
               for r in caplog.records)


async def test_the_relays_own_budget_for_liveavatar_moves_on_to_simli() -> None:
    async with running_relay(relay_avatar="liveavatar,simli", relay_max_avatar_sessions="liveavatar=1") as relay:
        async with relay.browser() as first:
            assert (await first.start())["avatar"]["provider"] == "liveavatar"
            async with relay.browser() as second:
                assert (await second.start())["avatar"]["provider"] == "simli"
                assert session_counts(await relay.ledger("liveavatar")) == (1, 0)  # never asked of LiveAvatar
        metrics = (await relay.http.get(relay.url + "/metrics")).text
        assert failovers(metrics) == {("liveavatar", "capacity"): 1.0}


async def test_each_providers_budget_is_its_own() -> None:
    async with running_relay(relay_avatar="liveavatar,simli",
                             relay_max_avatar_sessions="liveavatar=1,simli=1") as relay:
        async with relay.browser() as first, relay.browser() as second, relay.browser() as third:
            assert (await first.start())["avatar"]["provider"] == "liveavatar"
            assert (await second.start())["avatar"]["provider"] == "simli"
            await third.send(type="start")
            notice = await third.expect("avatar_unavailable")
            assert notice["reason"] == "capacity"
            assert (await third.expect("ready"))["avatar"] is None


async def test_when_every_provider_refuses_the_conversation_goes_voice_only_with_the_last_reason() -> None:
    async with running_relay(relay_avatar="liveavatar,simli") as relay:
        await relay.faults("liveavatar", concurrency_limit=0)
        await relay.faults("simli", no_credits=True)
        async with relay.browser() as browser:
            await browser.send(type="start")
            notice = await browser.expect("avatar_unavailable")
            assert notice["reason"] == "no_credits"  # Simli's, the last of the list
            assert (await browser.expect("ready"))["avatar"] is None
            await browser.send(type="text", text="hello?")
            await browser.expect("agent_response")
        metrics = (await relay.http.get(relay.url + "/metrics")).text
        assert failovers(metrics) == {("liveavatar", "concurrent_limit"): 1.0}


async def test_the_doctor_checks_every_listed_provider(nursery: trio.Nursery, http: httpx2.AsyncClient) -> None:
    sims: SimulatorURLs = await nursery.start(serve_simulators, "127.0.0.1")
    (await http.post(sims.simli + "/_sim/faults", json={"invalid_keys": ["sm-test"]})).raise_for_status()
    with trio.fail_after(10):
        findings = await run_checks(relay_settings(sims, relay_avatar="liveavatar,simli",
                                                   liveavatar_avatar_id=DEMO_AVATAR), http)
    services = {f.service for f in findings}
    assert {"LiveAvatar", "Simli"} <= services
    assert any(f.level == "problem" and f.service == "Simli" and "SIMLI_API_KEY was refused" in f.text
               for f in findings)
    assert not [f.text for f in findings if f.level == "problem" and f.service == "LiveAvatar"]


async def test_the_reaper_asks_every_listed_providers_own_list(nursery: trio.Nursery,
                                                               http: httpx2.AsyncClient) -> None:
    sims: SimulatorURLs = await nursery.start(serve_simulators, "127.0.0.1")
    settings = relay_settings(sims, relay_avatar="simli,liveavatar")
    leaked = (await http.post(sims.liveavatar + "/v1/sessions/token", headers={"X-API-KEY": "la-test"},
                              json={"mode": "LITE", "avatar_id": SANDBOX_AVATAR_ID})).json()["data"]["session_id"]
    with trio.fail_after(10):
        orphans = await reaper.find_orphans(settings, http, None)
        assert [(o.provider, o.session_id, o.source) for o in orphans] == [("liveavatar", leaked, "list")]
        result = await reaper.reap(settings, http, None, orphans)
    assert result.stopped == [leaked]
