"""relay/server/serving.py without a served app: hypercorn's configuration for the relay (its listening socket
carries TCP_USER_TIMEOUT) and the drain's order — not ready first, the predrain delay (cut short when asked), then
every open conversation ended within RELAY_DRAIN_TIMEOUT. Virtual time, no fixed sleeps."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from relay.server.admission import Registry
from relay.server.serving import drain, hypercorn_config
from tests.support.fakes import make_settings


def test_the_config_binds_one_address_logs_no_access_and_bounds_messages() -> None:
    """#30's H2: a WebSocket message is at most RELAY_MAX_FRAME_BYTES (256 KiB unless set), not hypercorn's 16 MiB."""
    config = hypercorn_config("127.0.0.1", 0, graceful_timeout=3.0, send_timeout=7.0)
    assert config.bind == ["127.0.0.1:0"] and config.graceful_timeout == 3.0
    assert config.accesslog is None and config.websocket_max_message_size == 256 * 1024
    assert hypercorn_config("127.0.0.1", 0, 3.0, max_message_bytes=4096).websocket_max_message_size == 4096


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="no TCP_USER_TIMEOUT on this platform")
def test_the_listening_socket_gives_up_on_a_peer_that_stops_reading_after_the_send_timeout() -> None:
    sockets = hypercorn_config("127.0.0.1", 0, graceful_timeout=1.0, send_timeout=7.5).create_sockets()
    try:
        (listening,) = sockets.insecure_sockets
        assert listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 7500
    finally:
        for sock in sockets.insecure_sockets:
            sock.close()


async def test_the_drain_stops_admitting_waits_the_predrain_delay_then_ends_every_conversation(
        autojump_clock: trio.testing.MockClock) -> None:
    registry = Registry(10, 10)
    ended: list[float] = []

    async def conversation(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with registry.admit("client") as scope:
            task_status.started()
            with scope:
                await trio.sleep_forever()
            ended.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for _ in range(2):
            await nursery.start(conversation)
        began = trio.current_time()
        await drain(registry, make_settings(relay_predrain_delay=5.0, relay_drain_timeout=2.0))
    assert registry.shutting_down and not registry.ready and registry.open_count == 0
    assert [round(t - began, 3) for t in ended] == [5.0, 5.0]


async def test_the_predrain_delay_ends_early_when_nobody_can_see_the_503_any_more(
        autojump_clock: trio.testing.MockClock) -> None:
    async def balancer_gone() -> None:
        await trio.sleep(1.0)

    registry = Registry(10, 10)
    began = trio.current_time()
    await drain(registry, make_settings(relay_predrain_delay=30.0), cut_short=balancer_gone)
    assert round(trio.current_time() - began, 3) == 1.0
    await drain(Registry(10, 10), make_settings(relay_predrain_delay=30.0), predrain=False)
    assert round(trio.current_time() - began, 3) == 1.0
