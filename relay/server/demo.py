"""Demo mode: with no API keys set, the relay runs on its three simulators, in-process, on free loopback ports.

`demo_settings` points every upstream at its simulator with the placeholder key; `on_simulators` starts them for a
command that is not the app (`avatar-relay doctor`). The app starts them itself in its own nursery (relay.web).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio
from pydantic import SecretStr

from relay.avatars.common import PLACEHOLDER_API_KEY
from relay.config import Settings

DEMO_AGENT_ID = "demo-agent"
DEMO_HEYGEN_AVATAR = "Wayne_20240711"  # listed by the HeyGen simulator's avatar.list
DEMO_LIVEAVATAR_AVATAR = "6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01"  # listed by the LiveAvatar simulator's /v1/avatars
DEMO_SIMLI_FACE = "cace3ef7-a4c4-425d-a8cf-a5358eb0c427"  # a Simli preset face, known to the Simli simulator


def demo_settings(settings: Settings, elevenlabs_url: str, heygen_url: str, liveavatar_url: str,
                  simli_url: str | None = None) -> Settings:
    """The settings a demo-mode relay uses: every upstream pointed at its in-process simulator."""
    simli: dict[str, object] = {} if simli_url is None else {
        "simli_base_url": simli_url,
        "simli_api_key": SecretStr(PLACEHOLDER_API_KEY),
        "simli_face_id": settings.simli_face_id or DEMO_SIMLI_FACE,
    }
    return settings.model_copy(update={**simli,
        "elevenlabs_base_url": elevenlabs_url,
        "elevenlabs_agent_id": DEMO_AGENT_ID,
        "elevenlabs_api_key": SecretStr(PLACEHOLDER_API_KEY),
        "heygen_base_url": heygen_url,
        "heygen_api_key": SecretStr(PLACEHOLDER_API_KEY),
        "heygen_avatar_id": settings.heygen_avatar_id or DEMO_HEYGEN_AVATAR,
        "liveavatar_base_url": liveavatar_url,
        "liveavatar_api_key": SecretStr(PLACEHOLDER_API_KEY),
        "liveavatar_avatar_id": settings.liveavatar_avatar_id or DEMO_LIVEAVATAR_AVATAR,
    })


@asynccontextmanager
async def on_simulators(settings: Settings) -> AsyncIterator[Settings]:
    """Start the simulators on loopback and yield `demo_settings` pointing at them; they stop on exit. Cancelled by
    the caller's scope."""
    from relay.sim.runner import serve_simulators

    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(serve_simulators, "127.0.0.1", demo=True))
        yield demo_settings(settings, urls.elevenlabs, urls.heygen, urls.liveavatar, urls.simli)
        nursery.cancel_scope.cancel()
