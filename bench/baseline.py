"""The baseline: the thinnest correct relay one could write, to compare the real one against.

asyncio with the `websockets` library (C-accelerated masking), httpx2 for the REST calls, no session management
beyond what correctness needs: set-up is sequential (signed URL, agent socket, metadata, then the avatar), frames
are forwarded as they come (browser PCM -> `user_audio_chunk`; agent audio -> browser binary frames, and for
LiveAvatar resampled to 24 kHz -> `agent.speak`), pings are answered, each `agent_response` becomes a HeyGen
`streaming.task`, and the avatar session is stopped when the browser leaves. No admission control, no
timeouts, no degradation, no interruption handling, no input validation: it is a yardstick, never a product.

`python -m bench.baseline --port P --avatar heygen|liveavatar --elevenlabs URL --heygen URL --liveavatar URL`
prints `listening` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
from typing import Any

import httpx2
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from bench.wire import LiteSpeech

AGENT_ID = "bench-agent"
KEY = "bench-key"
MAX_SIZE = 16 * 2**20


class Baseline:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.http = httpx2.AsyncClient(timeout=10.0, limits=httpx2.Limits(max_connections=2000,
                                                                          max_keepalive_connections=500))

    async def handle(self, browser: ServerConnection) -> None:
        start = orjson.loads(await browser.recv())
        if start.get("type") != "start":
            return
        args = self.args
        signed = (await self.http.get(f"{args.elevenlabs}/v1/convai/conversation/get-signed-url",
                                      params={"agent_id": AGENT_ID}, headers={"xi-api-key": KEY})).json()
        async with connect(signed["signed_url"], max_size=MAX_SIZE, compression=None, ping_interval=None) as agent:
            await agent.send('{"type":"conversation_initiation_client_data"}')
            metadata = orjson.loads(await agent.recv())["conversation_initiation_metadata_event"]
            if args.avatar == "heygen":
                await self._heygen(browser, agent, metadata)
            else:
                await self._liveavatar(browser, agent, metadata)

    async def _heygen(self, browser: ServerConnection, agent: ClientConnection, metadata: dict[str, Any]) -> None:
        base, headers = self.args.heygen, {"x-api-key": KEY}
        new = (await self.http.post(f"{base}/v1/streaming.new", headers=headers,
                                    json={"avatar_id": "Wayne_20240711", "version": "v2"})).json()["data"]
        session_id = new["session_id"]
        try:
            await self.http.post(f"{base}/v1/streaming.start", headers=headers, json={"session_id": session_id})
            await browser.send(_ready(metadata, session_id))

            async def speak(text: str) -> None:
                await self.http.post(f"{base}/v1/streaming.task", headers=headers, json={
                    "session_id": session_id, "text": text, "task_type": "repeat", "task_mode": "async"})

            await self._pump(browser, agent, on_text=speak, on_audio=None)
        finally:
            await self.http.post(f"{base}/v1/streaming.stop", headers=headers, json={"session_id": session_id})

    async def _liveavatar(self, browser: ServerConnection, agent: ClientConnection,
                          metadata: dict[str, Any]) -> None:
        base = self.args.liveavatar
        token = (await self.http.post(f"{base}/v1/sessions/token", headers={"X-API-KEY": KEY}, json={
            "mode": "LITE", "avatar_id": "00000000-0000-4000-8000-0000000000e2", "is_sandbox": False})).json()["data"]
        auth = {"Authorization": f"Bearer {token['session_token']}"}
        try:
            started = (await self.http.post(f"{base}/v1/sessions/start", headers=auth,
                                            json={"session_id": token["session_id"]})).json()["data"]
            async with connect(started["ws_url"], max_size=MAX_SIZE, compression=None, ping_interval=None) as lite:
                async for frame in lite:  # commands before "connected" are dropped by the server
                    if '"connected"' in frame:
                        break
                drain = asyncio.create_task(_drain(lite))
                await browser.send(_ready(metadata, token["session_id"]))
                speech = LiteSpeech()

                async def speak_audio(pcm: bytes, event_id: int) -> None:
                    if (message := speech.message(pcm, event_id)) is not None:
                        await lite.send(message)

                try:
                    await self._pump(browser, agent, on_text=None, on_audio=speak_audio)
                finally:
                    drain.cancel()
        finally:
            await self.http.post(f"{base}/v1/sessions/stop", headers=auth,
                                 json={"session_id": token["session_id"], "reason": "USER_DISCONNECTED"})

    async def _pump(self, browser: ServerConnection, agent: ClientConnection, *, on_text: Any,
                    on_audio: Any) -> None:
        async def up() -> None:
            async for frame in browser:
                if isinstance(frame, bytes):
                    await agent.send('{"user_audio_chunk":"' + base64.b64encode(frame).decode() + '"}')
                elif orjson.loads(frame).get("type") == "stop":
                    await browser.send('{"type":"ended","reason":"client_stop"}')
                    return

        async def down() -> None:
            tasks: set[asyncio.Task[None]] = set()
            async for frame in agent:
                event = orjson.loads(frame)
                kind = event.get("type")
                if kind == "audio":
                    audio_event = event["audio_event"]
                    pcm = base64.b64decode(audio_event["audio_base_64"])
                    await browser.send(pcm)
                    if on_audio is not None:
                        await on_audio(pcm, audio_event["event_id"])
                elif kind == "ping":
                    await agent.send(orjson.dumps({"type": "pong",
                                                   "event_id": event["ping_event"]["event_id"]}).decode())
                elif kind == "agent_response":
                    text = event["agent_response_event"]["agent_response"]
                    await browser.send(orjson.dumps({"type": "agent_response", "text": text}).decode())
                    if on_text is not None:
                        task = asyncio.create_task(on_text(text))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                elif kind == "user_transcript":
                    text = event["user_transcription_event"]["user_transcript"]
                    await browser.send(orjson.dumps({"type": "user_transcript", "text": text}).decode())

        up_task, down_task = asyncio.create_task(up()), asyncio.create_task(down())
        try:
            await asyncio.wait({up_task, down_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            up_task.cancel()
            down_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(up_task, down_task)


def _ready(metadata: dict[str, Any], session_id: str) -> str:
    return orjson.dumps({"type": "ready", "conversation_id": metadata["conversation_id"],
                         "avatar": {"session_id": session_id, "simulated": True}}).decode()


async def _drain(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        async for _ in ws:
            pass


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--avatar", choices=("heygen", "liveavatar"), default="heygen")
    parser.add_argument("--elevenlabs", required=True)
    parser.add_argument("--heygen", required=True)
    parser.add_argument("--liveavatar", required=True)
    baseline = Baseline(parser.parse_args())
    async with serve(baseline.handle, "127.0.0.1", baseline.args.port, compression=None, max_size=MAX_SIZE,
                     ping_interval=None, backlog=4096) as server:
        print("listening", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
