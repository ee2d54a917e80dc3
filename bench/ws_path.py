"""The browser's socket alone: what one audio frame costs the server between the wire and the handler's `receive`,
for the relay's `/ws` as served today (`direct`: hypercorn's trio worker handing the upgrade to
`relay.server.direct_ws`, the handler reading the socket itself; issue 26 round 6), as served in rounds 4-5
(`asgi`: hypercorn's trio worker, `relay.server.asgi_ws` in front of Quart,
frames unmasked in C by `relay.server.wsproto_mask`; `asgi_pymask`: the same with wsproto's own unmasking), as it
was served before issue 26 (`quart`: a quart-trio websocket route, its reader task and channel), and the Trio
floor's browser socket (`floor`: `bench.trio_floor.BrowserSocket`, `websockets`' sans-I/O protocol on a bare
`trio.serve_tcp` stream, no hypercorn). No upstream, no conversation: the handler reads frames and counts them.

`python -m bench.ws_path [--clients 20] [--seconds 10] [--runs 3] [--chunk-ms 100] [--deflate]`: for each run, each
mode in turn (interleaved, so the machine's load is shared), a fresh server process on 127.0.0.1 and `--clients`
asyncio `websockets` clients in this process, each sending one PCM frame every `--chunk-ms` ms in real time. The
server's CPU (utime + stime from /proc) over the steady window, divided by the frames it received in that window:
CPU µs per browser frame, and the ratio of `asgi` and `quart` to `floor` in the same run. The machine's load average
is printed with each run. Loopback only; every run bounded by `--seconds` + 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODES = ("direct", "asgi", "asgi_pymask", "quart", "floor")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------------------------------------------
# The server (a subprocess: `python -m bench.ws_path serve MODE PORT`)


def serve(mode: str, port: int) -> None:
    import trio

    frames = [0]

    async def count_until_asked(receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if isinstance(message, bytes):
                frames[0] += 1
            elif message == "count?":
                await send(str(frames[0]))
            elif message is None:
                continue

    if mode == "floor":
        from bench.trio_floor import BrowserSocket

        async def handle(stream: trio.SocketStream) -> None:
            with contextlib.suppress(EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
                browser = await BrowserSocket.accept(stream)
                await count_until_asked(browser.receive, browser.send)

        async def main() -> None:
            await trio.serve_tcp(handle, port, host="127.0.0.1")

        trio.run(main)
        return

    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve
    from quart import websocket
    from quart_trio import QuartTrio

    from relay.server.asgi_ws import ASGIWebSocket, WebSocketFront, install_departure_notice, serve_websocket
    from relay.server.tcp_close import serialise_tcp_close
    from relay.server.wsproto_mask import use_c_unmasking

    app = QuartTrio(__name__)
    if mode == "direct":
        from relay.server.direct_ws import DirectWebSocket, serve_websocket_directly
        from relay.server.request_guard import GuardPolicy

        async def on_direct_socket(connection: DirectWebSocket) -> None:
            await count_until_asked(connection.receive, connection.send)

        serve_websocket_directly(app, "/ws", on_direct_socket, 2**20, 2**20, GuardPolicy(frozenset({"*"})))
    elif mode.startswith("asgi"):
        install_departure_notice()
        serialise_tcp_close()
        if mode == "asgi":
            use_c_unmasking()

        async def on_socket(connection: ASGIWebSocket) -> None:
            await count_until_asked(connection.receive, connection.send)

        async def raw(scope: Any, receive: Any, send: Any) -> None:
            await serve_websocket(scope, receive, send, 10.0, on_socket)

        app.asgi_app = WebSocketFront(app.asgi_app, "/ws", raw)  # type: ignore[method-assign]
    else:
        @app.websocket("/ws")
        async def ws() -> None:
            connection = websocket._get_current_object()  # type: ignore[attr-defined]
            await count_until_asked(connection.receive, connection.send)

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.loglevel = "WARNING"
    trio.run(hypercorn_serve, app, config)


# ----------------------------------------------------------------------------------------------------------------------
# The clients


async def _client(url: str, pcm: bytes, interval: float, start: float, stop: float, deflate: bool) -> int:
    from websockets.asyncio.client import connect

    async with connect(url, compression="deflate" if deflate else None, max_size=None) as ws:
        sent, tick = 0, start
        while tick < stop:
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            await ws.send(pcm)
            sent += 1
            tick += interval
        await ws.send("count?")
        return int(await ws.recv())


async def _load(url: str, clients: int, seconds: float, chunk_ms: int, deflate: bool, pid: int
                ) -> tuple[float, int, int]:
    """(server CPU s over the steady window, frames the server got in it, frames sent in all)."""
    pcm = os.urandom(32 * chunk_ms) if not deflate else bytes(32 * chunk_ms)
    interval = chunk_ms / 1000
    start = time.monotonic() + 1.0
    stop = start + seconds
    window_start, window_stop = start + 1.0, stop - 0.5
    tasks = [asyncio.create_task(_client(url, pcm, interval, start + i * interval / clients, stop, deflate))
             for i in range(clients)]
    await asyncio.sleep(window_start - time.monotonic())
    cpu_start = _cpu_seconds(pid)
    await asyncio.sleep(window_stop - time.monotonic())
    cpu = _cpu_seconds(pid) - cpu_start
    counts = await asyncio.gather(*tasks)
    in_window = round(clients * (window_stop - window_start) / interval)
    return cpu, in_window, sum(counts)


def run_mode(mode: str, clients: int, seconds: float, chunk_ms: int, deflate: bool) -> dict[str, Any]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.ws_path", "serve", mode, str(port)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"{mode} server did not start")
            time.sleep(0.05)
        cpu, frames, received = asyncio.run(asyncio.wait_for(
            _load(f"ws://127.0.0.1:{port}/ws", clients, seconds, chunk_ms, deflate, server.pid), seconds + 30))
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return {"mode": mode, "cpu_us_per_frame": round(cpu / frames * 1e6, 1), "frames_received": received,
            "load_average": round(os.getloadavg()[0], 1)}


def _ratio(results: dict[str, dict[str, Any]], mode: str) -> str:
    value = results.get(mode, {}).get("cpu_us_per_frame")
    floor = results.get("floor", {}).get("cpu_us_per_frame")
    return f"{value / floor:.2f}" if value and floor else "-"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"]:
        serve(args[1], int(args[2]))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.ws_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate (as browsers do)")
    parser.add_argument("--modes", default=",".join(MODES))
    options = parser.parse_args(args)
    modes = options.modes.split(",")
    print("run | " + " | ".join(f"{m} µs/frame" for m in modes)
          + " | direct/floor | asgi/floor | quart/floor | load avg")
    for run in range(1, options.runs + 1):
        results = {m: run_mode(m, options.clients, options.seconds, options.chunk_ms, options.deflate)
                   for m in modes}
        print(f"{run} | " + " | ".join(str(results[m]["cpu_us_per_frame"]) for m in modes)
              + f" | {_ratio(results, 'direct')} | {_ratio(results, 'asgi')} | {_ratio(results, 'quart')} | "
              + ",".join(str(results[m]["load_average"]) for m in modes), flush=True)


if __name__ == "__main__":
    main()
