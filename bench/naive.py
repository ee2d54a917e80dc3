"""The naive Trio relay: the issue's "80-line quart-trio relay", on the relay's own stack, as a second yardstick.

quart-trio served by hypercorn's trio worker, trio-websocket to the agent, httpx2 for HeyGen: `start` -> signed
URL -> agent socket -> metadata -> `streaming.new` -> `streaming.start` -> `ready` (sequential), then two tasks
forwarding frames (browser PCM -> `user_audio_chunk`; agent audio -> browser binary frames; `agent_response` ->
`streaming.task`), pings answered, the session stopped on the way out. No admission, timeouts, validation,
interruption or degradation. It tells how much of the relay's CPU is the stack itself (this file) and how much is
the relay's own structure (the difference). HeyGen text mode only.

`python -m bench.naive --port P --elevenlabs URL --heygen URL` (hypercorn on 127.0.0.1:P).
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import httpx2
import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import websocket
from quart_trio import QuartTrio
from trio_websocket import open_websocket_url

KEY = {"xi-api-key": "bench-key", "x-api-key": "bench-key"}


@dataclass(frozen=True)
class Pipe:
    """A message socket as the naive conversation sees it: `receive()` the next message, `send(message)`."""

    receive: Callable[[], Awaitable[str | bytes]]
    send: Callable[[str | bytes], Awaitable[None]]


OpenAgent = Callable[[str], AbstractAsyncContextManager[Pipe]]


async def converse(browser: Pipe, open_agent: OpenAgent, http: httpx2.AsyncClient, elevenlabs: str,
                   heygen: str) -> None:
    """One naive conversation: `start` -> signed URL -> agent socket -> metadata -> `streaming.new` ->
    `streaming.start` -> `ready`, then one task per direction until the browser's `stop`; the session is stopped on
    the way out. Shared by this file (quart-trio, trio-websocket) and bench/trio_floor.py (bare Trio, `websockets`
    framing), so the two yardsticks differ only in their sockets."""
    if orjson.loads(await browser.receive()).get("type") != "start":
        return
    signed = (await http.get(f"{elevenlabs}/v1/convai/conversation/get-signed-url",
                             params={"agent_id": "bench-agent"})).json()["signed_url"]
    async with open_agent(signed) as agent:
        await agent.send('{"type":"conversation_initiation_client_data"}')
        metadata = orjson.loads(await agent.receive())["conversation_initiation_metadata_event"]
        new = (await http.post(f"{heygen}/v1/streaming.new",
                               json={"avatar_id": "Wayne_20240711", "version": "v2"})).json()
        session = {"session_id": new["data"]["session_id"]}
        try:
            await http.post(f"{heygen}/v1/streaming.start", json=session)
            await browser.send(orjson.dumps({"type": "ready", "conversation_id": metadata["conversation_id"],
                                             "avatar": {**session, "simulated": True}}).decode())
            async with trio.open_nursery() as nursery:

                async def up() -> None:
                    while True:
                        frame = await browser.receive()
                        if isinstance(frame, bytes):
                            await agent.send('{"user_audio_chunk":"' + base64.b64encode(frame).decode() + '"}')
                        elif orjson.loads(frame).get("type") == "stop":
                            await browser.send('{"type":"ended","reason":"client_stop"}')
                            nursery.cancel_scope.cancel()
                            return

                async def speak(text: str) -> None:
                    await http.post(f"{heygen}/v1/streaming.task",
                                    json={**session, "text": text, "task_type": "repeat"})

                async def down() -> None:
                    while True:
                        event = orjson.loads(await agent.receive())
                        kind = event.get("type")
                        if kind == "audio":
                            await browser.send(base64.b64decode(event["audio_event"]["audio_base_64"]))
                        elif kind == "ping":
                            await agent.send(orjson.dumps(
                                {"type": "pong", "event_id": event["ping_event"]["event_id"]}).decode())
                        elif kind == "agent_response":
                            text = event["agent_response_event"]["agent_response"]
                            await browser.send(orjson.dumps({"type": "agent_response", "text": text}).decode())
                            nursery.start_soon(speak, text)

                nursery.start_soon(up)
                nursery.start_soon(down)
        finally:
            with trio.CancelScope(shield=True):
                await http.post(f"{heygen}/v1/streaming.stop", json=session)


@asynccontextmanager
async def open_trio_websocket(url: str) -> AsyncIterator[Pipe]:
    async with open_websocket_url(url, message_queue_size=64) as connection:
        yield Pipe(connection.get_message, connection.send_message)


def make_app(elevenlabs: str, heygen: str) -> QuartTrio:
    app = QuartTrio(__name__)
    http = httpx2.AsyncClient(timeout=10.0, headers=KEY,
                              limits=httpx2.Limits(max_connections=2000, max_keepalive_connections=500))

    @app.websocket("/ws")
    async def ws() -> None:
        await converse(Pipe(websocket.receive, websocket.send), open_trio_websocket, http, elevenlabs, heygen)

    return app


def yardstick_args() -> argparse.Namespace:
    """The command line of both yardsticks (this file and bench/trio_floor.py): --port, --elevenlabs, --heygen."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--elevenlabs", required=True)
    parser.add_argument("--heygen", required=True)
    return parser.parse_args()


def main() -> None:
    args = yardstick_args()
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.backlog = 4096
    trio.run(serve, make_app(args.elevenlabs, args.heygen), config)


if __name__ == "__main__":
    main()
