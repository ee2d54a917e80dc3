"""The fleet on the Redis topologies RELAY_REDIS_URL names besides one server: Sentinel (`redis+sentinel://`: the
client asks the sentinels for the primary) and Cluster (`redis+cluster://`: every fleet key shares one hash tag, so
the Lua scripts run on one node). Real processes: redis-server as primary, as a sentinel, and three cluster nodes;
admission from many Trio tasks through two relays' seat keepers admits exactly the cap."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio

from relay.config import load_settings
from relay.ops.fleet import Fleet
from relay.server.admission import AdmissionRefused
from relay.server.fleet_admission import FleetSeats, Limits
from tests.support.processes import free_port
from tests.support.redis import RedisServer

CAP = 5


@contextmanager
def sentinel_for(primary: RedisServer) -> Iterator[int]:
    """A redis sentinel monitoring `primary` as `fleetmaster`; yields its port once it knows the primary."""
    port = free_port()
    conf = primary.dir / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {primary.dir}\n"
                    f"sentinel monitor fleetmaster 127.0.0.1 {primary.port} 1\n")
    process = subprocess.Popen([primary.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            answer = subprocess.run(["redis-cli", "-p", str(port), "SENTINEL", "get-master-addr-by-name",
                                     "fleetmaster"], capture_output=True, text=True, timeout=5)
            if str(primary.port) in answer.stdout:
                break
            assert time.monotonic() < deadline, "the sentinel never knew the primary"
            time.sleep(0.05)
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)


def cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000, Redis's rule) is a valid port and free too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


@contextmanager
def cluster_of_three() -> Iterator[list[RedisServer]]:
    """Three cluster-mode redis-servers joined into one cluster (no replicas), every slot covered."""
    nodes: list[RedisServer] = []
    try:
        for _ in range(3):
            port = cluster_port()
            node = RedisServer(port, extra=("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"))
            node.start()
            nodes.append(node)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
                        "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, check=True, timeout=60)
        deadline = time.monotonic() + 30
        while not all("cluster_state:ok" in n.command("CLUSTER", "INFO") for n in nodes):
            assert time.monotonic() < deadline, "the cluster never became ok"
            time.sleep(0.1)
        yield nodes
    finally:
        for node in nodes:
            node.close()


@asynccontextmanager
async def relays(url: str) -> AsyncIterator[tuple[Fleet, FleetSeats, FleetSeats]]:
    """Two relays' fleet memberships and seat keepers on `url`."""
    limits = Limits(max_conversations=CAP, max_per_client=100, starts_per_minute=1000, avatar_sessions={})
    fleets = [Fleet.from_settings(load_settings(relay_redis_url=url, relay_fleet_lease=5)) for _ in range(2)]
    async with trio.open_nursery() as nursery:
        keepers = []
        for fleet in fleets:
            assert fleet is not None
            await nursery.start(fleet.serve)
            keeper = FleetSeats(fleet, limits, outage="refuse")
            nursery.start_soon(keeper.serve)
            keepers.append(keeper)
        assert fleets[0] is not None
        yield fleets[0], keepers[0], keepers[1]
        nursery.cancel_scope.cancel()


async def admit_many(one: FleetSeats, two: FleetSeats) -> tuple[int, int]:
    admitted = refused = 0

    async def try_one(index: int) -> None:
        nonlocal admitted, refused
        try:
            await (one, two)[index % 2].take(f"s{index}", f"10.0.0.{index}")
        except AdmissionRefused:
            refused += 1
        else:
            admitted += 1

    async with trio.open_nursery() as nursery:
        for index in range(20):
            nursery.start_soon(try_one, index)
    return admitted, refused


@pytest.mark.timeout(90)
async def test_the_fleet_runs_through_sentinel(redis_server: RedisServer) -> None:
    with sentinel_for(redis_server) as sentinel_port:
        async with relays(f"redis+sentinel://127.0.0.1:{sentinel_port}/fleetmaster/0") as (fleet, one, two):
            assert await admit_many(one, two) == (CAP, 20 - CAP)
            assert redis_server.command("EXISTS", fleet.relay_key).strip() == "1", "the lease is on the primary"
            assert int(redis_server.command("ZCARD", "{avatar-relay}:seats")) == CAP


@pytest.mark.timeout(120)
async def test_the_fleet_runs_on_a_cluster() -> None:
    with cluster_of_three() as nodes:
        async with relays(f"redis+cluster://127.0.0.1:{nodes[0].port}") as (fleet, one, two):
            assert await admit_many(one, two) == (CAP, 20 - CAP)
            slot = nodes[0].command("CLUSTER", "KEYSLOT", fleet.relay_key).strip()
            assert slot == nodes[0].command("CLUSTER", "KEYSLOT", "{avatar-relay}:seats").strip(), \
                "every fleet key in one slot"
            holder = [n for n in nodes if n.command("-c", "EXISTS", fleet.relay_key).strip() == "1"]
            assert holder, "the lease is in the cluster"

