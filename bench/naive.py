"""The naive Trio relay: the issue's "80-line quart-trio relay", on the relay's own stack, as a second yardstick.

quart-trio served by hypercorn's trio worker, trio-websocket to the agent (and to LiveAvatar's LITE socket), httpx2
for the avatar's REST calls: `start` -> signed URL -> agent socket -> metadata -> the avatar's set-up (HeyGen
`streaming.new` -> `streaming.start`; LiveAvatar `sessions/token` -> `sessions/start` -> LITE socket) -> `ready`
(sequential), then two tasks forwarding frames (browser PCM -> `user_audio_chunk`; agent audio -> browser binary
frames, and for LiveAvatar resampled to 24 kHz -> `agent.speak`; HeyGen: `agent_response` -> `streaming.task`),
pings answered, the session stopped on the way out — the same work as bench/baseline.py. No admission, timeouts,
validation, interruption or degradation. It tells how much of the relay's CPU is the stack itself (this file) and
how much is the relay's own structure (the difference).

`python -m bench.naive --port P --avatar heygen|liveavatar --elevenlabs URL --heygen URL --liveavatar URL`
(hypercorn on 127.0.0.1:P).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import websocket
from quart_trio import QuartTrio
from trio_websocket import open_websocket_url

from bench.wire import LiteSpeech

KEY = {"xi-api-key": "bench-key", "x-api-key": "bench-key"}  # x-api-key: HeyGen's and LiveAvatar's `token`
LIVEAVATAR_AVATAR = "00000000-0000-4000-8000-0000000000e2"


@dataclass(frozen=True)
class Pipe:
    """A message socket as the naive conversation sees it: `receive()` the next message, `send(message)`."""

    receive: Callable[[], Awaitable[str | bytes]]
    send: Callable[[str | bytes], Awaitable[None]]


OpenAgent = Callable[[str], AbstractAsyncContextManager[Pipe]]


async def converse(browser: Pipe, open_agent: OpenAgent, http: httpx2.AsyncClient, elevenlabs: str,
                   heygen: str, *, avatar: str = "heygen", liveavatar: str = "") -> None:
    """One naive conversation: `start` -> signed URL -> agent socket -> metadata -> the avatar's set-up -> `ready`,
    then one task per direction until the browser's `stop`; the avatar session is stopped on the way out. Shared
    by this file (quart-trio, trio-websocket) and bench/trio_floor.py (bare Trio, `websockets` framing), so the two
    yardsticks differ only in their sockets (`open_agent` opens the LiveAvatar LITE socket too).

    `avatar` "heygen": `streaming.new` -> `streaming.start`, each `agent_response` a `streaming.task`. "liveavatar"
    (base URL `liveavatar`): as bench/baseline.py does it — `sessions/token` -> `sessions/start` -> the LITE socket
    until its `connected`, agent audio resampled to 24 kHz (soxr, one stream per turn) and sent as base64
    `agent.speak` JSON, what the LITE socket sends read and dropped, `sessions/stop` on the way out."""
    if orjson.loads(await browser.receive()).get("type") != "start":
        return
    signed = (await http.get(f"{elevenlabs}/v1/convai/conversation/get-signed-url",
                             params={"agent_id": "bench-agent"})).json()["signed_url"]
    async with open_agent(signed) as agent:
        await agent.send('{"type":"conversation_initiation_client_data"}')
        metadata = orjson.loads(await agent.receive())["conversation_initiation_metadata_event"]
        if avatar == "heygen":
            await _heygen(browser, agent, http, heygen, metadata)
        else:
            await _liveavatar(browser, agent, open_agent, http, liveavatar, metadata)


async def _heygen(browser: Pipe, agent: Pipe, http: httpx2.AsyncClient, heygen: str,
                  metadata: dict[str, Any]) -> None:
    new = (await http.post(f"{heygen}/v1/streaming.new",
                           json={"avatar_id": "Wayne_20240711", "version": "v2"})).json()
    session = {"session_id": new["data"]["session_id"]}
    try:
        await http.post(f"{heygen}/v1/streaming.start", json=session)
        await browser.send(_ready(metadata, session["session_id"]))

        async def speak(text: str) -> None:
            await http.post(f"{heygen}/v1/streaming.task", json={**session, "text": text, "task_type": "repeat"})

        await _pump(browser, agent, on_text=speak)
    finally:
        with trio.CancelScope(shield=True):
            await http.post(f"{heygen}/v1/streaming.stop", json=session)


async def _liveavatar(browser: Pipe, agent: Pipe, open_socket: OpenAgent, http: httpx2.AsyncClient, base: str,
                      metadata: dict[str, Any]) -> None:
    token = (await http.post(f"{base}/v1/sessions/token", json={
        "mode": "LITE", "avatar_id": LIVEAVATAR_AVATAR, "is_sandbox": False})).json()["data"]
    auth = {"Authorization": f"Bearer {token['session_token']}"}
    try:
        started = (await http.post(f"{base}/v1/sessions/start", headers=auth,
                                   json={"session_id": token["session_id"]})).json()["data"]
        async with open_socket(started["ws_url"]) as lite:
            while True:  # commands before "connected" are dropped by the server
                frame = await lite.receive()
                if isinstance(frame, str) and '"connected"' in frame:
                    break
            await browser.send(_ready(metadata, token["session_id"]))
            speech = LiteSpeech()

            async def speak_audio(pcm: bytes, event_id: int) -> None:
                if (message := speech.message(pcm, event_id)) is not None:
                    await lite.send(message)

            async def drain() -> None:  # the LITE socket's own messages; its pings answered (relay.net.wsclient)
                with contextlib.suppress(Exception):
                    while True:
                        await lite.receive()

            await _pump(browser, agent, on_audio=speak_audio, background=drain)
    finally:
        with trio.CancelScope(shield=True):
            await http.post(f"{base}/v1/sessions/stop", headers=auth,
                            json={"session_id": token["session_id"], "reason": "USER_DISCONNECTED"})


async def _pump(browser: Pipe, agent: Pipe, *, on_text: Callable[[str], Awaitable[None]] | None = None,
                on_audio: Callable[[bytes, int], Awaitable[None]] | None = None,
                background: Callable[[], Awaitable[None]] | None = None) -> None:
    """One task per direction (and `background`, if any) until the browser's `stop`. Agent audio goes to the
    browser, then to `on_audio(pcm, event_id)` (awaited); each `agent_response` to the browser, then to
    `on_text(text)` in a task of its own."""
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

        async def down() -> None:
            while True:
                event = orjson.loads(await agent.receive())
                kind = event.get("type")
                if kind == "audio":
                    if on_audio is None:
                        await browser.send(base64.b64decode(event["audio_event"]["audio_base_64"]))
                    else:
                        audio_event = event["audio_event"]
                        pcm = base64.b64decode(audio_event["audio_base_64"])
                        await browser.send(pcm)
                        await on_audio(pcm, audio_event["event_id"])
                elif kind == "ping":
                    await agent.send(orjson.dumps(
                        {"type": "pong", "event_id": event["ping_event"]["event_id"]}).decode())
                elif kind == "agent_response":
                    text = event["agent_response_event"]["agent_response"]
                    await browser.send(orjson.dumps({"type": "agent_response", "text": text}).decode())
                    if on_text is not None:
                        nursery.start_soon(on_text, text)

        nursery.start_soon(up)
        nursery.start_soon(down)
        if background is not None:
            nursery.start_soon(background)


def _ready(metadata: dict[str, Any], session_id: str) -> str:
    return orjson.dumps({"type": "ready", "conversation_id": metadata["conversation_id"],
                         "avatar": {"session_id": session_id, "simulated": True}}).decode()


@asynccontextmanager
async def open_trio_websocket(url: str) -> AsyncIterator[Pipe]:
    async with open_websocket_url(url, message_queue_size=64) as connection:
        yield Pipe(connection.get_message, connection.send_message)


def make_app(elevenlabs: str, heygen: str, avatar: str = "heygen", liveavatar: str = "") -> QuartTrio:
    app = QuartTrio(__name__)
    http = httpx2.AsyncClient(timeout=10.0, headers=KEY,
                              limits=httpx2.Limits(max_connections=2000, max_keepalive_connections=500))

    @app.websocket("/ws")
    async def ws() -> None:
        await converse(Pipe(websocket.receive, websocket.send), open_trio_websocket, http, elevenlabs, heygen,
                       avatar=avatar, liveavatar=liveavatar)

    return app


def yardstick_args() -> argparse.Namespace:
    """The command line of both yardsticks (this file and bench/trio_floor.py): --port, --avatar, --elevenlabs,
    --heygen, --liveavatar (needed with `--avatar liveavatar`)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--avatar", choices=("heygen", "liveavatar"), default="heygen")
    parser.add_argument("--elevenlabs", required=True)
    parser.add_argument("--heygen", required=True)
    parser.add_argument("--liveavatar", default="")
    args = parser.parse_args()
    if args.avatar == "liveavatar" and not args.liveavatar:
        parser.error("--avatar liveavatar needs --liveavatar URL")
    return args


def main() -> None:
    args = yardstick_args()
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.backlog = 4096
    trio.run(serve, make_app(args.elevenlabs, args.heygen, args.avatar, args.liveavatar), config)


if __name__ == "__main__":
    main()
