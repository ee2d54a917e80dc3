"""`/metrics` for the whole relay under `serve --workers N`, whichever worker answers the scrape.

Each worker also answers on a private Unix socket (`metrics-<index>.sock` in the supervisor's 0700 directory) with
its own exposition and nothing else: connect, read to the end. The worker answering `/metrics` reads every other
worker's exposition concurrently (each bounded by SCRAPE_TIMEOUT), then merges them: every sample gets a `worker`
label, names, types and HELP stay as they are, and `avatar_relay_worker_up{worker}` says which workers answered.
prometheus_client's multiprocess mode does not fit: our collectors compute values at scrape time (readiness, open
conversations, audio traffic), which its files cannot hold. This module must never block a scrape on a dead
worker for longer than SCRAPE_TIMEOUT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from relay.net.unix_server import serve_unix_socket

SCRAPE_TIMEOUT = 2.0
UP_METRIC = "avatar_relay_worker_up"


async def serve_own_metrics(path: Path, render: Callable[[], bytes], *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer each connection on the Unix socket `path` with `render()`, then close it. Runs until cancelled (the
    app's nursery, at shutdown); removes the socket file then."""
    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(render())

    await serve_unix_socket(path, answer, task_status=task_status)


async def read_exposition(path: Path) -> bytes | None:
    """Another worker's exposition, or None when it does not answer within SCRAPE_TIMEOUT (dead, restarting)."""
    with trio.move_on_after(SCRAPE_TIMEOUT):
        try:
            async with await trio.open_unix_socket(str(path)) as stream:
                chunks = []
                while chunk := await stream.receive_some(65536):
                    chunks.append(chunk)
                return b"".join(chunks)
        except (OSError, trio.BrokenResourceError):
            return None
    return None


async def gather_expositions(sockets: dict[int, Path], own_index: int, own: bytes) -> dict[int, bytes | None]:
    """Every worker's exposition by index: this worker's `own`, the others read from their `sockets`."""
    found: dict[int, bytes | None] = {own_index: own}

    async def fetch(index: int, path: Path) -> None:
        found[index] = await read_exposition(path)

    async with trio.open_nursery() as nursery:
        for index, path in sockets.items():
            if index != own_index:
                nursery.start_soon(fetch, index, path)
    return found


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge_expositions(expositions: dict[int, bytes | None]) -> bytes:
    """One Prometheus text exposition from several workers': each sample labelled with its `worker`, families of
    the same name merged (first HELP and type win), plus `avatar_relay_worker_up`."""
    families: dict[str, Metric] = {}
    up = Metric(UP_METRIC, "1 for each worker whose metrics are in this scrape, 0 for one that did not answer "
                "(dead or restarting).", "gauge")
    for index, text in sorted(expositions.items()):
        worker = str(index)
        up.add_sample(UP_METRIC, {"worker": worker}, 0.0 if text is None else 1.0)
        if text is None:
            continue
        for family in text_string_to_metric_families(text.decode()):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type,
                                                        family.unit)
            merged.samples.extend(sample._replace(labels={**sample.labels, "worker": worker})
                                  for sample in family.samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([*families.values(), up]))
    return generate_latest(registry)
