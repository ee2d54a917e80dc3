"""What an open conversation holds in the relay's heap, by who allocated it: `python -m bench.conversation_heap [N]`.

Serves the simulators and a relay (HeyGen, as `python -m bench` does) in this process, starts `tracemalloc`, opens N
conversations (start, `ready`, then one text turn answered, so that every buffer has been used once), takes a
snapshot, and prints the heap held per open conversation grouped by package (the relay's modules, hypercorn, wsproto,
h11, `websockets`, Trio, httpx2/httpcore2, the standard library), then the largest single allocation sites. The
simulators' own allocations are left out (they live in `relay/sim/` and in the test support code), so what is shown
is the relay's. Python heap only: RSS also counts the allocator's slack and freed-but-kept arenas (RSS per
conversation is `python -m bench`'s figure). Loopback only; N conversations, one turn each, then everything stops.
"""

from __future__ import annotations

import gc
import logging
import sys
import tracemalloc
from collections import Counter

import trio

from tests.support.harness import running_relay
from tests.support.resumable import ResumingBrowser

GROUPS = [("relay/sim/", None), ("tests/", None), ("tracemalloc", None),
          ("relay/", "the relay's modules"), ("hypercorn/", "hypercorn"), ("wsproto/", "wsproto"), ("h11/", "h11"),
          ("websockets/", "websockets"), ("quart", "Quart"), ("trio/", "Trio"), ("httpx", "httpx2/httpcore2"),
          ("httpcore", "httpx2/httpcore2"), ("zlib", "zlib")]


def group_of(filename: str) -> str | None:
    for marker, name in GROUPS:
        if marker in filename:
            return name
    return "standard library and the rest"


async def main(n: int) -> None:
    async with running_relay(relay_max_conversations=n + 10, relay_max_conversations_per_client=n + 10,
                             relay_max_starts_per_minute=10 * n, relay_log_level="WARNING") as relay:
        url = relay.url
        warm = ResumingBrowser(url)  # one conversation first, so that start-up allocations are not counted
        await warm.connect()
        await warm.send(type="start")
        await warm.expect("ready")
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        browsers = []
        for _ in range(n):
            browser = ResumingBrowser(url)
            await browser.connect()
            await browser.send(type="start")
            await browser.expect("ready")
            await browser.send(type="text", text="what are your opening hours?")
            await browser.expect("agent_response")
            browsers.append(browser)
        gc.collect()
        after = tracemalloc.take_snapshot()
        by_group: Counter[str] = Counter()
        by_site: Counter[str] = Counter()
        for stat in after.compare_to(before, "lineno"):
            frame = stat.traceback[0]
            group = group_of(frame.filename)
            if group is None:
                continue
            by_group[group] += stat.size_diff
            by_site[f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"] += stat.size_diff
        total = sum(by_group.values())
        print(f"N={n}: the relay's Python heap grew {total / n / 1024:.1f} KiB per open conversation")
        for group, size in by_group.most_common():
            print(f"  {size / n / 1024:7.1f} KiB  {group}")
        print("largest allocation sites (KiB per conversation):")
        for site, size in by_site.most_common(12):
            print(f"  {size / n / 1024:7.1f}  {site}")
        logging.disable(logging.CRITICAL)  # the simulators go down with the relay: its stop calls fail, unheard


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 100)
