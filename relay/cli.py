"""`avatar-relay serve | sim | doctor | reap | token`: the command line (argparse only; the work is done by the
modules it imports). `python -m relay` is the same. Nothing imports this module."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from typing import TYPE_CHECKING

import trio

from relay._util import leaves
from relay.avatars import AvatarError
from relay.config import ConfigError, Settings

if TYPE_CHECKING:
    from relay.ops.doctor import Finding

def _settings_or_report() -> Settings | None:
    """The validated settings, or None after printing the configuration error (the command then exits 2)."""
    from relay.providers.table import load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        print(f"avatar-relay: {exc}", file=sys.stderr)
        return None


def _workers_argument(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a number of processes, or auto") from None
    if count < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return count


def _supervise(settings: Settings, host: str, port: int, workers: int) -> int:
    """`serve --workers N` with N > 1: check what the workers would refuse, once (one line for a mistake, not one
    per worker), then run them (relay.server.workers)."""
    from relay.ops.logs import configure_logging
    from relay.server.startup import STARTUP_FAILED, StartupFailure, check_configuration, print_failure
    from relay.server.workers import run_supervisor

    if settings.demo_mode:
        print_failure("RELAY_WORKERS / --workers needs real upstream settings: demo mode runs its simulators inside "
                      "the one relay process (run `avatar-relay serve` without --workers, or point it at "
                      "`avatar-relay sim`)")
        return STARTUP_FAILED
    configure_logging(settings)  # before the checks: moving a damaged journal aside is logged
    try:
        trio.run(check_configuration, settings)
    except StartupFailure as exc:
        print_failure(str(exc), exc, settings)
        return STARTUP_FAILED
    return run_supervisor(settings, host, port, workers)


def cmd_serve(args: argparse.Namespace) -> int:
    from relay.providers.table import load_settings
    from relay.server.startup import STARTUP_FAILED, WORKER_STARTUP_FAILED, print_failure

    try:
        settings = load_settings()
    except ConfigError as exc:
        print_failure(str(exc))
        return STARTUP_FAILED
    from hypercorn.utils import LifespanFailureError

    from relay.server.serving import hypercorn_config, serve_app
    from relay.server.workers import role_from_args, wait_for_supervisor_exit
    from relay.web import create_app, relay_state, startup_guard

    host = args.host or settings.relay_host
    port = settings.relay_port if args.port is None else args.port
    role = role_from_args(args)
    if role is None:
        if args.workers is not None:
            settings = settings.model_copy(update={"relay_workers": args.workers})
        if settings.workers > 1:
            return _supervise(settings, host, port, settings.workers)
    try:
        app = create_app(settings, worker=role)
    except ConfigError as exc:
        print_failure(str(exc))
        return STARTUP_FAILED if role is None else WORKER_STARTUP_FAILED
    startup_guard(app).quiet_hypercorn()
    config = hypercorn_config(host, port, settings.relay_stop_timeout + 2.0, settings.relay_send_timeout,
                              settings.relay_max_frame_bytes)
    stop_when = None
    if role is not None:
        config.bind = [f"fd://{role.listen_fd}"]  # the supervisor's socket, shared by every worker
        stop_when = partial(wait_for_supervisor_exit, role.supervisor_pid)  # a worker also stops with its supervisor

    async def serve() -> None:
        await serve_app(app, config, relay_state(app).registry, settings, also_stop_when=stop_when)

    status = 0
    try:
        trio.run(serve)
    except* OSError as group:
        print_failure(f"cannot listen on {host}:{port}: {_first_os_error(group).strerror}: choose another "
                      "--port / RELAY_PORT (or stop what listens there)", group)
        status = STARTUP_FAILED
    except* LifespanFailureError:  # the start-up guard printed its line (relay.server.startup)
        status = STARTUP_FAILED if role is None else WORKER_STARTUP_FAILED
    return status


def _first_os_error(group: BaseExceptionGroup[OSError]) -> OSError:
    first = leaves(group)[0]
    assert isinstance(first, OSError)
    return first


def cmd_doctor(args: argparse.Namespace) -> int:
    """`avatar-relay doctor [--connect]`: 0 when everything checks out, 1 on any problem, 2 for a bad
    configuration. In demo mode the checks run against freshly started simulators."""
    from relay.ops.doctor import diagnose, format_report
    from relay.providers.table import load_settings
    from relay.server.demo import on_simulators

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"PROBLEM configuration: {exc}", file=sys.stdout)
        return 2

    async def run() -> tuple[str, list[Finding]]:
        if not settings.demo_mode:
            return await diagnose(settings, connect=args.connect)
        async with on_simulators(settings) as effective:
            return await diagnose(effective, connect=args.connect, demo=True)

    header, findings = trio.run(run)
    print(header)
    print(format_report(findings))
    return 1 if any(f.level == "problem" for f in findings) else 0


def cmd_sim(args: argparse.Namespace) -> int:
    from relay.providers.table import PROVIDERS, SIMULATOR_APPS, serve_simulators
    from relay.server.serving import wait_for_signal

    startup_faults = sorted(PROVIDERS)  # the avatar simulators; the agent's takes its faults by POST /_sim/faults

    faults: dict[str, dict[str, object]] = {}
    for spec in args.faults:
        name, sep, text = spec.partition("=")
        try:
            value = json.loads(text) if sep else None
        except ValueError:
            value = None
        if name not in startup_faults or not isinstance(value, dict):
            print(f"avatar-relay: --faults takes NAME=JSON-object with NAME one of {', '.join(startup_faults)}"
                  f", e.g. liveavatar='{{\"withhold_connected\": true}}' (got {spec!r})", file=sys.stderr)
            return 2
        faults.setdefault(name, {}).update(value)
    limited = sorted(name for name, entry in PROVIDERS.items() if entry.simulator_session_limit)
    for spec in args.session_limit:
        name, _, text = spec.partition("=")
        try:
            seconds = float(text)
        except ValueError:
            seconds = -1.0
        fault = PROVIDERS[name].simulator_session_limit if name in PROVIDERS else None
        if fault is None or not 0 < seconds < float("inf"):
            print(f"avatar-relay: --session-limit takes NAME=SECONDS with NAME one of {', '.join(limited)} and a "
                  f"positive number of seconds, e.g. liveavatar=20 (got {spec!r})", file=sys.stderr)
            return 2
        faults.setdefault(name, {})[fault] = seconds

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(partial(serve_simulators, args.host, {
                name: getattr(args, f"{name}_port") for name in SIMULATOR_APPS}, faults=faults))
            for name, url in urls.items():
                variable = PROVIDERS[name].settings.base_url_variable if name in PROVIDERS else "ELEVENLABS_BASE_URL"
                print(f"{variable}={url}", flush=True)
            await wait_for_signal()
            nursery.cancel_scope.cancel()

    trio.run(main)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar-relay", description="Give a voice AI agent a live avatar face.")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the relay (demo mode on the simulators when no API keys are set)")
    serve.add_argument("--host", default=None, help="bind address (default RELAY_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default RELAY_PORT, 8000)")
    serve.add_argument("--workers", type=_workers_argument, default=None,
                       help="processes serving the same port, one per core at most (default RELAY_WORKERS, 1; "
                            "auto: one per CPU)")
    from relay.server.workers import add_worker_options

    add_worker_options(serve)
    serve.set_defaults(func=cmd_serve)
    from relay.providers.table import PROVIDERS, SIMULATOR_APPS

    titles = ", ".join(["ElevenLabs", *(entry.title for entry in PROVIDERS.values())])
    sim = sub.add_parser("sim", help=f"run the simulators ({titles}) and print their URLs")
    sim.add_argument("--host", default="127.0.0.1")
    for name in SIMULATOR_APPS:
        sim.add_argument(f"--{name}-port", type=int, default=0)
    sim.add_argument("--faults", action="append", default=[], metavar="NAME=JSON",
                     help="faults in force from the start, e.g. liveavatar='{\"withhold_connected\": true}' or "
                          "heygen='{\"retired\": 410}' (repeatable; docs/reliability.md lists them)")
    sim.add_argument("--session-limit", action="append", default=[], metavar="NAME=SECONDS",
                     help="end the provider's sessions at this length: liveavatar (its sandbox's minute) or simli (a "
                          "cap on maxSessionLength), e.g. liveavatar=20 (repeatable; docs/simulators.md)")
    sim.set_defaults(func=cmd_sim)
    doctor = sub.add_parser("doctor", help="check the configuration against the real services (in demo mode, "
                                           "against fresh simulators) and say in plain words what is wrong")
    doctor.add_argument("--connect", action="store_true",
                        help="also open one real conversation with the agent and hang up at once")
    doctor.set_defaults(func=cmd_doctor)
    reap = sub.add_parser("reap", help="list and stop avatar sessions left running by a relay that died")
    reap.add_argument("--dry-run", action="store_true", help="only list them")
    reap.add_argument("--journal-only", action="store_true",
                      help="only the sessions journaled by dead relays here, not every running session on the "
                           "account (use this when other deployments share the API key)")
    reap.set_defaults(func=cmd_reap)
    token = sub.add_parser("token", help="mint a client token (an HS256 JWT) signed with RELAY_AUTH_SECRET")
    token.add_argument("--ttl", type=float, default=300.0, help="seconds of validity (default 300)")
    token.add_argument("--subject", default="", help="who it is for, the `sub` claim and the agent's user_id "
                       "(A-Z a-z 0-9 _ . @ | : + = -, at most 128; default: a made-up anonymous-<hex>); every token "
                       "also gets its own `jti` and buys one conversation (RELAY_TOKEN_MAX_CONVERSATIONS)")
    token.set_defaults(func=cmd_token)
    return parser


def cmd_reap(args: argparse.Namespace) -> int:
    import httpx2

    from relay.ops import journal as jr
    from relay.ops import reaper
    from relay.ops.fleet import Fleet, FleetUnavailable
    from relay.ops.fleet_sessions import FleetSessions, SessionEntry
    from relay.providers import table as providers

    settings = _settings_or_report()
    if settings is None:
        return 2
    if settings.demo_mode:
        print("demo mode: simulated sessions end with the relay; nothing to reap")
        return 0

    async def main() -> int:
        try:
            journal = await jr.open_journal_now(jr.state_dir(settings)) if settings.relay_journal else None
        except jr.JournalUnusable as exc:
            print(f"avatar-relay: {exc}", file=sys.stderr)
            return 1
        try:
            async with httpx2.AsyncClient(timeout=10.0) as http:
                fleet = Fleet.from_settings(settings)
                if fleet is None:
                    return await sweep(http, journal, None)
                # With a fleet: join it (a lease of its own, so a claim this command holds is taken over if it
                # dies) and ask its registry which sessions live relays hold.
                status = 1
                try:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(fleet.serve)

                        async def stop(entry: SessionEntry) -> None:
                            await providers.stop_by_id(settings, http, entry.provider, entry.session_id,
                                                       entry.base_url)

                        status = await sweep(http, journal, FleetSessions(fleet, stop))
                        nursery.cancel_scope.cancel()
                except* FleetUnavailable as group:
                    print(f"avatar-relay: {leaves(group)[0]}", file=sys.stderr)
                return status
        finally:
            if journal is not None:
                journal.close()

    async def sweep(http: httpx2.AsyncClient, journal: jr.Journal | None, fleet: FleetSessions | None) -> int:
        try:
            orphans = await reaper.find_orphans(settings, http, journal, journal_only=args.journal_only,
                                                fleet=fleet)
        except (AvatarError, FleetUnavailable) as exc:
            print(f"avatar-relay: {getattr(exc, 'message', exc)}", file=sys.stderr)
            return 1
        for orphan in orphans:
            print(f"{orphan.provider} {orphan.session_id} ({orphan.source})")
        if not orphans:
            print("no orphaned sessions")
        if args.dry_run or not orphans:
            return 0
        result = await reaper.reap(settings, http, journal, orphans, fleet)
        print(f"stopped {len(result.stopped)}, failed {len(result.failed)}"
              + (": " + " ".join(result.failed) if result.failed else ""))
        return 1 if result.failed else 0

    return trio.run(main)


def cmd_token(args: argparse.Namespace) -> int:
    import secrets

    from relay.server.auth import mint_jwt

    settings = _settings_or_report()
    if settings is None:
        return 2
    if settings.relay_auth_secret is None:
        print("avatar-relay: set RELAY_AUTH_SECRET first (e.g. `python -c 'import secrets; "
              "print(secrets.token_urlsafe(32))'`)", file=sys.stderr)
        return 2
    try:
        print(mint_jwt(settings.relay_auth_secret.get_secret_value(), ttl=args.ttl,
                       subject=args.subject or f"anonymous-{secrets.token_hex(8)}"))
    except ValueError as exc:
        print(f"avatar-relay: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["serve", *(argv or [])])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
