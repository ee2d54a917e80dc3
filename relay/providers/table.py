"""The provider table: `PROVIDERS` lists the declarations (adding a provider is its modules and one line here), and
everything that depends on which providers exist is derived from it, here or from here:

- the settings: which provider they choose (`chosen`) and whether they are complete (`settings_problem`,
  `load_settings`); `relay.config` holds the fields and knows no provider;
- the providers' operator calls by name (`make_provider`, `list_running_ids`, `stop_by_id`, `base_url`);
- the simulators to serve (`SIMULATOR_APPS`, `serve_simulators`) and demo mode's settings (`relay.server.demo`);
- the doctor's avatar check (`relay.ops.doctor.check_avatar`) and the page's client configuration (`page_config`).

`tests/test_providers.py` fails when a place names a provider this table does not, or the table has one a place
does not cover.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import httpx2
import trio

from relay.avatars import AvatarProvider, AvatarUnavailable
from relay.config import ConfigError, Settings
from relay.config import load_settings as load_fields
from relay.providers import heygen, liveavatar, simli
from relay.providers.entry import Provider
from relay.sim import elevenlabs_sim, runner
from relay.sim.runner import SimulatorURLs

# In the order the settings prefer them when RELAY_AVATAR is unset: the first whose API key is set, else the first.
PROVIDERS: Final[dict[str, Provider]] = {p.name: p for p in (
    liveavatar.PROVIDER,
    heygen.PROVIDER,
    simli.PROVIDER,
)}

VOICE_ONLY: Final = "none"  # RELAY_AVATAR=none: no avatar


def entry_for(name: str) -> Provider:
    """The declaration of provider `name`. Raises AvatarUnavailable("bad_config") for a name the table does not know
    (e.g. a journal row written by another version)."""
    entry = PROVIDERS.get(name)
    if entry is None:
        raise AvatarUnavailable("bad_config", f"unknown avatar provider {name!r}")
    return entry


# ----------------------------------------------------------------------------------------------------------------------
# Settings


def chosen(settings: Settings) -> Provider | None:
    """The provider the settings choose: RELAY_AVATAR, else the first (in table order) whose API key is set, else
    the first (in demo mode, on its simulator); None for voice only. RELAY_AVATAR is known (`settings_problem`)."""
    if settings.relay_avatar == VOICE_ONLY:
        return None
    if settings.relay_avatar is not None:
        return entry_for(settings.relay_avatar)
    for entry in PROVIDERS.values():
        if getattr(settings, entry.settings.api_key) is not None:
            return entry
    return next(iter(PROVIDERS.values()))


def chosen_name(settings: Settings) -> str:
    """The chosen provider's name, "none" for voice only."""
    entry = chosen(settings)
    return VOICE_ONLY if entry is None else entry.name


def settings_problem(settings: Settings) -> str | None:
    """What makes `settings` unusable for the providers, in words naming the variables, or None: an unknown
    RELAY_AVATAR, a provider session limit shorter than RELAY_MAX_DURATION, and (outside demo mode) the settings the
    chosen provider cannot do without."""
    if settings.relay_avatar is not None and settings.relay_avatar != VOICE_ONLY \
            and settings.relay_avatar not in PROVIDERS:
        return f"RELAY_AVATAR: must be one of {', '.join([*PROVIDERS, VOICE_ONLY])} (got {settings.relay_avatar!r})"
    for entry in PROVIDERS.values():
        limit = entry.settings.session_limit
        value = None if limit is None else getattr(settings, limit.setting)
        if limit is not None and value is not None and value < settings.relay_max_duration:
            return (f"{limit.setting.upper()} ({value} s) is shorter than RELAY_MAX_DURATION "
                    f"({settings.relay_max_duration:g} s): the avatar would end before the conversation; "
                    f"{limit.advice}, lower RELAY_MAX_DURATION, or unset it to follow RELAY_MAX_DURATION")
    if settings.demo_mode:
        return None
    missing: list[str] = []
    if not settings.elevenlabs_agent_id:
        missing.append("ELEVENLABS_AGENT_ID")
    keys = [entry.settings.api_key for entry in PROVIDERS.values()]
    if settings.relay_avatar is None and all(getattr(settings, key) is None for key in keys):
        missing.append(" or ".join(key.upper() for key in keys) + " (or RELAY_AVATAR=none for voice only)")
    elif (provider := chosen(settings)) is not None:
        if getattr(settings, provider.settings.api_key) is None:
            missing.append(provider.settings.key_variable)
        missing.extend(need.says for need in provider.settings.required
                       if not getattr(settings, need.setting) and not (need.unless and getattr(settings, need.unless)))
    if missing:
        return "some upstream settings are set but not all, so demo mode is off; missing: " + ", ".join(missing)
    return None


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings (`relay.config.load_settings`), then check them against the providers; raise
    ConfigError with a message naming each bad variable (no secrets)."""
    settings = load_fields(**overrides)
    problem = settings_problem(settings)
    if problem is not None:
        raise ConfigError("invalid configuration: " + problem)
    return settings


# ----------------------------------------------------------------------------------------------------------------------
# The providers' calls, by name


def make_provider(settings: Settings, http: httpx2.AsyncClient) -> AvatarProvider | None:
    """The chosen provider, or None for voice only."""
    entry = chosen(settings)
    return None if entry is None else entry.make(settings, http)


def base_url(settings: Settings, name: str) -> str:
    """Where provider `name` is reached with these settings."""
    return str(getattr(settings, entry_for(name).settings.base_url))


def at_base_url(settings: Settings, name: str, url: str | None) -> Settings:
    """`settings` with provider `name` reached at `url` (where a journaled session was opened); unchanged for
    None."""
    if not url:
        return settings
    return settings.model_copy(update={entry_for(name).settings.base_url: url})


async def list_running_ids(settings: Settings, http: httpx2.AsyncClient) -> list[str]:
    """Ids of the sessions the chosen provider's account has running (its list API, retried); [] for voice only.
    Raises AvatarUnavailable when the list cannot be read."""
    entry = chosen(settings)
    return [] if entry is None else await entry.list_running_ids(settings, http)


async def stop_by_id(settings: Settings, http: httpx2.AsyncClient, name: str, session_id: str,
                     base_url: str | None = None) -> None:
    """Stop one session of provider `name` by id with the configured API key (at `base_url` if given: where it was
    opened). Retried and bounded by the provider's own stop; raises AvatarUnavailable if it could not be stopped."""
    await entry_for(name).stop_by_id(at_base_url(settings, name, base_url), http, session_id)


# ----------------------------------------------------------------------------------------------------------------------
# Simulators and the page

SIMULATOR_APPS: Final[dict[str, Callable[..., Any]]] = {
    "elevenlabs": elevenlabs_sim.create_app,
    **{entry.name: entry.simulator for entry in PROVIDERS.values()},
}


async def serve_simulators(host: str = "127.0.0.1", ports: dict[str, int] | None = None, *,
                           faults: dict[str, dict[str, Any]] | None = None, demo: bool = False,
                           task_status: trio.TaskStatus[SimulatorURLs] = trio.TASK_STATUS_IGNORED) -> None:
    """`relay.sim.runner.serve_simulators` with every simulator: the agent's and each provider's."""
    await runner.serve_simulators(SIMULATOR_APPS, host, ports, faults=faults, demo=demo, task_status=task_status)


def page_config() -> dict[str, dict[str, Any]]:
    """How the page shows each provider's avatar (`avatars` of its client configuration), by provider name."""
    return {entry.name: {"transport": entry.page.kind, "participant": entry.page.participant}
            for entry in PROVIDERS.values()}


__all__ = ["PROVIDERS", "SIMULATOR_APPS", "VOICE_ONLY", "at_base_url", "base_url", "chosen", "chosen_name",
           "entry_for", "list_running_ids", "load_settings", "make_provider", "page_config",
           "serve_simulators", "settings_problem", "stop_by_id"]
