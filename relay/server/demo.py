"""Demo mode: with no API keys set, the relay runs on its simulators (the agent's and each provider's), in-process,
on free loopback ports.

`demo_settings` points every upstream at its simulator with the placeholder key (and what each provider's
declaration says demo mode fills in, e.g. an avatar its simulator knows); `on_simulators` starts them for a command
that is not the app (`avatar-relay doctor`). The app starts them itself in its own nursery (relay.web).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio
from pydantic import SecretStr

from relay.avatars.common import PLACEHOLDER_API_KEY
from relay.config import Settings
from relay.providers.table import PROVIDERS, serve_simulators
from relay.sim.runner import AGENT, SimulatorURLs

DEMO_AGENT_ID = "demo-agent"


def demo_settings(settings: Settings, urls: SimulatorURLs) -> Settings:
    """The settings a demo-mode relay uses: every upstream pointed at its in-process simulator (`urls`, by name)."""
    update: dict[str, Any] = {
        "elevenlabs_base_url": urls[AGENT],
        "elevenlabs_agent_id": DEMO_AGENT_ID,
        "elevenlabs_api_key": SecretStr(PLACEHOLDER_API_KEY),
    }
    for entry in PROVIDERS.values():
        names = entry.settings
        update[names.base_url] = urls[entry.name]
        update[names.api_key] = SecretStr(PLACEHOLDER_API_KEY)
        update.update({setting: getattr(settings, setting) or value for setting, value in names.demo.items()})
    return settings.model_copy(update=update)


@asynccontextmanager
async def on_simulators(settings: Settings) -> AsyncIterator[Settings]:
    """Start the simulators on loopback and yield `demo_settings` pointing at them; they stop on exit. Cancelled by
    the caller's scope."""
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(serve_simulators, "127.0.0.1", demo=True))
        yield demo_settings(settings, urls)
        nursery.cancel_scope.cancel()
