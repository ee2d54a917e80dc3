"""Serving the app with hypercorn: its configuration (`hypercorn_config`, with the kernel-level send timeout of
`GuardedConfig`), and the signal-driven shutdown that drains open conversations (`serve_app`). Used by
`avatar-relay serve` for a single relay and for each worker, and by the supervisor to bind the shared socket.

This module must never import relay.cli (the command line imports it) and never drain without bound: the drain
is bounded by RELAY_DRAIN_TIMEOUT, hypercorn's graceful timeout by RELAY_STOP_TIMEOUT + 2 s.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import Framework

from relay.config import Settings
from relay.server.admission import Registry

# The shutdown lines keep the logger name operators know from `avatar-relay serve` (docs/operations.md).
log = logging.getLogger("relay.cli")


# hypercorn's trio server writes to the socket inside a shielded cancel scope, so a browser that stops reading can
# block a send forever (a peer that keeps answering zero-window probes is never timed out by TCP). The conversation
# itself ends promptly (the Outbox's watchdog), but that one write would hold the connection's task and its socket
# until the process ends. TCP_USER_TIMEOUT makes Linux abort a connection whose sent data stays unacknowledged that
# long, zero-window probes included; accepted sockets inherit it from the listening socket.


class GuardedConfig(Config):
    """hypercorn Config whose listening TCP sockets carry TCP_USER_TIMEOUT = `send_timeout` (where supported)."""

    send_timeout: float = 10.0

    def create_sockets(self):  # type: ignore[no-untyped-def]
        sockets = super().create_sockets()
        for sock in (*sockets.insecure_sockets, *sockets.secure_sockets):
            set_send_timeout(sock, self.send_timeout)
        return sockets


def set_send_timeout(sock: socket.socket, seconds: float) -> bool:
    """Set TCP_USER_TIMEOUT on a TCP socket; False where the platform or the socket family has none."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(seconds * 1000)))
    except OSError:
        return False
    return True


def hypercorn_config(host: str, port: int, graceful_timeout: float, send_timeout: float = 10.0,
                     max_message_bytes: int = 256 * 1024) -> Config:
    """hypercorn's configuration for the relay: bound to `host:port`, no access log, WebSocket messages of at most
    `max_message_bytes` (RELAY_MAX_FRAME_BYTES; `relay.server.ws_limits` bounds compressed ones too), and
    TCP_USER_TIMEOUT = `send_timeout` on the listening socket (a browser that stops reading cannot pin a
    connection)."""
    config = GuardedConfig()
    config.send_timeout = send_timeout
    config.bind = [f"{host}:{port}"]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.websocket_max_message_size = max_message_bytes
    return config


async def wait_for_signal() -> None:
    """Return at the first SIGINT or SIGTERM. Cancelled by the caller's scope."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


async def drain(registry: Registry, settings: Settings, *, predrain: bool = True,
                cut_short: Callable[[], Awaitable[object]] | None = None) -> None:
    """Shut down politely: not ready first (/readyz answers 503, new conversations are refused), so a load balancer
    stops sending new ones; then, after RELAY_PREDRAIN_DELAY (for its health checks to notice), the open ones are
    ended (each tells its browser `shutdown`), bounded by RELAY_DRAIN_TIMEOUT. `predrain=False` skips the delay
    (nobody can see the 503 any more); the delay also ends early when `cut_short()` returns."""
    registry.shutting_down = True
    if predrain and settings.relay_predrain_delay > 0:
        log.info("shutting down: not ready; draining %d open conversation(s) in %.1fs", registry.open_count,
                 settings.relay_predrain_delay)
        with trio.move_on_after(settings.relay_predrain_delay):
            await (cut_short or trio.sleep_forever)()
    log.info("shutting down: draining %d open conversation(s)", registry.open_count)
    left = await registry.drain(settings.relay_drain_timeout)
    if left:
        log.warning("shutting down with %d conversation(s) still closing", left)


async def serve_app(app: Framework, config: Config, registry: Registry, settings: Settings, *,
                    also_stop_when: Callable[[], Awaitable[object]] | None = None) -> None:
    """Serve `app` until SIGINT/SIGTERM (or `also_stop_when()` returns: a worker whose supervisor is gone), then
    drain and let hypercorn finish. Raises OSError when the address cannot be used."""
    if also_stop_when is None:
        async def drain_on_signal() -> None:
            await wait_for_signal()
            await drain(registry, settings)

        await hypercorn_serve(app, config, shutdown_trigger=drain_on_signal)
        return
    stop_when = also_stop_when

    async def wait_for_shutdown(signals: AsyncIterator[int]) -> None:
        async with trio.open_nursery() as nursery:
            async def first(wait: Callable[[], Awaitable[object]]) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first, signals.__anext__)
            nursery.start_soon(first, stop_when)

    async def drain_on_signal_or_exit(signals: AsyncIterator[int]) -> None:
        await wait_for_shutdown(signals)
        await drain(registry, settings)

    # A worker listens for SIGTERM/SIGINT for as long as it runs: the first starts the drain, later ones are ignored
    # (systemd's default KillMode signals every process of the service and the supervisor forwards too; a second
    # signal must not kill a worker mid-drain).
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        await hypercorn_serve(app, config, shutdown_trigger=partial(drain_on_signal_or_exit, signals))
