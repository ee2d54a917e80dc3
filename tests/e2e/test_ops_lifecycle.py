"""Transcripts written by a real relay, and readiness on SIGTERM with `avatar-relay serve` as a real process."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import httpx2
import orjson
import trio
from trio_websocket import open_websocket_url

from tests.e2e.harness import running_relay
from tests.e2e.test_cli import clean_env, free_port, running, wait_until_serving


async def test_transcripts_hold_the_turns_ids_timings_and_outcome_but_no_audio(tmp_path: Path) -> None:
    directory = tmp_path / "transcripts"
    async with running_relay(relay_auth="off", relay_transcripts_dir=str(directory)) as relay:
        await relay.faults("elevenlabs", first_message="")
        async with relay.browser() as browser:
            ready = await browser.start()
            await browser.send(type="text", text="what are your opening hours?")
            reply = await browser.expect("agent_response")
            await browser.send(type="stop")
            await browser.expect("ended")
        with trio.fail_after(5):
            while not list(directory.glob("*.jsonl")):
                await trio.sleep(0.02)
    (path,) = directory.glob("*.jsonl")
    assert path.stat().st_mode & 0o777 == 0o640
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    head, *turns, end = lines
    assert head["type"] == "conversation" and head["conversation_id"] == ready["conversation_id"]
    assert head["avatar_session_id"] == ready["avatar"]["session_id"] and head["avatar_provider"] == "heygen"
    assert path.name.endswith(f"_{head['relay_id']}.jsonl")
    assert [(t["type"], t["text"]) for t in turns] == [("user", "what are your opening hours?"),
                                                       ("agent", reply["text"])]
    assert turns[0]["typed"] is True and turns[1]["event_id"] == reply["event_id"]
    assert 0 <= turns[0]["t"] <= turns[1]["t"] <= end["t"]
    assert end["type"] == "end" and end["reason"] == "client_stop" and end["error"] is None
    assert 0 < end["setup_s"] < end["t"]


async def test_sigterm_makes_the_relay_not_ready_before_it_drains_open_conversations(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(RELAY_PORT=str(port), RELAY_PREDRAIN_DELAY="1.0")
    with running([sys.executable, "-m", "relay", "serve"], tmp_path, env) as proc:
        await wait_until_serving(base, proc)
        async with httpx2.AsyncClient() as http:
            assert (await http.get(base + "/readyz")).status_code == 200
            async with open_websocket_url(base.replace("http://", "ws://") + "/ws", message_queue_size=1000) as ws:
                await ws.send_message('{"type":"start"}')
                with trio.fail_after(10):
                    while not isinstance(frame := await ws.get_message(), str) or '"ready"' not in frame:
                        pass
                proc.send_signal(signal.SIGTERM)
                with trio.fail_after(0.9):  # well inside the pre-drain delay
                    while (answer := await http.get(base + "/readyz")).status_code != 503:
                        await trio.sleep(0.02)
                assert answer.json()["checks"]["accepting"] is False
                # The open conversation is still going during the delay, then ends with `shutdown`.
                await ws.send_message('{"type":"text","text":"still there?"}')
                ended = None
                with trio.fail_after(10):
                    while ended is None:
                        frame = await ws.get_message()
                        if isinstance(frame, str) and orjson.loads(frame)["type"] == "ended":
                            ended = orjson.loads(frame)
                assert ended == {"type": "ended", "reason": "shutdown"}
        with trio.fail_after(15):
            while proc.poll() is None:
                await trio.sleep(0.05)
    assert proc.returncode == 0
