"""What hostile sockets cost a relay before any token (docs/reliability.md, "Before the token" and "What an attacker
can do"): resident memory and CPU of a real `avatar-relay serve` (token mode, demo upstreams, default settings
unless `--env NAME=VALUE`) while `--sockets` sockets from 8-per-address loopback sources each send, before `start`,
the most a pre-start socket can: an unfinished text message just under RELAY_MAX_START_BYTES (`plain`), an
unfinished compressed message of 8 MiB of zeros (`compressed`), or half of each (`mixed`).

`python -m bench.hostile [--sockets 500] [--kind mixed|plain|compressed] [--env RELAY_MAX_PENDING=500]`: prints one
JSON line: idle RSS, RSS and peak (VmHWM) growth, relay CPU seconds, sockets accepted (101). Only loopback
addresses; bounded by the relay's own time-outs and a 60 s guard.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import httpx2
import orjson
import trio

from tests.faults.test_process_faults import base_env
from tests.support.processes import relay_process
from tests.support.wsframes import client_frame, deflated_zeros, open_raw_socket

ROOT = Path(__file__).resolve().parents[1]


def memory(pid: int) -> tuple[int, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(sockets: int, kind: str, extra: dict[str, str]) -> dict[str, object]:
    start_bytes = int(extra.get("RELAY_MAX_START_BYTES", 64 * 1024))
    plain = client_frame(b"x" * (start_bytes - 1024), fin=False)
    bomb = client_frame(deflated_zeros(8 * 2**20), fin=False, rsv1=True)
    with tempfile.TemporaryDirectory() as state:
        env = base_env(RELAY_AUTH="token", RELAY_AUTH_SECRET="bench-hostile-secret-0123456789abcdef",
                       XDG_STATE_HOME=state, **extra)
        async with relay_process(env, ROOT) as (process, url), httpx2.AsyncClient(timeout=5) as http:
            port = int(url.rsplit(":", 1)[1])
            await http.get(url + "/healthz")
            rss0, peak0 = memory(process.pid)
            cpu0 = cpu(process.pid)
            opened = []
            with trio.fail_after(60):
                for n in range(sockets):
                    compressed = kind == "compressed" or (kind == "mixed" and n % 2 == 1)
                    sock = await open_raw_socket(port, source=f"127.0.1.{2 + n // 8}", deflate=compressed)
                    if sock.status == 101:
                        try:
                            await sock.stream.send_all(bomb if compressed else plain)
                        except trio.BrokenResourceError:
                            pass
                    opened.append(sock)
                await http.get(url + "/healthz")  # the relay has read what reached it
            rss1, peak1 = memory(process.pid)
            cpu1 = cpu(process.pid)
            for sock in opened:
                await sock.aclose()
    return {"sockets": sockets, "kind": kind, "env": extra, "idle_rss_mb": round(rss0 / 1e6, 1),
            "rss_growth_mb": round((rss1 - rss0) / 1e6, 1), "peak_growth_mb": round((peak1 - peak0) / 1e6, 1),
            "cpu_s": round(cpu1 - cpu0, 2), "accepted": sum(1 for s in opened if s.status == 101)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--kind", choices=["mixed", "plain", "compressed"], default="mixed")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    print(orjson.dumps(trio.run(run, args.sockets, args.kind, extra)).decode())


if __name__ == "__main__":
    main()
