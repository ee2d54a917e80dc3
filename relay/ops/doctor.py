"""`avatar-relay doctor`: check a configuration against the real services and say, in plain words, what is wrong.

Checks, in order: ElevenLabs (the API key is accepted, the agent exists, its audio formats are ones the relay can
use, a signed conversation URL can be had; with `--connect`, a real conversation opens and is hung up at once), then
the configured avatar provider (the API key is accepted, the avatar exists and is active, how many sessions run on
the account now), with RELAY_REDIS_URL the fleet's Redis (reachable, version, round trip, the lease key
writable), and the session journal's state directory (usable; any damaged journal moved aside there). Each check
gives `Finding`s: `ok`, `problem` (the relay will not work as configured) or `note` (worth knowing). Any problem
makes the exit status 1.

The answers are read by plain functions (`agent_findings` here, each provider's in its declaration,
`relay.providers.<name>`) with no I/O, tested on their own; `run_checks` does the HTTP calls around them, the avatar
provider's through one skeleton (`check_avatar`) that its declaration fills in. Nothing here changes the account:
it only reads, except `--connect`, which opens (and at once closes) one agent conversation. It must never print
or log an API key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import httpx2
import orjson
import trio

from relay import __version__
from relay.config import Settings
from relay.elevenlabs import fetch_signed_url, open_agent
from relay.protocol import elevenlabs as el
from relay.protocol.audio import parse_format
from relay.providers.entry import Provider
from relay.providers.findings import CHECK_TIMEOUT, Finding, Level, dig, note, ok, problem
from relay.providers.table import chosen, chosen_name

__all__ = ["CHECK_TIMEOUT", "Finding", "Level", "agent_findings", "check_avatar", "check_elevenlabs", "check_redis",
           "diagnose", "format_report", "journal_findings", "note", "ok", "problem", "run_checks",
           "signed_url_findings"]


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def _detail(payload: Any) -> str:
    """ElevenLabs' error body: `{"detail": {"status", "message"}}` or `{"detail": "..."}`."""
    detail = payload.get("detail") if isinstance(payload, Mapping) else None
    if isinstance(detail, Mapping):
        return str(detail.get("message") or detail.get("status") or "")
    return detail if isinstance(detail, str) else ""


# ----------------------------------------------------------------------------------------------------------------------
# Reading the answers (no I/O)


def agent_findings(status: int, body: bytes, agent_id: str) -> list[Finding]:
    """`GET /v1/convai/agents/{id}`: key accepted? agent exists? formats usable?"""
    service = "ElevenLabs"
    payload = _json(body)
    if status in (401, 403):
        why = _detail(payload)
        return [problem(service, f"ELEVENLABS_API_KEY was refused (HTTP {status}{': ' + why if why else ''}). "
                                 "Check the key, and that it has the Conversational AI (agents) permission.")]
    if status == 404:
        return [problem(service, f"the agent ELEVENLABS_AGENT_ID={agent_id} does not exist on this account "
                                 "(check the id in the agent's settings, and the region: ELEVENLABS_BASE_URL).")]
    if status != 200 or not isinstance(payload, Mapping):
        return [problem(service, f"reading the agent's configuration failed: HTTP {status}"
                                 f"{': ' + _detail(payload) if _detail(payload) else ''}.")]
    found = [ok(service, f"the API key is accepted and the agent {agent_id} exists"
                         f"{' (' + str(payload['name']) + ')' if payload.get('name') else ''}.")]
    config = payload.get("conversation_config")
    input_name = dig(config, "asr", "user_input_audio_format") or "pcm_16000"
    output_name = dig(config, "tts", "agent_output_audio_format") or "pcm_16000"
    try:
        input_format = parse_format(str(input_name))
    except ValueError:
        found.append(problem(service, f"the agent's user input format {input_name!r} is not one the relay knows."))
    else:
        if input_format.encoding != "pcm":
            found.append(problem(service, f"the agent expects {input_name} input; the relay sends PCM only. Set the "
                                          "agent's user input audio format to pcm_16000 (Voice / Advanced)."))
        else:
            found.append(ok(service, f"user input format {input_name} (the page records at that rate)."))
    try:
        parse_format(str(output_name))
    except ValueError:
        found.append(problem(service, f"the agent's output format {output_name!r} is not one the relay knows."))
    else:
        found.append(ok(service, f"agent output format {output_name}."))
    if dig(payload, "platform_settings", "auth", "enable_auth"):
        found.append(note(service, "the agent is private: every conversation needs a signed URL (the relay gets "
                                   "one per conversation with the API key)."))
    return found


def signed_url_findings(error: el.AgentUnavailable | None) -> list[Finding]:
    if error is None:
        return [ok("ElevenLabs", "a signed conversation URL was issued.")]
    return [problem("ElevenLabs", f"no signed conversation URL: {error}.")]


# ----------------------------------------------------------------------------------------------------------------------
# The calls


async def _get(http: httpx2.AsyncClient, url: str, headers: dict[str, str],
               params: dict[str, Any] | None = None) -> httpx2.Response:
    return await http.get(url, headers={"accept": "application/json", **headers}, params=params,
                          timeout=CHECK_TIMEOUT)


def _unreachable(service: str, variable: str, exc: httpx2.HTTPError) -> Finding:
    kind = "timed out" if isinstance(exc, httpx2.TimeoutException) else f"failed ({type(exc).__name__})"
    return problem(service, f"cannot reach {variable}: the request {kind}. Check the URL and the network.")


async def check_elevenlabs(settings: Settings, http: httpx2.AsyncClient, *, connect: bool = False) -> list[Finding]:
    service = "ElevenLabs"
    agent_id = settings.elevenlabs_agent_id
    if not agent_id:
        return [problem(service, "ELEVENLABS_AGENT_ID is not set.")]
    key = settings.elevenlabs_api_key.get_secret_value() if settings.elevenlabs_api_key else None
    found: list[Finding] = []
    if key is None:
        found.append(note(service, "no ELEVENLABS_API_KEY: the agent must be public, and its configuration cannot "
                                   "be read here (use --connect to try a real conversation)."))
    else:
        try:
            response = await _get(http, el.agent_details_url(settings.elevenlabs_base_url, agent_id),
                                  {"xi-api-key": key})
        except httpx2.HTTPError as exc:
            return [_unreachable(service, "ELEVENLABS_BASE_URL", exc)]
        found.extend(agent_findings(response.status_code, response.content, agent_id))
        if not any(f.level == "ok" for f in found):
            return found  # the key or the agent is wrong: the signed URL would fail for the same reason
        error: el.AgentUnavailable | None = None
        try:
            with trio.fail_after(CHECK_TIMEOUT):
                await fetch_signed_url(http, settings.elevenlabs_base_url, key, agent_id)
        except el.AgentUnavailable as exc:
            error = exc
        except trio.TooSlowError:
            error = el.AgentUnavailable("timeout", "timed out fetching the signed URL")
        found.extend(signed_url_findings(error))
    if connect:
        found.extend(await _try_conversation(settings, http, key))
    return found


async def _try_conversation(settings: Settings, http: httpx2.AsyncClient, key: str | None) -> list[Finding]:
    service = "ElevenLabs"
    try:
        async with open_agent(http, base_url=settings.elevenlabs_base_url, agent_id=settings.elevenlabs_agent_id
                                 or "", api_key=key, initiation=el.build_initiation(),
                                 connect_timeout=settings.relay_setup_timeout) as agent:
            metadata = agent.metadata
    except el.AgentUnavailable as exc:
        return [problem(service, f"a conversation could not be opened: {exc}.")]
    except el.AgentRefused as exc:
        return [problem(service, f"the agent refused a plain conversation: {exc.message} (close "
                                 f"{exc.close_code} {exc.close_reason}).".replace(" )", ")"))]
    except el.AgentClosed as exc:
        return [problem(service, f"the agent closed the conversation at once ({exc.code} {exc.reason}); an "
                                 "'override_error' means the agent does not allow the overrides sent.")]
    except el.AgentProtocolError as exc:
        return [problem(service, f"the agent broke the protocol: {exc}.")]
    return [ok(service, f"a conversation opened ({metadata.conversation_id}; input "
                        f"{metadata.user_input_audio_format}, output {metadata.agent_output_audio_format}) and was "
                        "hung up.")]


async def check_avatar(settings: Settings, http: httpx2.AsyncClient, provider: Provider) -> list[Finding]:
    """The one skeleton of every provider's account check, filled in by its declaration (`AccountCheck`): the key
    is set; the provider's notes; its steps in order, until one says stop or the base URL cannot be reached. Only
    reads."""
    service, check, names = provider.title, provider.doctor, provider.settings
    if getattr(settings, names.api_key) is None:
        return [problem(service, f"{names.key_variable} is not set.")]
    found = list(check.notes)
    for step in check.steps:
        try:
            found.extend(await step(settings, http))
        except httpx2.HTTPError as exc:
            return [*found, _unreachable(service, names.base_url_variable, exc)]
        if not check.go_on(found):
            break
    return found


async def check_redis(settings: Settings) -> list[Finding]:
    """The fleet's Redis (RELAY_REDIS_URL): reachable, its version, the round trip, the lease key writable."""
    from relay.ops.fleet import FleetUnavailable
    from relay.ops.fleet_probe import MIN_MAJOR_VERSION, probe

    try:
        found = await probe(settings)
    except FleetUnavailable as exc:
        return [problem("Redis", f"unreachable: {exc}. The relay will not start until it answers "
                                 "(RELAY_REDIS_URL).")]
    result = [ok("Redis", f"reachable at {found.where}, round trip {found.round_trip_ms:.2f} ms.")]
    if found.version_ok:
        result.append(ok("Redis", f"version {found.version}."))
    else:
        result.append(problem("Redis", f"version {found.version}: the fleet's admission scripts need Redis "
                                       f"{MIN_MAJOR_VERSION} or later."))
    if found.write_problem is None:
        result.append(ok("Redis", "this relay's lease key can be written."))
    else:
        result.append(problem("Redis", f"the lease key cannot be written ({found.write_problem}): check the "
                                       "user's permissions (ACL) and that this is not a read-only replica."))
    if found.round_trip_ms > 20:
        result.append(note("Redis", "the round trip is over 20 ms: every conversation's admission waits for a few "
                                    "of them; put Redis near the relays."))
    return result


def journal_findings(settings: Settings) -> list[Finding]:
    """The session journal's state directory (local, no I/O beyond listing it): damaged journals moved aside at a
    start-up (each a problem until the operator has reaped and deleted it), a directory this user cannot write."""
    from relay.ops.journal import damaged_journals, state_dir

    if not settings.relay_journal or chosen(settings) is None or settings.demo_mode:
        return []
    directory = state_dir(settings)
    found = [problem("journal", f"a damaged session journal was moved aside to {moved} at a start-up: avatar "
                                "sessions it listed may still be running (and billing). Run `avatar-relay reap` "
                                f"(it also asks the provider's own list), then delete {moved.name}.")
             for moved in damaged_journals(directory)]
    existing = next((d for d in (directory, *directory.parents) if d.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        found.append(problem("journal", f"the state directory {directory} (RELAY_STATE_DIR) cannot be created or "
                                        "written by this user: the relay will not start."))
    elif not found:
        found.append(ok("journal", f"the session journal's directory {directory} is usable; no damaged journal "
                                   "lies there."))
    return found


async def run_checks(settings: Settings, http: httpx2.AsyncClient, *, connect: bool = False) -> list[Finding]:
    """Every check for `settings`, ElevenLabs and the avatar provider concurrently. Only reads (see --connect)."""
    results: dict[str, list[Finding]] = {}
    provider = chosen(settings)

    async def run(name: str, check: Any) -> None:
        results[name] = await check

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "elevenlabs", check_elevenlabs(settings, http, connect=connect))
        if provider is not None:
            nursery.start_soon(run, "avatar", check_avatar(settings, http, provider))
        if settings.relay_redis_url is not None:
            nursery.start_soon(run, "redis", check_redis(settings))
    found = results["elevenlabs"] + results.get("avatar", []) + results.get("redis", []) + journal_findings(settings)
    if provider is None:
        found.append(note("configuration", "RELAY_AVATAR=none: voice only, no avatar is checked."))
    return found


_MARKS = {"ok": "ok     ", "problem": "PROBLEM", "note": "note   "}


def format_report(findings: list[Finding]) -> str:
    lines = [f"{_MARKS[f.level]} {f.service}: {f.text}" for f in findings]
    problems = sum(1 for f in findings if f.level == "problem")
    lines.append(f"{problems} problem(s) found." if problems else "No problems found.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# The command


async def diagnose(settings: Settings, *, connect: bool = False, demo: bool = False) -> tuple[str, list[Finding]]:
    """Run the checks; `demo`: `settings` point at freshly started simulators (said in the header). Returns the
    header line and the findings."""
    async with httpx2.AsyncClient(headers={"user-agent": f"avatar-relay-doctor/{__version__}"}) as http:
        if demo:
            header = ("Demo mode (no API keys set): checking against freshly started simulators, not the real "
                      "services.")
        else:
            header = (f"Checking ElevenLabs ({settings.elevenlabs_base_url}) and the avatar provider "
                      f"({chosen_name(settings)}).")
        return header, await run_checks(settings, http, connect=connect)
