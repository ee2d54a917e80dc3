"""`avatar-relay doctor` against the simulators, with each failure injected: it must name the problem in plain
words, and exit non-zero on any problem."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
import trio

from relay.ops.doctor import Finding, format_report, run_checks
from relay.providers.table import serve_simulators
from relay.sim.runner import SimulatorURLs
from tests.e2e.test_cli import clean_env, free_port
from tests.support.harness import E2E_AVATAR, relay_settings

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def sims(nursery: trio.Nursery) -> AsyncIterator[SimulatorURLs]:
    yield await nursery.start(serve_simulators, "127.0.0.1")


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=5.0) as client:
        yield client


async def fault(http: httpx2.AsyncClient, url: str, **faults: Any) -> None:
    (await http.post(url + "/_sim/faults", json=faults)).raise_for_status()


def problems(findings: list[Finding]) -> list[str]:
    return [f"{f.service}: {f.text}" for f in findings if f.level == "problem"]


async def check(sims: SimulatorURLs, http: httpx2.AsyncClient, **overrides: Any) -> list[Finding]:
    with trio.fail_after(10):
        return await run_checks(relay_settings(sims, **overrides), http)


@pytest.mark.parametrize("avatar", ["heygen", "liveavatar", "none"])
async def test_a_good_configuration_has_no_problems(sims: SimulatorURLs, http: httpx2.AsyncClient,
                                                    avatar: str) -> None:
    findings = await check(sims, http, relay_avatar=avatar,
                           liveavatar_avatar_id="6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01")
    assert problems(findings) == []
    report = format_report(findings)
    assert "a signed conversation URL was issued" in report
    assert report.endswith("No problems found.")
    if avatar != "none":
        assert "exists and is active" in report


async def test_an_invalid_elevenlabs_key_is_named(sims: SimulatorURLs, http: httpx2.AsyncClient) -> None:
    await fault(http, sims.elevenlabs, invalid_api_keys=["xi-test"])
    (only,) = problems(await check(sims, http))
    assert only.startswith("ElevenLabs: ELEVENLABS_API_KEY was refused (HTTP 401")
    assert "xi-test" not in only


async def test_an_unknown_agent_is_named(sims: SimulatorURLs, http: httpx2.AsyncClient) -> None:
    await fault(http, sims.elevenlabs, unknown_agent_ids=["agent_e2e"])
    (only,) = problems(await check(sims, http))
    assert "ELEVENLABS_AGENT_ID=agent_e2e does not exist" in only


async def test_an_agent_that_wants_mu_law_input_is_a_problem(sims: SimulatorURLs, http: httpx2.AsyncClient) -> None:
    await fault(http, sims.elevenlabs, user_input_audio_format="ulaw_8000", agent_output_audio_format="ulaw_8000")
    findings = await check(sims, http)
    (only,) = problems(findings)
    assert "expects ulaw_8000 input" in only
    assert "agent output format ulaw_8000." in format_report(findings)


async def test_a_refused_signed_url_is_a_problem(sims: SimulatorURLs, http: httpx2.AsyncClient) -> None:
    await fault(http, sims.elevenlabs, signed_url_status=503)
    (only,) = problems(await check(sims, http))
    assert only.startswith("ElevenLabs: no signed conversation URL") and "503" in only


async def test_an_invalid_heygen_key_is_named(sims: SimulatorURLs, http: httpx2.AsyncClient) -> None:
    await fault(http, sims.heygen, invalid_keys=["hg-test"])
    (only,) = problems(await check(sims, http, relay_avatar="heygen"))
    assert only.startswith("HeyGen: HEYGEN_API_KEY was refused (HTTP 401")


async def test_every_heygen_check_says_that_streaming_v1_is_retired(sims: SimulatorURLs,
                                                                     http: httpx2.AsyncClient) -> None:
    findings = await check(sims, http, relay_avatar="heygen")
    notes = [f.text for f in findings if f.service == "HeyGen" and f.level == "note"]
    assert any("retired" in text and "2026-03-31" in text and "LiveAvatar" in text for text in notes)


@pytest.mark.parametrize("status", [404, 410])
async def test_a_retired_heygen_api_is_recognised_and_explained(sims: SimulatorURLs, http: httpx2.AsyncClient,
                                                                status: int) -> None:
    await fault(http, sims.heygen, retired=status)
    (only,) = problems(await check(sims, http, relay_avatar="heygen"))
    assert only.startswith("HeyGen: ") and "retired" in only and "LIVEAVATAR_API_KEY" in only
    assert "HEYGEN_API_KEY was refused" not in only


async def test_an_account_without_api_access_is_recognised_and_explained(sims: SimulatorURLs,
                                                                         http: httpx2.AsyncClient) -> None:
    await fault(http, sims.heygen, no_api_access=True)
    (only,) = problems(await check(sims, http, relay_avatar="heygen"))
    assert "no API access" in only and "400599" in only
    assert "HEYGEN_API_KEY was refused" not in only


async def test_an_unknown_heygen_avatar_is_named_with_examples(sims: SimulatorURLs, http: httpx2.AsyncClient) -> None:
    (only,) = problems(await check(sims, http, relay_avatar="heygen", heygen_avatar_id="Nobody_2020"))
    assert "HEYGEN_AVATAR_ID=Nobody_2020 is not among this account's streaming avatars" in only
    assert "Wayne_20240711" in only


async def test_running_heygen_sessions_are_reported(sims: SimulatorURLs, http: httpx2.AsyncClient) -> None:
    created = await http.post(sims.heygen + "/v1/streaming.new", headers={"x-api-key": "hg-test"},
                              json={"avatar_id": "Wayne_20240711", "version": "v2"})
    assert created.status_code == 200
    findings = await check(sims, http, relay_avatar="heygen")
    assert problems(findings) == []
    assert any(f.level == "note" and "1 session(s) are running" in f.text for f in findings)


async def test_an_invalid_liveavatar_key_is_named(sims: SimulatorURLs, http: httpx2.AsyncClient) -> None:
    await fault(http, sims.liveavatar, invalid_keys=["la-test"])
    (only,) = problems(await check(sims, http, relay_avatar="liveavatar"))
    assert only.startswith("LiveAvatar: LIVEAVATAR_API_KEY was refused")


async def test_an_unknown_liveavatar_avatar_is_named(sims: SimulatorURLs, http: httpx2.AsyncClient) -> None:
    (only,) = problems(await check(sims, http, relay_avatar="liveavatar", liveavatar_avatar_id=E2E_AVATAR))
    assert f"LIVEAVATAR_AVATAR_ID={E2E_AVATAR} does not exist" in only


async def test_sandbox_with_another_avatar_is_a_problem(sims: SimulatorURLs, http: httpx2.AsyncClient) -> None:
    found = problems(await check(sims, http, relay_avatar="liveavatar", liveavatar_sandbox=True,
                                 liveavatar_avatar_id="6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01"))
    assert len(found) == 1 and "LIVEAVATAR_SANDBOX=true only works with the sandbox avatar" in found[0]


async def test_an_unreachable_service_is_named(sims: SimulatorURLs, http: httpx2.AsyncClient) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    found = problems(await check(sims, http, elevenlabs_base_url=closed, heygen_base_url=closed))
    assert sorted(found) == ["ElevenLabs: cannot reach ELEVENLABS_BASE_URL: the request failed (ConnectError). "
                             "Check the URL and the network.",
                             "HeyGen: cannot reach HEYGEN_BASE_URL: the request failed (ConnectError). "
                             "Check the URL and the network."]


async def test_a_refusing_agent_is_explained_in_the_services_words(sims: SimulatorURLs,
                                                                    http: httpx2.AsyncClient) -> None:
    await fault(http, sims.elevenlabs, required_dynamic_variables=["customer_name"])
    with trio.fail_after(10):
        found = problems(await run_checks(relay_settings(sims, relay_avatar="none"), http, connect=True))
    (only,) = found
    assert only.startswith("ElevenLabs: the agent refused a plain conversation: the agent needs a dynamic variable")
    assert "{'customer_name'}" in only and "(close 1008 missing_dynamic_variable)" in only


async def run_doctor(env: dict[str, str], *args: str) -> tuple[int, str]:
    with trio.fail_after(30):
        result = await trio.run_process([sys.executable, "-m", "relay", "doctor", *args], env=env,
                                        cwd=os.environ.get("TMPDIR", "/tmp"), capture_stdout=True,
                                        capture_stderr=True, check=False)
    return result.returncode, result.stdout.decode() + result.stderr.decode()


async def test_the_command_exits_1_and_names_the_problem(sims: SimulatorURLs, http: httpx2.AsyncClient) -> None:
    env = clean_env(ELEVENLABS_BASE_URL=sims.elevenlabs, ELEVENLABS_AGENT_ID="agent_cli",
                    ELEVENLABS_API_KEY="xi-cli-secret", HEYGEN_BASE_URL=sims.heygen, HEYGEN_API_KEY="hg-cli-secret",
                    HEYGEN_AVATAR_ID="Wayne_20240711", RELAY_AVATAR="heygen")
    status, output = await run_doctor(env, "--connect")
    assert status == 0, output
    assert "a conversation opened" in output and output.rstrip().endswith("No problems found.")
    await fault(http, sims.heygen, invalid_keys=["hg-cli-secret"])
    status, output = await run_doctor(env)
    assert status == 1
    assert "PROBLEM HeyGen: HEYGEN_API_KEY was refused" in output
    assert output.rstrip().endswith("1 problem(s) found.")
    assert "secret" not in output


async def test_the_command_in_demo_mode_checks_fresh_simulators_and_says_so() -> None:
    status, output = await run_doctor(clean_env())
    assert status == 0, output
    assert output.startswith("Demo mode (no API keys set): checking against freshly started simulators")
    assert "LiveAvatar: the avatar" in output and "exists and is active" in output


async def test_the_command_exits_2_on_an_invalid_configuration() -> None:
    status, output = await run_doctor(clean_env(ELEVENLABS_API_KEY="xi-only-a-key"))
    assert status == 2
    assert "PROBLEM configuration" in output and "ELEVENLABS_AGENT_ID" in output
    assert "xi-only-a-key" not in output
