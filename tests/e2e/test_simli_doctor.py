"""`avatar-relay doctor` with RELAY_AVATAR=simli against the simulators: the key, the face and the limits are checked
in plain words, and nothing is billed (the session token is never used)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
import trio
import trio_websocket

from relay.ops.doctor import Finding, format_report, run_checks
from relay.providers.table import serve_simulators
from relay.sim.runner import SimulatorURLs
from tests.support.harness import relay_settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def sims(nursery: trio.Nursery) -> AsyncIterator[SimulatorURLs]:
    yield await nursery.start(serve_simulators, "127.0.0.1")


async def fault(http: httpx2.AsyncClient, sims: SimulatorURLs, **faults: Any) -> None:
    (await http.post(sims.simli + "/_sim/faults", json=faults)).raise_for_status()


async def check(sims: SimulatorURLs, http: httpx2.AsyncClient, **overrides: Any) -> list[Finding]:
    with trio.fail_after(10):
        return await run_checks(relay_settings(sims, relay_avatar="simli", **overrides), http)


def simli_problems(findings: list[Finding]) -> list[str]:
    return [f.text for f in findings if f.level == "problem" and f.service == "Simli"]


async def test_a_good_simli_configuration_has_no_problems_and_bills_nothing(sims: SimulatorURLs,
                                                                             http: httpx2.AsyncClient) -> None:
    findings = await check(sims, http)
    report = format_report(findings)
    assert report.endswith("No problems found."), report
    assert "Simli: no sessions are running on the account now." in report
    assert "maxSessionLength 1860 s and maxIdleTime 120 s is accepted" in report
    ledger = (await http.get(sims.simli + "/_sim/ledger")).json()
    assert ledger["tokens"] == 1 and ledger["sessions"] == {} and ledger["billed_seconds"] == 0


@pytest.mark.parametrize(
    ("faults", "overrides", "named"),
    [
        ({"invalid_keys": ["sm-test"]}, {}, "SIMLI_API_KEY was refused"),
        ({}, {"simli_face_id": "00000000-0000-4000-8000-000000000000"}, "INVALID_FACE_ID"),
        ({"no_credits": True}, {}, "no minutes or billing information"),
        ({"fail": {"sessions": {"status": 503}}}, {}, "counting the running sessions failed"),
    ],
)
async def test_each_simli_problem_is_named(sims: SimulatorURLs, http: httpx2.AsyncClient, faults: dict[str, Any],
                                           overrides: dict[str, Any], named: str) -> None:
    await fault(http, sims, **faults)
    found = simli_problems(await check(sims, http, **overrides))
    assert any(named in text for text in found), found
    assert all("sm-test" not in text for text in found)


async def test_running_simli_sessions_are_reported(sims: SimulatorURLs, http: httpx2.AsyncClient) -> None:
    token = (await http.post(sims.simli + "/compose/token", headers={"x-simli-api-key": "k"},
                             json={"faceId": "cace3ef7-a4c4-425d-a8cf-a5358eb0c427"})).json()["session_token"]
    url = sims.simli.replace("http", "ws") + f"/compose/webrtc/livekit?session_token={token}"
    async with trio_websocket.open_websocket_url(url) as ws:
        while await ws.get_message() != "START":
            pass
        findings = await check(sims, http)
        notes = [f.text for f in findings if f.level == "note" and f.service == "Simli"]
        assert any("1 session(s) are running" in text for text in notes), findings
        await ws.send_message("DONE")
