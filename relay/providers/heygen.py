"""HeyGen Streaming API v1 (retired upstream on 2026-03-31; kept for accounts that still have it), declared once:
its settings, client (`relay.heygen`), operator calls, doctor check, simulator and page transport."""

from __future__ import annotations

from collections.abc import Mapping

import httpx2
import trio

from relay import heygen
from relay.config import Settings
from relay.protocol import heygen as heygen_protocol
from relay.providers.entry import AccountCheck, PageTransport, Provider, ProviderSettings, Requirement
from relay.providers.findings import CHECK_TIMEOUT, Finding, any_ok, dig, note, ok, problem, sessions_note
from relay.sim import heygen_sim

SERVICE = "HeyGen"
DEMO_AVATAR = "Wayne_20240711"  # listed by the HeyGen simulator's avatar.list


def avatar_findings(status: int, body: bytes, avatar_id: str | None) -> list[Finding]:
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
    avatars = data if isinstance(data, list) else dig(data, "avatars") or []
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


async def avatar_step(settings: Settings, http: httpx2.AsyncClient) -> list[Finding]:
    """`GET /v1/streaming/avatar.list`: the key, and the avatar among the account's streaming avatars."""
    assert settings.heygen_api_key is not None
    response = await http.get(settings.heygen_base_url.rstrip("/") + "/v1/streaming/avatar.list", timeout=CHECK_TIMEOUT,
                              headers={"accept": "application/json",
                                       "x-api-key": settings.heygen_api_key.get_secret_value()})
    return avatar_findings(response.status_code, response.content, settings.heygen_avatar_id)


async def running_sessions(settings: Settings, http: httpx2.AsyncClient) -> list[Finding]:
    """How many sessions run on the account now (the client's paginated list, bounded)."""
    try:
        with trio.fail_after(CHECK_TIMEOUT * 2):
            sessions = await heygen.list_sessions(settings, http)
    except trio.TooSlowError:
        return [problem(SERVICE, "listing the running sessions timed out.")]
    except Exception as exc:  # AvatarUnavailable, with a safe message
        return [problem(SERVICE, f"listing the running sessions failed: {getattr(exc, 'message', exc)}")]
    return [sessions_note(SERVICE, len(sessions), "HeyGen allows 100 at once on an API plan, 3 on a trial key; "
                                                  "`avatar-relay reap` stops leftovers")]


RETIRED = note(SERVICE, "HeyGen retired its Streaming API v1 on 2026-03-31 (public migration notes; HeyGen's own "
                        "docs call it legacy) and LiveAvatar is its successor: plan the move (LiveAvatar has its "
                        "own keys: LIVEAVATAR_API_KEY, LIVEAVATAR_AVATAR_ID; docs/deploy.md).")

PROVIDER = Provider(
    name="heygen",
    title=SERVICE,
    settings=ProviderSettings(api_key="heygen_api_key", base_url="heygen_base_url",
                              required=(Requirement("heygen_avatar_id", "HEYGEN_AVATAR_ID"),),
                              demo={"heygen_avatar_id": DEMO_AVATAR}),
    make=heygen.HeyGenProvider,
    list_running_ids=heygen.list_running_ids,
    stop_by_id=heygen.stop_by_id,
    doctor=AccountCheck(
        steps=(avatar_step, running_sessions),
        go_on=any_ok,  # not even the key was accepted: listing would fail the same way
        notes=(RETIRED,),
    ),
    simulator=heygen_sim.create_app,
    page=PageTransport("livekit"),  # the avatar is the room's only other participant
)
