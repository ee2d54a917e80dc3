"""`avatar-relay doctor`: check a configuration against the real services and say, in plain words, what is wrong.

Checks, in order: ElevenLabs (the API key is accepted, the agent exists, its audio formats are ones the relay can
use, a signed conversation URL can be had; with `--connect`, a real conversation opens and is hung up at once), then
the configured avatar provider (the API key is accepted, the avatar exists and is active, how many sessions run on
the account now), with RELAY_REDIS_URL the fleet's Redis (reachable, version, round trip, the lease key
writable), and the session journal's state directory (usable; any damaged journal moved aside there). Each check
gives `Finding`s: `ok`, `problem` (the relay will not work as configured) or `note` (worth knowing). Any problem
makes the exit status 1.

The answers are read by plain functions (`agent_findings`, `heygen_avatar_findings`, ...) with no I/O, tested on
their own; `run_checks` does the HTTP calls around them. Nothing here changes the account: it only reads, except
`--connect`, which opens (and at once closes) one agent conversation. It must never print or log an API key.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx2
import orjson
import trio

from relay import __version__
from relay.avatars import AvatarUnavailable, registry
from relay.config import Settings
from relay.elevenlabs import fetch_signed_url, open_agent
from relay.heygen import list_sessions
from relay.protocol import elevenlabs as el
from relay.protocol import heygen as heygen_protocol
from relay.protocol import liveavatar as liveavatar_protocol
from relay.protocol.audio import parse_format
from relay.protocol.liveavatar import SANDBOX_AVATAR_ID
from relay.simli import active_session_count, create_token

Level = Literal["ok", "problem", "note"]
CHECK_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    service: str  # "configuration", "ElevenLabs", "HeyGen", "LiveAvatar", "Redis", "journal"
    text: str


def ok(service: str, text: str) -> Finding:
    return Finding("ok", service, text)


def problem(service: str, text: str) -> Finding:
    return Finding("problem", service, text)


def note(service: str, text: str) -> Finding:
    return Finding("note", service, text)


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


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


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
    input_name = _dig(config, "asr", "user_input_audio_format") or "pcm_16000"
    output_name = _dig(config, "tts", "agent_output_audio_format") or "pcm_16000"
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
    if _dig(payload, "platform_settings", "auth", "enable_auth"):
        found.append(note(service, "the agent is private: every conversation needs a signed URL (the relay gets "
                                   "one per conversation with the API key)."))
    return found


def signed_url_findings(error: el.AgentUnavailable | None) -> list[Finding]:
    if error is None:
        return [ok("ElevenLabs", "a signed conversation URL was issued.")]
    return [problem("ElevenLabs", f"no signed conversation URL: {error}.")]


def heygen_avatar_findings(status: int, body: bytes, avatar_id: str | None) -> list[Finding]:
    """`GET /v1/streaming/avatar.list`: key accepted? avatar among the account's streaming avatars, active?"""
    service = "HeyGen"
    try:
        data = heygen_protocol.read_answer(status, body)
    except heygen_protocol.ApiError as exc:
        failure = exc.failure
        if (failure.code in heygen_protocol.NOT_STREAMING_ENABLED_CODES | heygen_protocol.NO_API_ACCESS_CODES
                or heygen_protocol.looks_retired(failure)):
            return [problem(service, f"{heygen_protocol.plain_words(failure)} (HTTP {failure.status}: "
                                     f"{failure.message}).")]
        if failure.status == 401 or failure.code == 40102:
            return [problem(service, f"HEYGEN_API_KEY was refused (HTTP {failure.status}: {failure.message}).")]
        return [problem(service, f"listing the streaming avatars failed: HTTP {failure.status}, code "
                                 f"{failure.code}: {failure.message}.")]
    avatars = data if isinstance(data, list) else _dig(data, "avatars") or []
    avatars = [a for a in avatars if isinstance(a, Mapping)]
    found = [ok(service, f"the API key is accepted ({len(avatars)} streaming avatars available).")]
    if not avatar_id:
        return [*found, problem(service, "HEYGEN_AVATAR_ID is not set.")]
    match = next((a for a in avatars if a.get("avatar_id") == avatar_id), None)
    if match is None:
        examples = ", ".join(str(a.get("avatar_id")) for a in avatars[:5])
        return [*found, problem(service, f"HEYGEN_AVATAR_ID={avatar_id} is not among this account's streaming "
                                         f"avatars{' (for example: ' + examples + ')' if examples else ''}.")]
    status_text = str(match.get("status") or "ACTIVE")
    if status_text.upper() != "ACTIVE":
        return [*found, problem(service, f"the avatar {avatar_id} exists but its status is {status_text}, not "
                                         "ACTIVE.")]
    return [*found, ok(service, f"the avatar {avatar_id} exists and is active.")]


def liveavatar_avatar_findings(status: int, body: bytes, avatar_id: str, sandbox: bool) -> list[Finding]:
    """`GET /v1/avatars/{id}`: key accepted? avatar exists, active? sandbox constraints."""
    service = "LiveAvatar"
    found: list[Finding] = []
    if sandbox and avatar_id != SANDBOX_AVATAR_ID:
        found.append(problem(service, f"LIVEAVATAR_SANDBOX=true only works with the sandbox avatar "
                                      f"{SANDBOX_AVATAR_ID}; unset LIVEAVATAR_AVATAR_ID or turn the sandbox off."))
    try:
        data = liveavatar_protocol.read_answer(status, body)
    except liveavatar_protocol.ApiError as exc:
        if exc.status == 401:
            return [*found, problem(service, f"LIVEAVATAR_API_KEY was refused (HTTP 401: {exc.message}). A HeyGen "
                                             "key does not work here: LiveAvatar has its own keys.")]
        if exc.status == 404:
            return [*found, problem(service, f"the avatar LIVEAVATAR_AVATAR_ID={avatar_id} does not exist (or is "
                                             "not visible to this key).")]
        return [*found, problem(service, f"reading the avatar failed: HTTP {exc.status}, code {exc.code}: "
                                         f"{exc.message}.")]
    found.append(ok(service, "the API key is accepted."))
    state = str(_dig(data, "status") or "ACTIVE")
    name = _dig(data, "name")
    if state.upper() != "ACTIVE":
        found.append(problem(service, f"the avatar {avatar_id} exists but its status is {state} (it must be ACTIVE; "
                                      "INIT and DEPLOYING avatars are not ready yet)."))
    else:
        found.append(ok(service, f"the avatar {avatar_id}{' (' + str(name) + ')' if name else ''} exists and is "
                                 "active."))
    if sandbox:
        found.append(note(service, "sandbox mode: sessions are free but end after about one minute."))
    return found


def liveavatar_sessions_findings(status: int, body: bytes) -> list[Finding]:
    """`GET /v1/sessions?type=active`: how many sessions run on the account now."""
    try:
        data = liveavatar_protocol.read_answer(status, body)
    except liveavatar_protocol.ApiError as exc:
        return [problem("LiveAvatar", f"listing the active sessions failed: HTTP {exc.status}: {exc.message}.")]
    count = _dig(data, "count")
    if not isinstance(count, int):
        results = _dig(data, "results")
        count = len(results) if isinstance(results, list) else 0
    return [_sessions_note("LiveAvatar", count, "a relay that is not running now should have none; "
                                                "`avatar-relay reap` stops leftovers")]


def _key_refused(found: list[Finding]) -> bool:
    return any(f.level == "problem" and "_API_KEY was refused" in f.text for f in found)


def _sessions_note(service: str, count: int, advice: str) -> Finding:
    if count == 0:
        return ok(service, "no sessions are running on the account now.")
    return note(service, f"{count} session(s) are running on the account now ({advice}).")


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


async def check_heygen(settings: Settings, http: httpx2.AsyncClient) -> list[Finding]:
    service = "HeyGen"
    if settings.heygen_api_key is None:
        return [problem(service, "HEYGEN_API_KEY is not set.")]
    headers = {"x-api-key": settings.heygen_api_key.get_secret_value()}
    base = settings.heygen_base_url.rstrip("/")
    retired = note(service, "HeyGen retired its Streaming API v1 on 2026-03-31 (public migration notes; HeyGen's "
                            "own docs call it legacy) and LiveAvatar is its successor: plan the move (LiveAvatar has "
                            "its own keys: LIVEAVATAR_API_KEY, LIVEAVATAR_AVATAR_ID; docs/deploy.md).")
    try:
        response = await _get(http, base + "/v1/streaming/avatar.list", headers)
    except httpx2.HTTPError as exc:
        return [retired, _unreachable(service, "HEYGEN_BASE_URL", exc)]
    found = [retired, *heygen_avatar_findings(response.status_code, response.content, settings.heygen_avatar_id)]
    if not any(f.level == "ok" for f in found):  # not even the key was accepted: listing would fail the same way
        return found
    try:
        with trio.fail_after(CHECK_TIMEOUT * 2):
            sessions = await list_sessions(settings, http)
    except trio.TooSlowError:
        found.append(problem(service, "listing the running sessions timed out."))
    except Exception as exc:  # AvatarUnavailable, with a safe message
        found.append(problem(service, f"listing the running sessions failed: {getattr(exc, 'message', exc)}"))
    else:
        found.append(_sessions_note(service, len(sessions), "HeyGen allows 100 at once on an API plan, 3 on a "
                                                            "trial key; `avatar-relay reap` stops leftovers"))
    return found


async def check_liveavatar(settings: Settings, http: httpx2.AsyncClient) -> list[Finding]:
    service = "LiveAvatar"
    if settings.liveavatar_api_key is None:
        return [problem(service, "LIVEAVATAR_API_KEY is not set.")]
    headers = {"X-API-KEY": settings.liveavatar_api_key.get_secret_value()}
    base = settings.liveavatar_base_url.rstrip("/")
    avatar_id = settings.liveavatar_avatar_id or SANDBOX_AVATAR_ID
    try:
        response = await _get(http, f"{base}/v1/avatars/{avatar_id}", headers)
    except httpx2.HTTPError as exc:
        return [_unreachable(service, "LIVEAVATAR_BASE_URL", exc)]
    found = liveavatar_avatar_findings(response.status_code, response.content, avatar_id,
                                       settings.liveavatar_sandbox)
    if _key_refused(found):
        return found
    try:
        response = await _get(http, base + "/v1/sessions", headers, {"type": "active", "page": 1, "page_size": 1})
    except httpx2.HTTPError as exc:
        return [*found, _unreachable(service, "LIVEAVATAR_BASE_URL", exc)]
    found.extend(liveavatar_sessions_findings(response.status_code, response.content))
    return found


async def check_simli(settings: Settings, http: httpx2.AsyncClient) -> list[Finding]:
    """The key (Simli's running-session count), then the face and both limits: a session token is asked with the
    very body the relay sends (`compose/token` checks the key, face, emotion and billing) and never used — a
    session, and its billing, starts only with the socket (docs/protocol.md), which the doctor never opens."""
    service = "Simli"
    if settings.simli_api_key is None:
        return [problem(service, "SIMLI_API_KEY is not set.")]
    if not settings.simli_face_id:
        return [problem(service, "SIMLI_FACE_ID is not set (a preset face such as "
                                 "cace3ef7-a4c4-425d-a8cf-a5358eb0c427, or one of your own from app.simli.com).")]
    found: list[Finding] = []
    try:
        with trio.fail_after(CHECK_TIMEOUT):
            count = await active_session_count(settings, http)
    except trio.TooSlowError:
        return [problem(service, "counting the running sessions timed out: check SIMLI_BASE_URL.")]
    except AvatarUnavailable as exc:
        if exc.reason == "unauthorized":
            return [problem(service, "SIMLI_API_KEY was refused (app.simli.com: API key).")]
        found.append(problem(service, f"counting the running sessions failed: {exc.message}"))
    else:
        found.append(_sessions_note(service, count, "Simli cannot stop a leftover by id: a crashed relay's "
                                                    "sessions end within SIMLI_MAX_IDLE_TIME"))
    face, length, idle = settings.simli_face_id, settings.simli_session_length, settings.simli_max_idle_time
    try:
        with trio.fail_after(CHECK_TIMEOUT):
            await create_token(settings, http)
    except trio.TooSlowError:
        found.append(problem(service, "asking for a session token timed out."))
    except AvatarUnavailable as exc:
        found.append(problem(service, f"a session with face {face} (maxSessionLength {length} s, maxIdleTime "
                                      f"{idle} s) is refused: {exc.message}"))
    else:
        found.append(ok(service, f"face {face} with maxSessionLength {length} s and maxIdleTime {idle} s is accepted "
                                 "(a session token was issued and left unused: no session was opened)."))
    return found


# The avatar checks, by the provider table's names (relay.avatars.registry): they speak the doctor's language
# (findings), so they live here rather than in the table.
AVATAR_CHECKS: dict[str, Callable[[Settings, httpx2.AsyncClient], Awaitable[list[Finding]]]] = {
    "heygen": check_heygen,
    "liveavatar": check_liveavatar,
    "simli": check_simli,
}


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

    if not settings.relay_journal or settings.avatar == "none" or settings.demo_mode:
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

    async def run(name: str, check: Any) -> None:
        results[name] = await check

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "elevenlabs", check_elevenlabs(settings, http, connect=connect))
        if settings.avatar != "none":
            nursery.start_soon(run, "avatar", AVATAR_CHECKS[registry.entry_for(settings.avatar).name](settings, http))
        if settings.relay_redis_url is not None:
            nursery.start_soon(run, "redis", check_redis(settings))
    found = results["elevenlabs"] + results.get("avatar", []) + results.get("redis", []) + journal_findings(settings)
    if settings.avatar == "none":
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
                      f"({settings.avatar}).")
        return header, await run_checks(settings, http, connect=connect)
