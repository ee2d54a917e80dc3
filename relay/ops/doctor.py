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
from dataclasses import dataclass
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
from relay.providers.table import chosen, chosen_name, listed

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
            found.append(ok(service, f"user input format {input_name} (the page records at "
                                     f"{input_format.sample_rate} Hz; the relay encodes it to {input_name})."))
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
    found.extend(client_event_findings(dig(config, "conversation", "client_events")))
    return found


# The agent's `client_events` (Advanced → Client events): a real agent sends only these unless its list adds more
# (asyncapi `ConversationConfigOverride.client_events`: "If not specified, defaults to ...").
DEFAULT_CLIENT_EVENTS: tuple[str, ...] = ("audio", "interruption", "agent_response", "user_transcript",
                                          "tentative_user_transcript", "conversation_initiation_metadata", "ping")


@dataclass(frozen=True, slots=True)
class EventFeature:
    """A relay feature that needs agent events beyond the default list: any one of `events` is enough."""

    events: tuple[str, ...]
    feature: str
    without: str


# docs/deploy.md "The agent's client events" has the same table.
EVENT_FEATURES: tuple[EventFeature, ...] = (
    EventFeature(("agent_chat_response_part",), "streaming replies",
                 "the reply's text appears whole, when the agent has finished composing it"),
    EventFeature(("agent_tool_request", "agent_tool_response", "agent_tool_response_full_payload"), "tool status",
                 "the page never shows that the agent is using a tool"),
    EventFeature(("mcp_tool_call",), "MCP approvals",
                 "the user is never asked to approve an MCP tool call"),
    EventFeature(("agent_response_correction",), "corrections",
                 "after an interruption the transcript keeps the words the agent did not say"),
    EventFeature(("client_tool_call",), "client tools",
                 "the page's client tools are never called"),
    EventFeature(("vad_score",), "the listening pose",
                 "the avatar starts listening only at the first tentative transcript, not when the user starts"),
    EventFeature(("guardrail_triggered",), "guardrail notices",
                 "the page is not told when a guardrail stops the agent"),
)


# Every event some relay feature uses (a demanding agent's list adds these to the defaults).
ALL_FEATURE_EVENTS: tuple[str, ...] = tuple(dict.fromkeys(e for f in EVENT_FEATURES for e in f.events))


def enabled_client_events(configured: Any) -> frozenset[str]:
    """The events an agent sends: its `client_events` list, or the default list when it has none."""
    if isinstance(configured, list) and configured:
        return frozenset(str(event) for event in configured)
    return frozenset(DEFAULT_CLIENT_EVENTS)


def client_event_findings(configured: Any) -> list[Finding]:
    """One note per relay feature the agent's `client_events` leave out, with the exact setting to change."""
    events = enabled_client_events(configured)
    missing = [f for f in EVENT_FEATURES if not events & set(f.events)]
    if not missing:
        return [ok("ElevenLabs", "the agent sends every client event the relay's features use.")]
    return [note("ElevenLabs", f"{f.feature} — lost without {' or '.join(f.events)} in the agent's client events: "
                               f"{f.without}. Add it in the agent's settings (Advanced → Client events; API: "
                               "conversation_config.conversation.client_events).")
            for f in missing]


def mcp_server_ids(body: bytes) -> list[str]:
    """The MCP servers an agent's prompt uses (`conversation_config.agent.prompt.mcp_server_ids`)."""
    ids = dig(_json(body), "conversation_config", "agent", "prompt", "mcp_server_ids")
    return [str(i) for i in ids] if isinstance(ids, list) else []


def mcp_server_requires_approval(payload: Any) -> bool:
    """`GET /v1/convai/mcp-servers/{id}`: whether any of its tools waits for the user's approval
    (`config.approval_policy`: `require_approval_all`, or `require_approval_per_tool` with a tool marked
    `requires_approval`)."""
    policy = dig(payload, "config", "approval_policy")
    if policy == "require_approval_all":
        return True
    if policy == "require_approval_per_tool":
        hashes = dig(payload, "config", "tool_approval_hashes")
        return any(isinstance(h, Mapping) and h.get("approval_policy") == "requires_approval"
                   for h in (hashes if isinstance(hashes, list) else []))
    return False


def mcp_findings(agent_body: bytes, servers: Mapping[str, tuple[int, bytes]]) -> list[Finding]:
    """An MCP server whose tools need approval while the agent does not send `mcp_tool_call` is a problem: the
    agent would wait (300 s by default) for an approval nobody can give. `servers`: id -> (status, body)."""
    service = "ElevenLabs"
    events = enabled_client_events(dig(_json(agent_body), "conversation_config", "conversation", "client_events"))
    found: list[Finding] = []
    for server_id, (status, body) in servers.items():
        payload = _json(body)
        if status != 200 or not isinstance(payload, Mapping):
            found.append(note(service, f"the agent's MCP server {server_id} could not be read (HTTP {status}); "
                                       "its approval policy is unknown."))
            continue
        name = dig(payload, "config", "name") or server_id
        if not mcp_server_requires_approval(payload):
            continue
        if "mcp_tool_call" in events:
            found.append(ok(service, f"the MCP server {name} asks the user to approve tool calls; the agent sends "
                                     "mcp_tool_call, so the page can ask."))
        else:
            found.append(problem(service, f"the MCP server {name} requires approval of its tool calls but the agent "
                                          "does not send mcp_tool_call: every such call waits for an approval "
                                          "nobody can give. Add mcp_tool_call to the agent's client events, or set "
                                          "the server's approval policy to auto_approve_all."))
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
        found.extend(await _check_mcp_servers(settings, http, key, response.content))
        error: el.AgentUnavailable | None = None
        try:
            with trio.fail_after(CHECK_TIMEOUT):
                await fetch_signed_url(http, settings.elevenlabs_base_url, key, agent_id,
                                       branch_id=settings.elevenlabs_branch_id,
                                       environment=settings.elevenlabs_environment)
        except el.AgentUnavailable as exc:
            error = exc
        except trio.TooSlowError:
            error = el.AgentUnavailable("timeout", "timed out fetching the signed URL")
        found.extend(signed_url_findings(error))
    if connect:
        found.extend(await _try_conversation(settings, http, key))
    return found


async def _check_mcp_servers(settings: Settings, http: httpx2.AsyncClient, key: str,
                             agent_body: bytes) -> list[Finding]:
    """Read each MCP server the agent uses (`GET /v1/convai/mcp-servers/{id}`) for its approval policy."""
    servers: dict[str, tuple[int, bytes]] = {}
    for server_id in mcp_server_ids(agent_body):
        try:
            answer = await _get(http, el.mcp_server_url(settings.elevenlabs_base_url, server_id), {"xi-api-key": key})
        except httpx2.HTTPError as exc:
            return [_unreachable("ElevenLabs", "ELEVENLABS_BASE_URL", exc)]
        servers[server_id] = (answer.status_code, answer.content)
    return mcp_findings(agent_body, servers)


async def _try_conversation(settings: Settings, http: httpx2.AsyncClient, key: str | None) -> list[Finding]:
    service = "ElevenLabs"
    try:
        # Opened exactly as the relay opens its conversations (relay.nursery `_hold_agent`): the same branch,
        # environment, source and version, so a branch or environment mistake shows here.
        async with open_agent(http, base_url=settings.elevenlabs_base_url, agent_id=settings.elevenlabs_agent_id
                                 or "", api_key=key, initiation=el.build_initiation(source_version=__version__),
                                 connect_timeout=settings.relay_setup_timeout,
                                 branch_id=settings.elevenlabs_branch_id, environment=settings.elevenlabs_environment,
                                 version=__version__) as agent:
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
    providers = listed(settings)

    async def run(name: str, check: Any) -> None:
        results[name] = await check

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "elevenlabs", check_elevenlabs(settings, http, connect=connect))
        for provider in providers:  # every provider of RELAY_AVATAR's list, each with its own key and account
            nursery.start_soon(run, "avatar:" + provider.name, check_avatar(settings, http, provider))
        if settings.relay_redis_url is not None:
            nursery.start_soon(run, "redis", check_redis(settings))
    found = list(results["elevenlabs"])
    for provider in providers:
        found += results["avatar:" + provider.name]
    found += results.get("redis", []) + journal_findings(settings)
    if not providers:
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
