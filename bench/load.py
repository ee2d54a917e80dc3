"""The load generator: N synthetic browsers against a relay, in their own process (asyncio + `websockets`, the
cheapest client this machine has, so the relay keeps most of the CPU).

Each client connects at its slot of the ramp, sends `start`, waits for `ready` (set-up time), then streams real-time
PCM16 16 kHz in `chunk_ms` frames on an absolute schedule (late frames are sent at once, never skipped), speaking
`speech_s` then staying silent `silence_s` so the simulated agent answers each turn; every frame carries its send
time (`bench.wire.stamp`); like the page, it acks the numbered messages it reads 5 s after news (`Acks`). At
the end it sends `stop` and waits for `ended`. It also samples the relay process's
CPU time and resident memory (from /proc) at the start and the end of the steady window: from every client ready,
a whole number of the synthetic user's turns (`speech_s + silence_s`; the time left when a run is shorter than one).

`python -m bench.load --url ws://... --clients N --duration S --chunk-ms 100 --relay-pid PID` prints one JSON
object with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import connect

from bench.wire import speech_cycle, stamp, summary

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# "deflate" with --deflate: offer permessage-deflate as browsers do (Chromium, Firefox and Safari all offer it, and
# the server decides); None: plain frames.
COMPRESSION: str | None = None
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants (a relay run with `--workers` is a supervisor and its workers)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except OSError:
            continue  # exited meanwhile
    return pids


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (all its threads) and its live descendants, plus what its waited-for dead
    children used (a restarted worker's time is not lost), from /proc."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = _stat_fields(member)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        if member == pid:
            total += int(fields[13]) + int(fields[14])
    return total / CLOCK_TICKS


def process_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its live descendants."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_SIZE
        except OSError:
            continue
    return total


@dataclass
class ClientResult:
    setup: float | None = None
    conversation_id: str | None = None
    session_id: str | None = None
    frames_sent: int = 0
    late_frames: int = 0
    audio_bytes_received: int = 0
    messages: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    ended: str | None = None


ACK_AFTER_S = 5.0  # as the page (relay/static/app.js ACK_AFTER_MS)


class Acks:
    """The page's `ack`: ACK_AFTER_S after a numbered message, the newest `seq` the client has then (docs/protocol.md
    "Resuming"), so the relay forgets what the client has as it does for a real page."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.seq, self.acked = ws, 0, 0
        self.timer: asyncio.TimerHandle | None = None
        self.sending: set[asyncio.Task[None]] = set()

    def note(self, seq: int) -> None:
        self.seq = max(self.seq, seq)
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(ACK_AFTER_S, self._due)

    def _due(self) -> None:
        self.timer = None
        if self.seq > self.acked:
            self.acked = self.seq
            task = asyncio.create_task(self._send(self.seq))
            self.sending.add(task)
            task.add_done_callback(self.sending.discard)

    async def _send(self, seq: int) -> None:
        with contextlib.suppress(Exception):  # the connection closing meanwhile: nothing left to ack
            await self.ws.send(f'{{"type":"ack","seq":{seq}}}')

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


async def run_client(url: str, start_at: float, stop_at: float, frames: list[bytes], chunk_s: float,
                     phase: float, result: ClientResult, settled: Callable[[], None]) -> None:
    """One synthetic browser; `settled()` is called once it is ready or has failed before being ready."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    began = time.monotonic()
    try:
        async with connect(url, compression=COMPRESSION, max_size=16 * 2**20, ping_interval=None, open_timeout=30,
                           close_timeout=5) as ws:
            await ws.send('{"type":"start"}')
            while True:
                message = await asyncio.wait_for(ws.recv(), 30)
                if isinstance(message, str):
                    event = orjson.loads(message)
                    if event["type"] == "ready":
                        break
                    if event["type"] in ("error", "ended"):
                        result.errors.append(f"before ready: {message[:200]}")
                        settled()
                        return
            result.setup = time.monotonic() - began
            result.conversation_id = event.get("conversation_id")
            result.session_id = (event.get("avatar") or {}).get("session_id")
            settled()

            acks = Acks(ws)

            async def read() -> None:
                async for frame in ws:
                    if isinstance(frame, bytes):
                        result.audio_bytes_received += len(frame)
                        continue
                    event = orjson.loads(frame)
                    kind = event.get("type", "?")
                    result.messages[kind] = result.messages.get(kind, 0) + 1
                    if "seq" in event:
                        acks.note(event["seq"])
                    if kind == "error":
                        result.errors.append(frame[:200])
                    elif kind == "ended":
                        result.ended = frame
                        acks.close()
                        return

            reader = asyncio.create_task(read())
            next_at = loop.time() + phase
            index = 0
            while next_at < stop_at and not reader.done():
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -chunk_s:
                    result.late_frames += 1
                frame = bytearray(frames[index % len(frames)])
                stamp(frame, time.monotonic())
                await ws.send(bytes(frame))
                result.frames_sent += 1
                index += 1
                next_at += chunk_s
            if not reader.done():
                await ws.send('{"type":"stop"}')
            try:
                await asyncio.wait_for(reader, 10)
            except TimeoutError:
                result.errors.append("no 'ended' within 10 s of 'stop'")
            if result.ended is None:
                result.errors.append("closed without 'ended'")
            elif '"client_stop"' not in result.ended:
                result.errors.append(f"ended early: {result.ended[:200]}")
    except Exception as exc:  # any failure of one client is a counted error, not a crash of the run
        result.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        if result.setup is None:
            settled()


async def callgrind_control(pid: int, command: str) -> float:
    """Run `callgrind_control COMMAND PID` (the process runs under valgrind's callgrind; `--callgrind`) and wait for
    the process to have carried it out; the seconds it took."""
    began = time.monotonic()
    process = await asyncio.create_subprocess_exec("callgrind_control", command, str(pid),
                                                   stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.DEVNULL)
    if await process.wait() != 0:
        raise RuntimeError(f"callgrind_control {command} {pid} failed")
    return time.monotonic() - began


def steady_window(available: float, period: float) -> tuple[float, int]:
    """The CPU window's length within `available` seconds, and how many turns it holds: a whole number of `period`s
    (every client repeats its load once per turn of its synthetic user: speech, then the agent's reply as a burst),
    so that it holds exactly that many turns of every client whatever their phase — a window of any other length
    holds a part of one more reply burst, more or less of it by when the set-ups ended. Shorter than one turn: all
    of `available` (at least 0.5 s), 0 turns."""
    turns = math.floor(available / period) if period > 0 else 0
    return (turns * period, turns) if turns else (max(0.5, available), 0)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    chunk_s = args.chunk_ms / 1000.0
    frames = speech_cycle(args.chunk_ms, args.speech_s, args.silence_s)
    results = [ClientResult() for _ in range(args.clients)]
    ramp = args.ramp if args.ramp is not None else min(5.0, max(0.5, args.clients / 200.0))
    t0 = loop.time() + 0.1
    stop_at = t0 + ramp + args.duration
    all_ready = asyncio.Event()
    settled_count = [0]

    def settled() -> None:
        settled_count[0] += 1
        if settled_count[0] == args.clients:
            all_ready.set()

    rss_idle = process_rss_bytes(args.relay_pid)
    cpu_start_total = process_cpu_seconds(args.relay_pid)
    tasks = [
        asyncio.create_task(run_client(args.url, t0 + ramp * i / args.clients, stop_at, frames, chunk_s,
                                       chunk_s * ((i * 0.618) % 1.0), results[i], settled))
        for i in range(args.clients)
    ]
    window: dict[str, Any] = {}
    others = {"simulators": args.sims_pid, "load": os.getpid()} if args.sims_pid else {"load": os.getpid()}

    period = args.speech_s + args.silence_s  # each client's load repeats once per turn of its synthetic user

    async def sample_window() -> None:
        await all_ready.wait()
        if args.callgrind:  # instrumented from now on (the switch flushes valgrind's code cache: a second's settling)
            await callgrind_control(args.relay_pid, "--instr=on")
            await asyncio.sleep(1.0)
            await callgrind_control(args.relay_pid, "--zero")
        begun = loop.time()
        started, cpu0 = time.monotonic(), process_cpu_seconds(args.relay_pid)
        others0 = {name: process_cpu_seconds(pid) for name, pid in others.items()}
        length, turns = steady_window(stop_at - begun - 0.5, period)
        await asyncio.sleep(length / 2)
        window["rss_open"] = process_rss_bytes(args.relay_pid)
        await asyncio.sleep(max(0.0, begun + length - loop.time()))
        window["turns"] = turns
        window["start"], window["end"] = started, time.monotonic()  # for the census (bench.census)
        window["seconds"] = window["end"] - started
        window["cpu_seconds"] = process_cpu_seconds(args.relay_pid) - cpu0
        window["other_core_share"] = {name: round((process_cpu_seconds(pid) - others0[name]) / window["seconds"], 3)
                                      for name, pid in others.items()}
        if args.callgrind:  # the counts since `--zero`, dumped; the dump's own delay bounds the window's overrun
            window["callgrind_dump_s"] = round(await callgrind_control(args.relay_pid, "--dump"), 3)

    sampler = asyncio.create_task(sample_window())
    await asyncio.gather(*tasks)
    sampler.cancel()
    errors = [e for r in results for e in r.errors]
    ready = [r for r in results if r.setup is not None]
    return {
        "clients": args.clients,
        "ready": len(ready),
        "setup": summary([r.setup for r in ready if r.setup is not None]),
        "pairs": [[r.conversation_id, r.session_id] for r in ready],
        "frames_sent": sum(r.frames_sent for r in results),
        "late_frames": sum(r.late_frames for r in results),
        "audio_bytes_received": sum(r.audio_bytes_received for r in results),
        "messages": _merge(r.messages for r in results),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:10],
        "window": window if "cpu_seconds" in window else None,
        "rss_idle": rss_idle,
        "relay_cpu_total": process_cpu_seconds(args.relay_pid) - cpu_start_total,
    }


def _merge(counts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counts:
        for key, value in one.items():
            total[key] = total.get(key, 0) + value
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True, help="seconds of streaming after the ramp")
    parser.add_argument("--ramp", type=float, default=None, help="seconds over which clients connect")
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--speech-s", type=float, default=1.5)
    parser.add_argument("--silence-s", type=float, default=3.5)
    parser.add_argument("--relay-pid", type=int, required=True)
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate, as browsers do")
    parser.add_argument("--sims-pid", type=int, default=None, help="also report the simulators' CPU share")
    parser.add_argument("--callgrind", action="store_true",
                        help="the relay runs under callgrind: instrument it and zero its counts at the window's "
                             "start, dump them at its end")
    args = parser.parse_args()
    global COMPRESSION
    COMPRESSION = "deflate" if args.deflate else None
    print(orjson.dumps(asyncio.run(run(args))).decode(), flush=True)


if __name__ == "__main__":
    main()
