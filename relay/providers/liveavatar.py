"""LiveAvatar (LITE mode), declared once: its settings, client (`relay.liveavatar`), operator calls, doctor check,
simulator and page transport."""

from __future__ import annotations

from typing import Any

import httpx2

from relay import liveavatar
from relay.config import Settings
from relay.protocol import liveavatar as liveavatar_protocol
from relay.protocol.liveavatar import AVATAR_PARTICIPANT, SANDBOX_AVATAR_ID
from relay.providers.entry import AccountCheck, PageTransport, Provider, ProviderSettings, Requirement, SessionLimit
from relay.providers.findings import (
    CHECK_TIMEOUT,
    Finding,
    dig,
    key_refused,
    note,
    ok,
    problem,
    sessions_note,
)
from relay.sim import liveavatar_sim

SERVICE = "LiveAvatar"
DEMO_AVATAR = "6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01"  # listed by the LiveAvatar simulator's /v1/avatars
SANDBOX_SESSION_SECONDS = 60.0  # a sandbox session ends after about one minute (docs.liveavatar.com)


def session_seconds(settings: Settings) -> float:
    """How long a session lives: the sandbox's minute, else the length asked (LIVEAVATAR_MAX_SESSION_DURATION)."""
    return SANDBOX_SESSION_SECONDS if settings.liveavatar_sandbox else float(settings.liveavatar_session_duration)


def avatar_findings(status: int, body: bytes, avatar_id: str, sandbox: bool) -> list[Finding]:
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
    state = str(dig(data, "status") or "ACTIVE")
    name = dig(data, "name")
    if state.upper() != "ACTIVE":
        found.append(problem(service, f"the avatar {avatar_id} exists but its status is {state} (it must be ACTIVE; "
                                      "INIT and DEPLOYING avatars are not ready yet)."))
    else:
        found.append(ok(service, f"the avatar {avatar_id}{' (' + str(name) + ')' if name else ''} exists and is "
                                 "active."))
    if sandbox:
        found.append(note(service, "sandbox mode: sessions are free but end after about one minute."))
    return found


def sessions_findings(status: int, body: bytes) -> list[Finding]:
    """`GET /v1/sessions?type=active`: how many sessions run on the account now."""
    try:
        data = liveavatar_protocol.read_answer(status, body)
    except liveavatar_protocol.ApiError as exc:
        return [problem("LiveAvatar", f"listing the active sessions failed: HTTP {exc.status}: {exc.message}.")]
    count = dig(data, "count")
    if not isinstance(count, int):
        results = dig(data, "results")
        count = len(results) if isinstance(results, list) else 0
    return [sessions_note("LiveAvatar", count, "a relay that is not running now should have none; "
                                                "`avatar-relay reap` stops leftovers")]


def _avatar_id(settings: Settings) -> str:
    return settings.liveavatar_avatar_id or SANDBOX_AVATAR_ID


async def _get(settings: Settings, http: httpx2.AsyncClient, path: str,
               params: dict[str, Any] | None = None) -> httpx2.Response:
    assert settings.liveavatar_api_key is not None
    return await http.get(settings.liveavatar_base_url.rstrip("/") + path, params=params, timeout=CHECK_TIMEOUT,
                          headers={"accept": "application/json",
                                   "X-API-KEY": settings.liveavatar_api_key.get_secret_value()})


async def avatar_step(settings: Settings, http: httpx2.AsyncClient) -> list[Finding]:
    """`GET /v1/avatars/{id}`: the key, and the avatar (or the sandbox's)."""
    response = await _get(settings, http, f"/v1/avatars/{_avatar_id(settings)}")
    return avatar_findings(response.status_code, response.content, _avatar_id(settings), settings.liveavatar_sandbox)


async def running_sessions(settings: Settings, http: httpx2.AsyncClient) -> list[Finding]:
    """`GET /v1/sessions?type=active`: how many sessions run on the account now."""
    response = await _get(settings, http, "/v1/sessions", {"type": "active", "page": 1, "page_size": 1})
    return sessions_findings(response.status_code, response.content)


PROVIDER = Provider(
    name="liveavatar",
    title=SERVICE,
    settings=ProviderSettings(
        api_key="liveavatar_api_key", base_url="liveavatar_base_url",
        required=(Requirement("liveavatar_avatar_id", "LIVEAVATAR_AVATAR_ID (or LIVEAVATAR_SANDBOX=true)",
                              unless="liveavatar_sandbox"),),
        session_limit=SessionLimit("liveavatar_max_session_duration", "raise it (within your LiveAvatar plan's limit)"),
        demo={"liveavatar_avatar_id": DEMO_AVATAR}),
    make=liveavatar.LiveAvatarProvider,
    list_running_ids=liveavatar.list_running_ids,
    stop_by_id=liveavatar.stop_by_id,
    doctor=AccountCheck(steps=(avatar_step, running_sessions), go_on=lambda found: not key_refused(found)),
    simulator=liveavatar_sim.create_app,
    page=PageTransport("livekit", participant=AVATAR_PARTICIPANT),
    session_seconds=session_seconds,
    simulator_session_limit="sandbox_duration_s",  # the sandbox's minute (the simulator reports it at start)
)
