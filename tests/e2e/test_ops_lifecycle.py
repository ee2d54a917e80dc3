"""Transcripts written by a real relay, and readiness on SIGTERM with `avatar-relay serve` as a real process."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from tests.e2e.test_cli import clean_env, free_port, running, wait_until_serving
from tests.support.harness import running_relay


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


PREDRAIN_DELAY = 8.0  # seconds not ready before the drain: far more than a typed reply takes


async def text_messages_until_ended(ws: WebSocketConnection) -> list[dict[str, Any]]:
    """Every text message the relay sends until (and with) `ended`; audio frames are skipped."""
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["type"] != "ended":
        frame = await ws.get_message()
        if isinstance(frame, str):
            seen.append(orjson.loads(frame))
    return seen


@pytest.mark.timeout(90)
async def test_sigterm_makes_the_relay_not_ready_before_it_drains_open_conversations(tmp_path: Path) -> None:
    """SIGTERM: /readyz answers 503 at once, the open conversation still goes on during RELAY_PREDRAIN_DELAY (a
    typed message gets its reply before anything ends it), then the drain ends it with `error: shutdown` and
    `ended: shutdown`, and the process exits 0."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(RELAY_PORT=str(port), RELAY_PREDRAIN_DELAY=str(PREDRAIN_DELAY),
                    RELAY_STATE_DIR=str(tmp_path / "state"))
    with running([sys.executable, "-m", "relay", "serve"], tmp_path, env) as proc:
        await wait_until_serving(base, proc)
        async with httpx2.AsyncClient() as http:
            assert (await http.get(base + "/readyz")).status_code == 200
            async with open_websocket_url(base.replace("http://", "ws://") + "/ws", message_queue_size=1000) as ws:
                await ws.send_message('{"type":"start"}')
                with trio.fail_after(20):
                    while not isinstance(frame := await ws.get_message(), str) or '"ready"' not in frame:
                        pass
                proc.send_signal(signal.SIGTERM)
                with trio.fail_after(PREDRAIN_DELAY):  # a hang guard; the reply below proves the ordering
                    while (answer := await http.get(base + "/readyz")).status_code != 503:
                        await trio.sleep(0.02)
                assert answer.json()["checks"]["accepting"] is False
                await ws.send_message('{"type":"text","text":"still there?"}')
                with trio.fail_after(PREDRAIN_DELAY + 20):  # hang guard: the delay, then the drain
                    seen = await text_messages_until_ended(ws)
        kinds = [m["type"] for m in seen]
        replied = next((i for i, m in enumerate(seen) if m["type"] == "agent_response"
                        and "still there?" in m["text"]), None)
        assert replied is not None, f"no reply during the pre-drain delay: {kinds}"
        assert not {"error", "ended"} & set(kinds[:replied]), f"the conversation ended before the reply: {kinds}"
        endings = [(m["type"], m.get("code") or m.get("reason")) for m in seen if m["type"] in ("error", "ended")]
        assert endings == [("error", "shutdown"), ("ended", "shutdown")], f"the conversation ended with {endings}"
        with trio.fail_after(30):
            while proc.poll() is None:
                await trio.sleep(0.05)
    assert proc.returncode == 0


async def get_keeping_alive(stream: trio.SocketStream, path: str) -> bytes:
    """One HTTP/1.1 request on a connection the client keeps open; returns the whole response."""
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(
            b"content-length:"))
        while len(body) < length:
            body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


async def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout() -> None:
    async with running_relay(keep_alive_timeout=1.0) as relay:
        host, port = relay.url.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        assert (await get_keeping_alive(stream, "/healthz")).startswith(b"HTTP/1.1 200")
        assert (await get_keeping_alive(stream, "/readyz")).startswith(b"HTTP/1.1 200")  # still usable meanwhile
        with trio.fail_after(4):
            assert await stream.receive_some(1024) == b""  # closed by the server once idle for 1 s
        await stream.aclose()


@pytest.mark.timeout(90)
async def test_sigterm_is_not_held_up_by_an_idle_keep_alive_connection(tmp_path: Path) -> None:
    """hypercorn's grace period is RELAY_STOP_TIMEOUT + 2 s; here 62 s. An idle kept-alive connection that held the
    exit up would hold it that long: the process must be gone well within the 30 s bound instead."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(RELAY_PORT=str(port), RELAY_STOP_TIMEOUT="60", RELAY_STATE_DIR=str(tmp_path / "state"))
    with running([sys.executable, "-m", "relay", "serve"], tmp_path, env) as proc:
        await wait_until_serving(base, proc)
        stream = await trio.open_tcp_stream("127.0.0.1", port)  # a proxy's or a scraper's kept-alive connection
        assert (await get_keeping_alive(stream, "/healthz")).startswith(b"HTTP/1.1 200")
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(30):
            while proc.poll() is None:
                await trio.sleep(0.02)
        await stream.aclose()
        assert proc.poll() is not None, "SIGTERM was held up by an idle keep-alive connection (grace period 62 s)"
    assert proc.returncode == 0
