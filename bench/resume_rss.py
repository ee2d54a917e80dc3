"""What a held conversation costs in memory (issue 29): `python -m bench.resume_rss [N]`.

Serves the simulators and a relay in this process (voice-only, so that no avatar simulator's state is counted; the
agent simulator's per-conversation state is, so the per-conversation figures are an upper bound), opens N
conversations, measures RSS, drops all N connections (TCP reset), waits until /metrics shows N held, measures
again; then fills N replay buffers to their bound and measures a third time (the RSS per conversation of each).
"""

from __future__ import annotations

import gc
import re
import sys

import trio

from relay.protocol.resume import REPLAY_BYTES, REPLAY_MESSAGES, ReplayBuffer
from tests.support.harness import running_relay
from tests.support.resumable import ResumingBrowser


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        match = re.search(r"VmRSS:\s+(\d+) kB", status.read())
    assert match is not None
    return int(match.group(1))


async def held_gauge(http_get: object, url: str) -> float:
    import httpx2

    async with httpx2.AsyncClient() as http:
        text = (await http.get(url + "/metrics")).text
    match = re.search(r"^avatar_relay_conversations_held (\S+)$", text, re.M)
    return float(match.group(1)) if match else -1.0


async def main(n: int) -> None:
    async with running_relay(relay_avatar="none", relay_journal=False, relay_max_conversations=n + 10,
                             relay_max_conversations_per_client=n + 10, relay_max_starts_per_minute=10 * n,
                             relay_resume_window=600, relay_log_level="WARNING") as relay:
        url = relay.url
        browsers = []
        gc.collect()
        idle_rss = rss_kib()
        for _ in range(n):
            browser = ResumingBrowser(url)
            await browser.connect()
            await browser.send(type="start")
            await browser.expect("ready")
            browsers.append(browser)
        gc.collect()
        open_rss = rss_kib()
        for browser in browsers:
            browser.drop()
        while await held_gauge(None, url) < n:  # noqa: ASYNC110 - polling another component's /metrics
            await trio.sleep(0.05)
        gc.collect()
        held_rss = rss_kib()
        print(f"N={n}: RSS idle {idle_rss} KiB; an open conversation {(open_rss - idle_rss) / n:.1f} KiB each")
        print(f"N={n}: RSS with N open {open_rss} KiB, with N held {held_rss} KiB: "
              f"{(held_rss - open_rss) / n:+.1f} KiB per conversation for holding it")
        # The worst case: each held buffer at its bound (messages of REPLAY_BYTES / REPLAY_MESSAGES bytes).
        buffers = []
        size = REPLAY_BYTES // REPLAY_MESSAGES - 20
        for _ in range(n):
            buffer = ReplayBuffer()
            for _ in range(REPLAY_MESSAGES):
                buffer.push('{"type":"agent_response","text":"' + "x" * (size - 40) + '"}')
                buffer.written(buffer.last_seq)
            buffers.append(buffer)
        gc.collect()
        full_rss = rss_kib()
        print(f"a full replay buffer ({REPLAY_MESSAGES} messages, {buffers[0].bytes} bytes): "
              f"{(full_rss - held_rss) / n:.0f} KiB each")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 100)
