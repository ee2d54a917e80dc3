"""How long a dying avatar leaves the user without it (issue #23 §3): from the moment the avatar's socket drops
mid-reply (the Simli simulator's `drop_ws_after_audio_bytes`, its `socket_closed` time) to (1) the browser receiving
the agent's voice again (the unsaid rest of the turn), (2) the new session started upstream (the simulator's
`started`: it takes speech from then on), (3) the browser being told `avatar_changed` (the page then joins the
new room; the new avatar speaks from the agent's next turn), and (4) the new avatar speaking: the next turn is asked
as soon as `avatar_changed` arrives, and (4) is its first audio at the new session (the simulator's `first_audio`),
so it includes the agent's own reply time (the ElevenLabs simulator's `response_latency_ms`, 300 ms).

`python -m bench.avatar_replacement [--runs 20] [--setup-latency-ms 0]`: the real relay (create_app under hypercorn)
and the simulators in this process, on loopback; the Simli simulator answers a LiveKit URL that is not `.invalid`, so
the relay treats its avatar as real (the voice goes to the avatar, not the browser, until it dies).
`--setup-latency-ms N` makes the Simli simulator answer `compose/token` and open its socket N ms late each (a real
provider's set-up time); with 0 the figures are the relay's and the loopback's. Prints one JSON report. All times
from time.monotonic().
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Any

import httpx2
import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from trio_websocket import open_websocket_url

from relay.config import Settings
from relay.providers.table import serve_simulators
from relay.web import create_app

FACE = "b9e5fba3-071a-4e35-896e-211c4d6eaa7b"  # a preset face the Simli simulator knows


async def _next(ws: Any) -> tuple[float, Any]:
    frame = await ws.get_message()
    return time.monotonic(), (frame if isinstance(frame, bytes) else orjson.loads(frame))


async def one_run(relay_url: str, simli: str, http: httpx2.AsyncClient) -> dict[str, float]:
    await http.post(simli + "/_sim/faults", json={"drop_ws_after_audio_bytes": None})
    async with open_websocket_url(relay_url.replace("http", "ws") + "/ws", message_queue_size=10_000) as ws:
        await ws.send_message(orjson.dumps({"type": "start"}).decode())
        while True:
            _, msg = await _next(ws)
            if isinstance(msg, dict) and msg["type"] == "ready":
                first = msg["avatar"]["session_id"]
                break
        await http.post(simli + "/_sim/faults", json={"drop_ws_after_audio_bytes": 32_000})  # 1 s into a reply
        await ws.send_message(orjson.dumps({"type": "text", "text": "tell me a long story please"}).decode())
        voice_at = changed_at = None
        after_drop: list[float] = []
        while changed_at is None:
            at, msg = await _next(ws)
            if isinstance(msg, bytes):
                after_drop.append(at)
            elif msg["type"] == "avatar_changed":
                changed_at = at
                await http.post(simli + "/_sim/faults", json={"drop_ws_after_audio_bytes": None})
        second = msg["avatar"]["session_id"]
        await ws.send_message(orjson.dumps({"type": "text", "text": "and then"}).decode())
        while True:
            ledger = (await http.get(simli + "/_sim/ledger")).json()
            if ledger["sessions"].get(second, {}).get("first_audio") is not None:
                break
            await trio.sleep(0.01)
        died = ledger["sessions"][first]["socket_closed"]
        voice_at = min((t for t in after_drop if t >= died), default=None)
        started = ledger["sessions"][second]["started"]
        speaking = ledger["sessions"][second]["first_audio"]
        await ws.send_message(orjson.dumps({"type": "stop"}).decode())
    return {"death_to_voice_ms": (voice_at - died) * 1000 if voice_at is not None else float("nan"),
            "death_to_new_session_started_ms": (started - died) * 1000,
            "death_to_avatar_changed_ms": (changed_at - died) * 1000,
            "death_to_new_avatar_speaking_ms": (speaking - died) * 1000}


async def main(runs: int, setup_latency_ms: int = 0) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        sims = await nursery.start(serve_simulators, "127.0.0.1")
        async with httpx2.AsyncClient(timeout=10.0) as http:
            await http.post(sims.simli + "/_sim/faults", json={
                "livekit_url": "wss://livekit.bench.example",
                "latency_ms": {"token": setup_latency_ms, "ws_connect": setup_latency_ms}})
            with tempfile.TemporaryDirectory(prefix="bench-replace-") as state:
                settings = Settings(_env_file=None, elevenlabs_base_url=sims.elevenlabs,  # type: ignore[call-arg]
                                    elevenlabs_agent_id="agent_bench", elevenlabs_api_key="xi-bench",
                                    simli_base_url=sims.simli, simli_api_key="sm-bench", simli_face_id=FACE,
                                    relay_avatar="simli", relay_auth="off", relay_state_dir=state)
                config = Config()
                config.bind = ["127.0.0.1:0"]
                config.accesslog = None
                binds = await nursery.start(serve, create_app(settings), config)
                results = [await one_run(binds[0], sims.simli, http) for _ in range(runs)]
        nursery.cancel_scope.cancel()
    report: dict[str, Any] = {"runs": runs, "simli_setup_latency_ms": {"token": setup_latency_ms,
                                                                       "ws_connect": setup_latency_ms},
                              "agent_response_latency_ms": 300}
    for key in results[0]:
        values = sorted(r[key] for r in results)
        report[key] = {"median": round(statistics.median(values), 1), "max": round(values[-1], 1)}
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--setup-latency-ms", type=int, default=0,
                        help="the Simli simulator's latency for compose/token and for opening its socket, each")
    args = parser.parse_args()
    report = trio.run(main, args.runs, args.setup_latency_ms)
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
