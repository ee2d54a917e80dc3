"""What one avatar provider's declaration holds (`Provider`): everything that differs between providers, so that
no other place of the relay names one. A declaration is a module of `relay.providers` (see `heygen`, `liveavatar`)
and one line of `relay.providers.table.PROVIDERS`. Plain data and references to the provider's own code: no I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx2

from relay.avatars import AvatarProvider
from relay.config import Settings
from relay.providers.findings import Finding


@dataclass(frozen=True, slots=True)
class Requirement:
    """A setting the provider cannot work without besides its key: `setting` (a `Settings` field) and how the
    missing-settings error names it (`says`); not needed when the boolean setting `unless` is on."""

    setting: str
    says: str
    unless: str | None = None


@dataclass(frozen=True, slots=True)
class SessionLimit:
    """A setting of the longest session asked of the provider, which must not be shorter than RELAY_MAX_DURATION
    (the avatar would end before the conversation); `advice` says how to raise it."""

    setting: str
    advice: str


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """The provider's settings (fields of `relay.config.Settings`, named `<provider>_...`): its API key (`api_key`,
    a field ending in `_api_key`: demo mode is "no API key at all"), its base URL, what else must be set, its
    session limit, what demo mode fills in when unset (e.g. an avatar its simulator knows), and `retired` (see
    there)."""

    api_key: str
    base_url: str
    required: tuple[Requirement, ...] = ()
    session_limit: SessionLimit | None = None
    demo: Mapping[str, str] = field(default_factory=dict)
    # A retired API: chosen only by name (RELAY_AVATAR), never by its key alone; a deployment that sets only its
    # key gets this one line at start-up (what happened, which settings move it).
    retired: str | None = None

    @property
    def key_variable(self) -> str:
        return self.api_key.upper()

    @property
    def base_url_variable(self) -> str:
        return self.base_url.upper()


Step = Callable[[Settings, httpx2.AsyncClient], Awaitable[list[Finding]]]


@dataclass(frozen=True, slots=True)
class AccountCheck:
    """The doctor's check of the provider's account, run by the one skeleton (`relay.ops.doctor.check_avatar`): with
    the API key set, `notes` first, then each of `steps` in order (each reads one thing of the account and says what
    it found; a network failure it lets through is reported as the base URL being unreachable, and ends the check);
    after each step, `go_on(the findings so far)` False ends the check (e.g. the key was refused: nothing else can be
    read with it)."""

    steps: tuple[Step, ...]
    go_on: Callable[[list[Finding]], bool]
    notes: tuple[Finding, ...] = ()


@dataclass(frozen=True, slots=True)
class PageTransport:
    """How the page shows the provider's avatar (the client configuration carries it): in a LiveKit room
    (`livekit`; `participant`: the avatar's identity in the room, None when it is the only other participant)."""

    kind: Literal["livekit"]
    participant: str | None = None


@dataclass(frozen=True, slots=True)
class Provider:
    """One avatar provider (`RELAY_AVATAR=<name>`; "none", voice only, is no provider).

    `title` is how people and the doctor name it; `make(settings, http)` its `AvatarProvider`;
    `list_running_ids(settings, http)` and `stop_by_id(settings, http, session_id)` the operator calls the journal,
    the fleet's takeover and `avatar-relay reap` use; `doctor` its account check; `simulator(start_faults=...)` the
    ASGI app that imitates it (demo mode, `avatar-relay sim`, the tests); `page` how the page shows it."""

    name: str
    title: str
    settings: ProviderSettings
    make: Callable[[Settings, httpx2.AsyncClient], AvatarProvider]
    list_running_ids: Callable[[Settings, httpx2.AsyncClient], Awaitable[list[str]]]
    stop_by_id: Callable[[Settings, httpx2.AsyncClient, str], Awaitable[None]]
    doctor: AccountCheck
    simulator: Callable[..., Any]
    page: PageTransport
    # The longest a session lives upstream with these settings (the sandbox's minute, the configured maximum), in
    # seconds; None: no known limit. The conversation rotates to a fresh session between turns before it.
    session_seconds: Callable[[Settings], float | None] | None = None
    # The simulator's fault that shortens its sessions' limit (`avatar-relay sim --session-limit NAME=SECONDS`), so
    # that a test sees a session end at its limit, or the relay rotate before it, in seconds rather than minutes.
    simulator_session_limit: str | None = None
    # A provider that cannot list its sessions but counts them (`count_running(settings, http)`): the
    # untracked-session check compares that count (relay.ops.untracked). None: `list_running_ids` names them.
    count_running: Callable[[Settings, httpx2.AsyncClient], Awaitable[int]] | None = None
