"""Simli through the real server: the agent's own audio lip-synced at 16 kHz, interruptions clearing Simli's buffer,
refusals and deaths degrading to voice, every session ended with `DONE`; and demo mode on the Simli simulator
(`RELAY_AVATAR=simli` with no keys). The simulators' ledgers are the proof."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest

from relay.sim.elevenlabs_sim import ALL_CLIENT_EVENTS
from tests.e2e.test_cli import clean_env, running, typed_conversation, wait_until_serving
from tests.support.harness import Relay, running_relay, silence, spoken_sentence
from tests.support.processes import free_port

pytestmark = pytest.mark.timeout(60)


def only_session(ledger: dict[str, Any]) -> dict[str, Any]:
    (session,) = ledger["sessions"].values()
    return session  # type: ignore[no-any-return]


def all_ended_by_the_relay(ledger: dict[str, Any]) -> bool:
    return ledger["active"] == 0 and all(s["end_reason"] == "DONE" for s in ledger["sessions"].values())


async def wait_all_ended(relay: Relay) -> dict[str, Any]:
    return await relay.wait_for_ledger("simli", all_ended_by_the_relay, "every Simli session ended with DONE")


@pytest.mark.parametrize("agent_format", ["pcm_16000", "pcm_24000", "ulaw_8000"])
async def test_simli_lip_syncs_the_whole_reply_at_16khz(agent_format: str) -> None:
    async with running_relay(relay_avatar="simli") as relay:
        await relay.faults("elevenlabs", first_message="", agent_output_audio_format=agent_format)
        async with relay.browser() as browser:
            ready = await browser.start()
            assert ready["avatar"]["provider"] == "simli" and ready["avatar"]["simulated"] is True
            assert ready["avatar"]["livekit_url"] == "wss://livekit.simulated.invalid"
            await browser.send(type="text", text="please say something of medium length")
            await browser.expect("avatar_state", where=lambda m: m["speaking"])
            await browser.expect("avatar_state", where=lambda m: not m["speaking"], timeout=15)
            await browser.send(type="stop")
            await browser.expect("ended")
        expected = float((await relay.ledger("elevenlabs"))["conversations"][0]["agent_audio_seconds"])
        session = only_session(await wait_all_ended(relay))
        assert session["audio_seconds"] == pytest.approx(expected, rel=0.05)
        assert session["dropped_before_start"] == 0
        assert ready["avatar"]["session_id"] in (await relay.ledger("simli"))["sessions"]


async def test_simli_interruption_clears_the_avatars_buffer() -> None:
    async with running_relay(relay_avatar="simli") as relay:
        await relay.faults("elevenlabs", first_message="", max_reply_s=6.0, chunk_duration_ms=100,
                           client_events=list(ALL_CLIENT_EVENTS))
        async with relay.browser() as browser:
            ready = await browser.start()
            rate = ready["input_audio"]["sample_rate"]
            await browser.send(type="text", text="tell me a long story about the sea and the mountains please")
            await browser.expect("avatar_state", where=lambda m: m["speaking"])
            await browser.stream(spoken_sentence(rate) + silence(1.0, rate))
            await browser.expect("interruption")
            await relay.wait_for_ledger("simli", lambda ledger: only_session(ledger)["skips"] >= 1,
                                        "the SKIP of the interruption")
            await browser.send(type="stop")
            await browser.expect("ended")
        session = only_session(await wait_all_ended(relay))
        assert session["skips"] >= 2  # the interruption's, then the end's


async def test_a_simli_socket_dropped_mid_reply_degrades_to_voice_when_no_replacement_starts() -> None:
    """The dropped session is still billed (until maxIdleTime), so the account's limit of one refuses the
    replacement (#23 §3): voice only, with Simli's reason."""
    async with running_relay(relay_avatar="simli") as relay:
        await relay.faults("simli", drop_ws_after_audio_bytes=32000, concurrency_limit=1)
        await relay.faults("elevenlabs", first_message="")
        async with relay.browser() as browser:
            await browser.start()
            await browser.send(type="text", text="please say something of medium length")
            notice = await browser.expect("avatar_unavailable", timeout=15)
            assert notice["reason"] == "concurrent_limit"
            await browser.send(type="text", text="are you still there")
            await browser.expect("agent_response", where=lambda m: "still there" in m["text"])
            await browser.wait_for_audio()
            await browser.send(type="stop")
            await browser.expect("ended")
        session = only_session(await relay.ledger("simli"))
        assert session["socket_closed"] is not None and session["dones"] == 0  # bounded by maxIdleTime only


@pytest.mark.parametrize(("fault", "reason"), [({"no_credits": True}, "no_credits"),
                                               ({"invalid_keys": ["sm-test"]}, "unauthorized")])
async def test_a_refused_simli_session_degrades_to_voice(fault: dict[str, Any], reason: str) -> None:
    async with running_relay(relay_avatar="simli") as relay:
        await relay.faults("simli", **fault)
        async with relay.browser() as browser:
            await browser.send(type="start")
            notice = await browser.expect("avatar_unavailable")
            assert notice["reason"] == reason
            assert (await browser.expect("ready"))["avatar"] is None
            await browser.send(type="stop")
            await browser.expect("ended")
        assert (await relay.ledger("simli"))["sessions"] == {}


@pytest.mark.timeout(90)
async def test_demo_mode_runs_on_the_simli_simulator(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(RELAY_AVATAR="simli")
    with running([sys.executable, "-m", "relay", "serve", "--port", str(port)], tmp_path, env) as proc:
        base = f"http://127.0.0.1:{port}"
        await wait_until_serving(base, proc)
        async with httpx2.AsyncClient() as http:
            sims = (await http.get(base + "/_demo/simulators")).json()
        messages = await typed_conversation(base)
        ready = next(m for m in messages if m["type"] == "ready")
        assert ready["avatar"]["provider"] == "simli" and ready["avatar"]["simulated"] is True  # type: ignore[index]
        assert {k: v for k, v in messages[-1].items() if k != "seq"} == {"type": "ended", "reason": "client_stop"}
        async with httpx2.AsyncClient() as http:
            ledger = (await http.get(sims["simli"] + "/_sim/ledger")).json()
        assert only_session(ledger)["end_reason"] == "DONE"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0
