"""Issue 29 under `avatar-relay serve --workers 2` (a real supervisor, real workers on one loopback port, the
simulators in this process): a resume that lands on the worker that does not hold the conversation resumes it — the
accepting worker relays the connection to the holding one (relay.server.handover). The kernel picks the worker that
accepts each connection, so the test drops and resumes until the relay reports a hand-over
(`avatar_relay_resume_handovers_total` of the merged /metrics: counted by the accepting worker before it relays),
checking the conversation at every step; then it talks, drops and resumes through the relayed connection."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio

from relay.sim.runner import SimulatorURLs
from tests.e2e.test_workers import Supervisor, heygen_ledger, relay_env, supervisor, wait_for_stops
from tests.support.resumable import ResumingBrowser
from tests.support.simcontrol import simulators


async def handovers(relay: Supervisor) -> float:
    return sum((await relay.per_worker("avatar_relay_resume_handovers_total")).values())


async def user_messages(http: httpx2.AsyncClient, sims: SimulatorURLs) -> list[Any]:
    conversations = (await http.get(sims.elevenlabs + "/_sim/ledger")).json()["conversations"]
    return list(conversations[0]["user_messages"]) if conversations else []


def holder_of(token: str) -> str:
    """The worker a resume token's route names (`<relay>-w<index>`)."""
    return token.split(".")[1].rsplit("-w", 1)[1]


async def drop_and_resume(browser: ResumingBrowser, token: str, conversation_id: str) -> dict[str, Any]:
    browser.drop()
    resumed = await browser.resume(token)
    assert resumed["type"] == "resumed", resumed
    assert resumed["conversation_id"] == conversation_id
    return resumed


@pytest.mark.timeout(180)
async def test_a_resume_that_lands_on_the_other_worker_resumes_there(tmp_path: Path) -> None:
    async with simulators() as (sims, http), supervisor(relay_env(sims, tmp_path), tmp_path, http) as relay:
        browser = ResumingBrowser(relay.url)
        await browser.connect()
        await browser.send(type="start")
        ready = await browser.expect("ready")
        conversation_id, token = ready["conversation_id"], ready["resume_token"]
        holder = holder_of(token)
        assert holder in ("0", "1"), token
        await browser.send(type="text", text="what are your opening hours?")
        await browser.expect("agent_response")

        with trio.fail_after(90):
            for _ in range(40):
                before = await handovers(relay)
                resumed = await drop_and_resume(browser, token, conversation_id)
                token = resumed["resume_token"]
                assert holder_of(token) == holder  # the conversation stays where it runs
                if await handovers(relay) > before:
                    break
            else:
                raise AssertionError("40 resumes never landed on the worker that does not hold the conversation")

        # The connection now runs through the other worker: the conversation goes on over it.
        await browser.send(type="text", text="and on sunday?")
        await browser.expect("agent_response", where=lambda m: "sunday" in m["text"] and m["seq"] > resumed["seq"])
        # A drop of the relayed connection holds the conversation again; a resume picks it up wherever it lands.
        await browser.send(type="text", text="what about holidays?")
        with trio.fail_after(10):  # dropped only once the agent has it (a reset discards what is still in flight)
            while not any("holidays" in str(m) for m in await user_messages(http, sims)):
                await trio.sleep(0.02)
        resumed = await drop_and_resume(browser, token, conversation_id)
        await browser.expect("agent_response", where=lambda m: "holidays" in m["text"])
        await browser.send(type="stop")
        assert (await browser.expect("ended"))["reason"] == "client_stop"
        seqs = browser.seqs
        breaks = [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]
        assert seqs == list(range(1, len(seqs) + 1)), breaks  # no gap, no duplicate, across every connection

        sessions = await wait_for_stops(http, sims, tmp_path / "state", 1)
        assert len(sessions) == 1 and sessions[0]["stop_requests"] == 1, sessions
        agent = (await http.get(sims.elevenlabs + "/_sim/ledger")).json()
        assert len(agent["conversations"]) == 1
        assert (await heygen_ledger(http, sims))["requests"].get("streaming.new", 0) == 1
