"""Simli, declared once: its settings, client (`relay.simli`), operator calls (Simli has no list of sessions nor a
stop by id: a crashed relay's sessions end within SIMLI_MAX_IDLE_TIME), doctor check, simulator and page transport.
"""

from __future__ import annotations

import httpx2
import trio

from relay import simli
from relay.avatars import AvatarUnavailable
from relay.config import Settings
from relay.providers.entry import AccountCheck, PageTransport, Provider, ProviderSettings, Requirement, SessionLimit
from relay.providers.findings import CHECK_TIMEOUT, Finding, ok, problem, sessions_note
from relay.sim import simli_sim

SERVICE = "Simli"
DEMO_FACE = "cace3ef7-a4c4-425d-a8cf-a5358eb0c427"  # a Simli preset face, known to the Simli simulator


async def face_step(settings: Settings, http: httpx2.AsyncClient) -> list[Finding]:
    """The face must be set (nothing else can be checked without it)."""
    if settings.simli_face_id:
        return []
    return [problem(SERVICE, "SIMLI_FACE_ID is not set (a preset face such as "
                             f"{DEMO_FACE}, or one of your own from app.simli.com).")]


async def running_sessions(settings: Settings, http: httpx2.AsyncClient) -> list[Finding]:
    """The key, through Simli's running-session count."""
    try:
        with trio.fail_after(CHECK_TIMEOUT):
            count = await simli.active_session_count(settings, http)
    except trio.TooSlowError:
        return [problem(SERVICE, "counting the running sessions timed out: check SIMLI_BASE_URL.")]
    except AvatarUnavailable as exc:
        if exc.reason == "unauthorized":
            return [problem(SERVICE, "SIMLI_API_KEY was refused (app.simli.com: API key).")]
        return [problem(SERVICE, f"counting the running sessions failed: {exc.message}")]
    return [sessions_note(SERVICE, count, "Simli cannot stop a leftover by id: a crashed relay's sessions end "
                                          "within SIMLI_MAX_IDLE_TIME")]


async def token_step(settings: Settings, http: httpx2.AsyncClient) -> list[Finding]:
    """The face and both limits: a session token is asked with the very body the relay sends (`compose/token` checks
    the key, face, emotion and billing) and never used — a session, and its billing, starts only with the socket
    (docs/protocol.md), which the doctor never opens."""
    face, length, idle = settings.simli_face_id, settings.simli_session_length, settings.simli_max_idle_time
    try:
        with trio.fail_after(CHECK_TIMEOUT):
            await simli.create_token(settings, http)
    except trio.TooSlowError:
        return [problem(SERVICE, "asking for a session token timed out.")]
    except AvatarUnavailable as exc:
        return [problem(SERVICE, f"a session with face {face} (maxSessionLength {length} s, maxIdleTime {idle} s) "
                                 f"is refused: {exc.message}")]
    return [ok(SERVICE, f"face {face} with maxSessionLength {length} s and maxIdleTime {idle} s is accepted (a "
                        "session token was issued and left unused: no session was opened).")]


def _go_on(found: list[Finding]) -> bool:
    """Stop when the face is not set or the key was refused: nothing else can be read."""
    return not any(f.level == "problem" and ("SIMLI_FACE_ID is not set" in f.text or "_API_KEY was refused" in f.text)
                   for f in found)


PROVIDER = Provider(
    name="simli",
    title=SERVICE,
    settings=ProviderSettings(
        api_key="simli_api_key", base_url="simli_base_url",
        required=(Requirement("simli_face_id", "SIMLI_FACE_ID"),),
        session_limit=SessionLimit("simli_max_session_length", "raise it"),
        demo={"simli_face_id": DEMO_FACE}),
    make=simli.SimliProvider,
    list_running_ids=simli.list_running_ids,
    count_running=simli.active_session_count,  # Simli has no list call, only this count
    stop_by_id=simli.stop_by_id,
    doctor=AccountCheck(steps=(face_step, running_sessions, token_step), go_on=_go_on),
    simulator=simli_sim.create_app,
    page=PageTransport("livekit"),  # the room holds only the avatar and the viewer (simli-client's LivekitTransport)
    session_seconds=lambda settings: float(settings.simli_session_length),  # maxSessionLength
    simulator_session_limit="max_session_length_s",  # a cap on the maxSessionLength asked (the relay is not told)
)
