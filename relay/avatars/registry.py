"""The avatar providers, in one table: the only place that dispatches on a provider's name.

Each entry says how to make the provider (`RELAY_AVATAR`), which setting holds its base URL, and the two operator
calls the journal and `avatar-relay reap` need (list the account's running sessions, stop one by id). "none"
(voice only) is no entry. The doctor's per-provider checks are looked up by the same names (`relay.ops.doctor`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import httpx2

from relay import heygen, liveavatar, simli
from relay.avatars import AvatarProvider, AvatarUnavailable
from relay.config import Settings


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    """One avatar provider: its factory, the name of its base-URL setting, and its operator calls."""

    name: str
    base_url_setting: str
    make: Callable[[Settings, httpx2.AsyncClient], AvatarProvider]
    list_running_ids: Callable[[Settings, httpx2.AsyncClient], Awaitable[list[str]]]
    stop_by_id: Callable[[Settings, httpx2.AsyncClient, str], Awaitable[None]]


PROVIDERS: Final[dict[str, ProviderEntry]] = {
    entry.name: entry for entry in (
        ProviderEntry("heygen", "heygen_base_url", heygen.HeyGenProvider, heygen.list_running_ids,
                      heygen.stop_by_id),
        ProviderEntry("liveavatar", "liveavatar_base_url", liveavatar.LiveAvatarProvider,
                      liveavatar.list_running_ids, liveavatar.stop_by_id),
        # No list, no stop by id (relay.simli): `list_running_ids` is [] and `stop_by_id` only logs the bound.
        ProviderEntry("simli", "simli_base_url", simli.SimliProvider, simli.list_running_ids, simli.stop_by_id),
    )
}


def entry_for(name: str) -> ProviderEntry:
    """The table entry for provider `name`. Raises AvatarUnavailable("bad_config") for a name it does not know
    (e.g. a journal row written by another version)."""
    entry = PROVIDERS.get(name)
    if entry is None:
        raise AvatarUnavailable("bad_config", f"unknown avatar provider {name!r}")
    return entry


def make_provider(settings: Settings, http: httpx2.AsyncClient) -> AvatarProvider | None:
    """The configured provider, or None for voice only (`RELAY_AVATAR=none`)."""
    return None if settings.avatar == "none" else entry_for(settings.avatar).make(settings, http)


def base_url(settings: Settings, name: str) -> str:
    """Where provider `name` is reached with these settings."""
    return str(getattr(settings, entry_for(name).base_url_setting))


def at_base_url(settings: Settings, name: str, url: str | None) -> Settings:
    """`settings` with provider `name` reached at `url` (where a journaled session was opened); unchanged for
    None."""
    if not url:
        return settings
    return settings.model_copy(update={entry_for(name).base_url_setting: url})


async def list_running_ids(settings: Settings, http: httpx2.AsyncClient) -> list[str]:
    """Ids of the sessions the configured provider's account has running (its list API, retried); [] for voice
    only. Raises AvatarUnavailable when the list cannot be read."""
    if settings.avatar == "none":
        return []
    return await entry_for(settings.avatar).list_running_ids(settings, http)


async def stop_by_id(settings: Settings, http: httpx2.AsyncClient, name: str, session_id: str,
                     base_url: str | None = None) -> None:
    """Stop one session of provider `name` by id with the configured API key (at `base_url` if given: where it was
    opened). Retried and bounded by the provider's own stop; raises AvatarUnavailable if it could not be stopped."""
    entry = entry_for(name)
    await entry.stop_by_id(at_base_url(settings, name, base_url), http, session_id)


__all__ = ["PROVIDERS", "ProviderEntry", "at_base_url", "base_url", "entry_for", "list_running_ids",
           "make_provider", "stop_by_id"]
