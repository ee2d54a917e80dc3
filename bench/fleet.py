"""What the fleet's Redis costs a conversation: set-up latency (socket open -> `ready`) and relay CPU per
conversation, with RELAY_REDIS_URL on vs off, everything else equal (the same simulators without injected latency,
the same avatar budget, the real relay under `avatar-relay serve`, a real redis-server on loopback).

`python -m bench.fleet [--conversations 150] [--rounds 3] [--avatar liveavatar] [--max-seconds 600]`: for each round,
a fresh relay with Redis off then one with Redis on; each runs a few warm-up conversations, then `--conversations`
conversations one after the other (start, `ready`, stop, `ended`), and the relay's CPU time (/proc, the relay process
only) is read before and after. Bounded: every conversation has a 20 s guard and the whole run `--max-seconds`.
Prints one JSON report (also written to `--out`). Only loopback addresses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
import orjson
import trio
from trio_websocket import open_websocket_url

from bench.load import process_cpu_seconds
from bench.run import BENCH_AVATAR, PYTHON, ROOT, _free_port, _stop, _wait_for_port

WARM_UP = 5


def _start_redis() -> tuple[subprocess.Popen[bytes], str, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench.fleet needs redis-server (Debian's package; scripts/test installs it)")
    port = _free_port()
    directory = tempfile.mkdtemp(prefix="bench-redis-")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", directory, "--loglevel", "warning"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_port(port, process)
    return process, f"redis://127.0.0.1:{port}/0", directory


def _start_sims() -> tuple[subprocess.Popen[str], dict[str, str]]:
    process = subprocess.Popen([PYTHON, "-m", "bench.sims"], cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, orjson.loads(process.stdout.readline())


def _start_relay(urls: dict[str, str], avatar: str, redis_url: str | None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cwd = tempfile.mkdtemp(prefix="bench-fleet-relay-")
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "ELEVENLABS_BASE_URL": urls["elevenlabs"], "ELEVENLABS_AGENT_ID": "bench-agent",
           "ELEVENLABS_API_KEY": "bench-key", "HEYGEN_BASE_URL": urls["heygen"], "HEYGEN_API_KEY": "bench-key",
           "HEYGEN_AVATAR_ID": "Wayne_20240711", "LIVEAVATAR_BASE_URL": urls["liveavatar"],
           "LIVEAVATAR_API_KEY": "bench-key", "LIVEAVATAR_AVATAR_ID": BENCH_AVATAR, "RELAY_AVATAR": avatar,
           "RELAY_MAX_CONVERSATIONS": "100000", "RELAY_MAX_CONVERSATIONS_PER_CLIENT": "100000",
           "RELAY_MAX_STARTS_PER_MINUTE": "1000000", "RELAY_MAX_AVATAR_SESSIONS": "100000",
           "RELAY_LOG_LEVEL": "WARNING", "RELAY_AUTH": "off", "RELAY_STATE_DIR": cwd}
    env.pop("RELAY_REDIS_URL", None)
    if redis_url is not None:
        env["RELAY_REDIS_URL"] = redis_url
    process = subprocess.Popen([PYTHON, "-m", "relay", "serve", "--host", "127.0.0.1", "--port", str(port)],
                               cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_port(port, process)
    return process, f"ws://127.0.0.1:{port}/ws"


async def _one(url: str) -> float:
    """One conversation: seconds from opening the socket to `ready`; then `stop` and wait for `ended`."""
    with trio.fail_after(20):
        began = time.perf_counter()
        async with open_websocket_url(url) as ws:
            await ws.send_message('{"type":"start"}')
            setup = None
            while True:
                frame = await ws.get_message()
                if isinstance(frame, bytes):
                    continue
                kind = orjson.loads(frame)["type"]
                if kind == "ready" and setup is None:
                    setup = time.perf_counter() - began
                    await ws.send_message('{"type":"stop"}')
                elif kind == "error":
                    raise RuntimeError(f"conversation failed: {frame}")
                elif kind == "ended":
                    break
        assert setup is not None
        return setup


async def _batch(url: str, pid: int, count: int) -> dict[str, Any]:
    for _ in range(WARM_UP):
        await _one(url)
    cpu_before = process_cpu_seconds(pid)
    setups = [await _one(url) for _ in range(count)]
    cpu = process_cpu_seconds(pid) - cpu_before
    return {"setup_ms": [s * 1000 for s in setups], "cpu_ms_per_conversation": cpu * 1000 / count}


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "p90": ordered[int(0.9 * (len(ordered) - 1))],
            "mean": statistics.fmean(ordered)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.max_seconds
    sims, urls = _start_sims()
    redis, redis_url, redis_dir = _start_redis()
    results: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    try:
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                if time.monotonic() > deadline:
                    break
                relay, ws_url = _start_relay(urls, args.avatar, redis_url if mode == "on" else None)
                try:
                    with httpx2.Client(timeout=5.0) as http:
                        ready_url = ws_url.replace("ws://", "http://").removesuffix("/ws") + "/readyz"
                        while http.get(ready_url).status_code != 200:
                            time.sleep(0.05)
                    results[mode].append(trio.run(_batch, ws_url, relay.pid, args.conversations))
                finally:
                    _stop(relay)
        with httpx2.Client(timeout=5.0) as http:
            ledger = http.get(urls[args.avatar] + "/_sim/ledger").json() if args.avatar != "none" else None
    finally:
        _stop(sims)
        redis.kill()
        redis.wait()
        shutil.rmtree(redis_dir, ignore_errors=True)
    report: dict[str, Any] = {"conversations_per_batch": args.conversations, "avatar": args.avatar,
                              "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    for mode, batches in results.items():
        setups = [ms for batch in batches for ms in batch["setup_ms"]]
        cpu = [batch["cpu_ms_per_conversation"] for batch in batches]
        report[mode] = {"batches": len(batches), "setup_ms": _summary(setups) if setups else None,
                        "cpu_ms_per_conversation": cpu}
    if report["off"]["setup_ms"] and report["on"]["setup_ms"]:
        report["added"] = {
            "setup_ms_median": report["on"]["setup_ms"]["median"] - report["off"]["setup_ms"]["median"],
            "setup_ms_p90": report["on"]["setup_ms"]["p90"] - report["off"]["setup_ms"]["p90"],
            "cpu_ms_per_conversation": statistics.median(report["on"]["cpu_ms_per_conversation"])
            - statistics.median(report["off"]["cpu_ms_per_conversation"])}
    if ledger is not None:
        sessions = ledger["sessions"].values()
        report["avatar_sessions"] = {"created": len(ledger["sessions"]),
                                     "stopped": sum(1 for s in sessions if (s.get("stopped_at") or s.get("stopped"))
                                                    is not None)}
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=150, help="measured conversations per batch")
    parser.add_argument("--rounds", type=int, default=3, help="batches per mode (off, on alternate)")
    parser.add_argument("--avatar", default="liveavatar", choices=("liveavatar", "heygen", "none"))
    parser.add_argument("--max-seconds", type=float, default=600.0, help="no new batch after this long")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    args = parser.parse_args(argv)
    report = run(args)
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return report


if __name__ == "__main__":
    main()
