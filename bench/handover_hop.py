"""What relaying a resumed connection to the worker that holds it costs (issue 29, `serve --workers N`):
`python -m bench.handover_hop [FRAMES]`.

The holding worker is a real second process running `relay.server.handover.serve_handovers` on a Unix socket, whose
conversation echoes every message; this process runs the accepting worker's side (`relay_resume`) with an in-memory
browser. Each message goes browser -> accepting worker -> Unix socket -> holding worker -> back the same way, so
half a round trip is the latency one hop adds to one direction. Measured for a 640-byte binary message (20 ms of
16 kHz audio) and a 200-character JSON text message, one at a time (no queueing), FRAMES of each. For comparison,
the one-off cost the other design would pay instead: passing the socket's descriptor to the other process
(SCM_RIGHTS) and back.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from relay.protocol import browser as bp
from relay.server.handover import relay_resume, serve_handovers

MAX_FRAME = 256 * 1024


async def _echo(browser: object, resume: bp.Resume, subject: str | None, left: object) -> None:
    while True:
        await browser.send(await browser.receive())  # type: ignore[attr-defined]


def holder(path: str) -> None:
    trio.run(serve_handovers, Path(path), _echo, MAX_FRAME)


class MemoryBrowser:
    """The browser's side as the accepting worker sees it: `receive` what the bench puts in, `send` timestamps."""

    def __init__(self) -> None:
        self.inbox_send, self.inbox = trio.open_memory_channel[str | bytes](1)
        self.back_send, self.back = trio.open_memory_channel[str | bytes](1)

    async def receive(self) -> str | bytes:
        return await self.inbox.receive()

    async def send(self, data: str | bytes) -> None:
        await self.back_send.send(data)

    async def close(self, code: int, reason: str = "") -> None:
        pass


def percentile(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * p))]


async def measure(path: str | None, frames: int) -> dict[str, list[float]]:
    """Half the round trip of each message: through the hop to the holder at `path`, or (None) echoed in this
    process (the baseline: the bench's own channels and task switches)."""
    browser = MemoryBrowser()
    resume = bp.Resume(type="resume", resume_token="rt1.x-w0.k.0.m", last_seq=0)
    results: dict[str, list[float]] = {}
    async with trio.open_nursery() as nursery:
        if path is None:
            nursery.start_soon(_echo, browser, resume, None, None)
        else:
            nursery.start_soon(relay_resume, Path(path), browser, resume, None, lambda: False, MAX_FRAME)
        for name, message in (("binary 640 B", b"\x01" * 640),
                              ("text 200 chars", '{"type":"x","t":"' + "a" * 181 + '"}')):
            times = []
            for i in range(frames + 50):
                start = time.perf_counter()
                await browser.inbox_send.send(message)
                echoed = await browser.back.receive()
                if i >= 50:  # warm-up
                    times.append((time.perf_counter() - start) / 2 * 1e6)
                assert echoed == message
            results[name] = times
        nursery.cancel_scope.cancel()
    return results


def fd_passing(rounds: int) -> list[float]:
    """µs for one descriptor to go to another process and back (SCM_RIGHTS over a Unix socket pair)."""
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the other worker: receive a descriptor, send it back
        here.close()
        for _ in range(rounds + 50):
            _, fds, _, _ = socket.recv_fds(there, 16, 1)
            socket.send_fds(there, [b"x"], fds)
            os.close(fds[0])
        os._exit(0)
    there.close()
    victim = socket.socket()
    times = []
    for i in range(rounds + 50):
        start = time.perf_counter()
        socket.send_fds(here, [b"x"], [victim.fileno()])
        _, fds, _, _ = socket.recv_fds(here, 16, 1)
        os.close(fds[0])
        if i >= 50:
            times.append((time.perf_counter() - start) / 2 * 1e6)
    os.waitpid(pid, 0)
    return times


def main() -> None:
    frames = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with tempfile.TemporaryDirectory(prefix="bench-handover-") as directory:
        path = os.path.join(directory, "handover-0.sock")
        process = subprocess.Popen([sys.executable, "-c", f"from bench.handover_hop import holder; holder({path!r})"])
        try:
            while not os.path.exists(path):
                time.sleep(0.01)
            results = trio.run(measure, path, frames)
            baseline = trio.run(measure, None, frames)
        finally:
            process.terminate()
            process.wait()
    print(f"one hop, one direction, {frames} messages each (µs): p50 / p99 / mean")
    for name, times in results.items():
        base = baseline[name]
        print(f"  relayed {name:16} {statistics.median(times):7.1f} / {percentile(times, 0.99):7.1f} / "
              f"{statistics.fmean(times):7.1f}   (in-process baseline {statistics.median(base):.1f} / "
              f"{percentile(base, 0.99):.1f} / {statistics.fmean(base):.1f})")
    passing = fd_passing(frames)
    print(f"  SCM_RIGHTS fd pass (once per resume) {statistics.median(passing):7.1f} / "
          f"{percentile(passing, 0.99):7.1f} / {statistics.fmean(passing):7.1f}")


if __name__ == "__main__":
    main()
