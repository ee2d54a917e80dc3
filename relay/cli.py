"""`avatar-relay serve | sim`: the command line. `python -m relay` is the same."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from relay.config import ConfigError, load_settings

log = logging.getLogger("relay.cli")


async def _wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


def _hypercorn_config(host: str, port: int, graceful_timeout: float) -> Config:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.websocket_max_message_size = 16 * 2**20
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"avatar-relay: {exc}", file=sys.stderr)
        return 2
    from relay.web import create_app, relay_state

    host = args.host or settings.relay_host
    port = settings.relay_port if args.port is None else args.port
    app = create_app(settings)
    registry = relay_state(app).registry

    async def drain_on_signal() -> None:
        await _wait_for_signal()
        # Not ready first (/readyz answers 503, new conversations are refused), so a load balancer stops sending
        # new ones; then, after RELAY_PREDRAIN_DELAY (for its health checks to notice), the open ones are ended.
        registry.shutting_down = True
        if settings.relay_predrain_delay > 0:
            log.info("shutting down: not ready; draining %d open conversation(s) in %.1fs", registry.open_count,
                     settings.relay_predrain_delay)
            await trio.sleep(settings.relay_predrain_delay)
        log.info("shutting down: draining %d open conversation(s)", registry.open_count)
        left = await registry.drain(settings.relay_drain_timeout)
        if left:
            log.warning("shutting down with %d conversation(s) still closing", left)

    config = _hypercorn_config(host, port, settings.relay_stop_timeout + 2.0)
    status = 0
    try:
        trio.run(lambda: hypercorn_serve(app, config, shutdown_trigger=drain_on_signal))
    except* OSError as group:
        print(f"avatar-relay: cannot listen on {host}:{port}: {_first(group).strerror}", file=sys.stderr)
        status = 1
    return status


def _first(group: BaseExceptionGroup[OSError]) -> OSError:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, OSError)
    return exc


def cmd_sim(args: argparse.Namespace) -> int:
    from relay.sim.runner import serve_simulators

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(serve_simulators, args.host, {
                "elevenlabs": args.elevenlabs_port, "heygen": args.heygen_port,
                "liveavatar": args.liveavatar_port})
            print(f"ELEVENLABS_BASE_URL={urls.elevenlabs}", flush=True)
            print(f"HEYGEN_BASE_URL={urls.heygen}", flush=True)
            print(f"LIVEAVATAR_BASE_URL={urls.liveavatar}", flush=True)
            await _wait_for_signal()
            nursery.cancel_scope.cancel()

    trio.run(main)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar-relay", description="Give a voice AI agent a live avatar face.")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the relay (demo mode on the simulators when no API keys are set)")
    serve.add_argument("--host", default=None, help="bind address (default RELAY_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default RELAY_PORT, 8000)")
    serve.set_defaults(func=cmd_serve)
    sim = sub.add_parser("sim", help="run the ElevenLabs, HeyGen and LiveAvatar simulators and print their URLs")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--elevenlabs-port", type=int, default=0)
    sim.add_argument("--heygen-port", type=int, default=0)
    sim.add_argument("--liveavatar-port", type=int, default=0)
    sim.set_defaults(func=cmd_sim)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["serve", *(argv or [])])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
