"""The benchmark's simulator process: the three simulators (hypercorn, trio) on loopback, with the ElevenLabs
simulator's `on_user_audio` hook timing every audio frame that reaches it, plus a small control app.

`python -m bench.sims` prints one JSON line `{"elevenlabs": url, "heygen": url, "liveavatar": url, "control": url}`
once everything listens, and serves until stdin closes or SIGTERM/SIGINT arrives. Control endpoints:
`GET /forwarding` -> `{"latencies": [seconds, ...], "unstamped": n}` (frame sent by the load generator ->
received by the agent simulator), and `POST /forwarding/clear`.

It must stay cheap per frame: the hook reads 16 bytes and appends one float.
"""

from __future__ import annotations

import signal
import sys
import time
from array import array

import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response
from quart_trio import QuartTrio

from bench.wire import read_stamp
from relay.sim import elevenlabs_sim, heygen_sim, liveavatar_sim


class ForwardingClock:
    """Collects `received - sent` for every stamped user audio chunk the agent simulator receives."""

    def __init__(self) -> None:
        self.latencies = array("d")
        self.unstamped = 0

    def on_user_audio(self, _conversation_id: str, pcm: bytes, received_at: float) -> None:
        sent_at = read_stamp(pcm)
        if sent_at is None:
            self.unstamped += 1
        else:
            self.latencies.append(received_at - sent_at)


def control_app(clock: ForwardingClock) -> QuartTrio:
    app = QuartTrio(__name__)

    @app.get("/forwarding")
    async def forwarding() -> Response:
        body = {"latencies": clock.latencies.tolist(), "unstamped": clock.unstamped}
        return Response(orjson.dumps(body), content_type="application/json")

    @app.post("/forwarding/clear")
    async def clear() -> Response:
        clock.latencies = array("d")
        clock.unstamped = 0
        return Response(b'{"ok":true}', content_type="application/json")

    return app


def _config() -> Config:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    config.websocket_max_message_size = 16 * 2**20
    config.backlog = 4096
    return config


async def _wait_for_end() -> None:
    async def stdin_closed() -> None:
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)

    async with trio.open_nursery() as nursery:
        async def first(fn: object) -> None:
            await fn()  # type: ignore[operator]
            nursery.cancel_scope.cancel()

        async def signalled() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    return

        nursery.start_soon(first, stdin_closed)
        nursery.start_soon(first, signalled)


async def main() -> None:
    clock = ForwardingClock()
    apps = {
        "elevenlabs": elevenlabs_sim.create_app(on_user_audio=clock.on_user_audio),
        "heygen": heygen_sim.create_app(),
        "liveavatar": liveavatar_sim.create_app(),
        "control": control_app(clock),
    }
    async with trio.open_nursery() as nursery:
        urls = {}
        for name, app in apps.items():
            binds = await nursery.start(serve, app, _config())
            urls[name] = binds[0]
        print(orjson.dumps({**urls, "pid_started_at": time.monotonic()}).decode(), flush=True)
        await _wait_for_end()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
