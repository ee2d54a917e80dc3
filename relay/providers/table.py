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
from relay.config import ConfigError, Settings, parse_avatar_budgets
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


def _listed_names(value: str) -> list[str]:
    return [name.strip().lower() for name in value.split(",")]


def listed(settings: Settings) -> list[Provider]:
    """The providers the settings list, in order (RELAY_AVATAR=liveavatar,simli: a conversation's avatar comes from
    the first that starts): RELAY_AVATAR, else the first (in table order) whose API key is set, else the first (in
    demo mode, on its simulator); [] for voice only. RELAY_AVATAR is valid (`settings_problem`)."""
    if settings.relay_avatar is None:
        for entry in PROVIDERS.values():  # retired ones skipped: they are chosen only by name
            if entry.settings.retired is None and getattr(settings, entry.settings.api_key) is not None:
                return [entry]
        return [next(iter(PROVIDERS.values()))]
    names = _listed_names(settings.relay_avatar)
    if names == [VOICE_ONLY]:
        return []
    return [entry_for(name) for name in names]


def chosen(settings: Settings) -> Provider | None:
    """The first provider the settings list (`listed`); None for voice only."""
    entries = listed(settings)
    return entries[0] if entries else None


def chosen_name(settings: Settings) -> str:
    """The listed providers' names, comma-separated in order ("liveavatar,simli"); "none" for voice only."""
    return ",".join(entry.name for entry in listed(settings)) or VOICE_ONLY


def _list_problem(value: str) -> str | None:
    """What is wrong with RELAY_AVATAR's list, or None."""
    names = _listed_names(value)
    if names == [VOICE_ONLY]:
        return None
    must = f"a provider ({', '.join(PROVIDERS)}), a comma-separated list of them in the order to try, or {VOICE_ONLY}"
    for name in names:
        if not name:
            return f"RELAY_AVATAR: an empty name in the list {value!r}; {must}"
        if name == VOICE_ONLY:
            return f"RELAY_AVATAR: {VOICE_ONLY} cannot be part of a list (got {value!r}): voice only is the last " \
                   "resort of every list anyway"
        if name not in PROVIDERS:
            return f"RELAY_AVATAR: must be {must} (got {name!r})"
        if names.count(name) > 1:
            return f"RELAY_AVATAR: {name} is listed twice (got {value!r})"
    return None


def avatar_budgets(settings: Settings) -> dict[str, int]:
    """RELAY_MAX_AVATAR_SESSIONS for the listed providers, by name (a bare number is each one's budget); a listed
    provider without a budget is not in it. The setting is valid (`settings_problem`)."""
    if settings.relay_max_avatar_sessions is None:
        return {}
    budgets = parse_avatar_budgets(settings.relay_max_avatar_sessions)
    names = [entry.name for entry in listed(settings)]
    if isinstance(budgets, int):
        return dict.fromkeys(names, budgets)
    return {name: budgets[name] for name in names if name in budgets}


def settings_problem(settings: Settings) -> str | None:
    """What makes `settings` unusable for the providers, in words naming the variables, or None: an unknown or
    malformed RELAY_AVATAR, a budget for a provider the table does not know, a provider session limit shorter than
    RELAY_MAX_DURATION, and (outside demo mode) the settings a listed provider cannot do without."""
    if settings.relay_avatar is not None and (problem := _list_problem(settings.relay_avatar)) is not None:
        return problem
    if settings.relay_max_avatar_sessions is not None:
        budgets = parse_avatar_budgets(settings.relay_max_avatar_sessions)
        unknown = [] if isinstance(budgets, int) else [name for name in budgets if name not in PROVIDERS]
        if unknown:
            return (f"RELAY_MAX_AVATAR_SESSIONS: {', '.join(unknown)} is not an avatar provider (one of "
                    f"{', '.join(PROVIDERS)})")
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
    keys = [entry.settings.api_key for entry in PROVIDERS.values() if entry.settings.retired is None]
    retired = [entry.settings.retired for entry in PROVIDERS.values()
               if entry.settings.retired is not None and getattr(settings, entry.settings.api_key) is not None]
    if settings.relay_avatar is None and all(getattr(settings, key) is None for key in keys) and retired:
        if not missing:
            return retired[0]  # one line: the API is retired, and which settings move the deployment
        missing.append(retired[0])
    elif settings.relay_avatar is None and all(getattr(settings, key) is None for key in keys):
        missing.append(" or ".join(key.upper() for key in keys) + " (or RELAY_AVATAR=none for voice only)")
    else:
        for provider in listed(settings):
            if getattr(settings, provider.settings.api_key) is None:
                missing.append(provider.settings.key_variable)
            missing.extend(need.says for need in provider.settings.required
                           if not getattr(settings, need.setting)
                           and not (need.unless and getattr(settings, need.unless)))
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
    """The first listed provider, or None for voice only."""
    entry = chosen(settings)
    return None if entry is None else entry.make(settings, http)


def session_limits(settings: Settings) -> dict[str, float]:
    """The listed providers' known session limits in seconds (`Provider.session_seconds`), by name."""
    limits: dict[str, float] = {}
    for entry in listed(settings):
        seconds = None if entry.session_seconds is None else entry.session_seconds(settings)
        if seconds is not None:
            limits[entry.name] = seconds
    return limits


def make_providers(settings: Settings, http: httpx2.AsyncClient) -> list[AvatarProvider]:
    """Every listed provider, in order; [] for voice only."""
    return [entry.make(settings, http) for entry in listed(settings)]


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
    """Ids of the sessions the first listed provider's account has running (its list API, retried); [] for voice
    only. Raises AvatarUnavailable when the list cannot be read."""
    entry = chosen(settings)
    return [] if entry is None else await entry.list_running_ids(settings, http)


async def list_running(settings: Settings, http: httpx2.AsyncClient) -> list[tuple[str, str]]:
    """(provider, session id) of the sessions every listed provider's account has running (each one's list API,
    retried, one after the other); [] for voice only. Raises AvatarUnavailable when a list cannot be read."""
    running: list[tuple[str, str]] = []
    for entry in listed(settings):
        running.extend((entry.name, session_id) for session_id in await entry.list_running_ids(settings, http))
    return running


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


__all__ = [
    "PROVIDERS",
    "SIMULATOR_APPS",
    "VOICE_ONLY",
    "at_base_url",
    "avatar_budgets",
    "base_url",
    "chosen",
    "chosen_name",
    "entry_for",
    "list_running",
    "list_running_ids",
    "listed",
    "load_settings",
    "make_provider",
    "make_providers",
    "page_config",
    "serve_simulators",
    "session_limits",
    "settings_problem",
    "stop_by_id",
]
