"""Settings from the environment and a `.env` file (pydantic-settings), validated once at start-up.

Names follow the upstream services (`ELEVENLABS_*`, `HEYGEN_*`, `LIVEAVATAR_*`, `SIMLI_*`) and `RELAY_*` for the
relay's own knobs. Secrets are `SecretStr`, so they never show in a repr, a log line or an error message. This module
decides demo mode and must never do I/O beyond reading the environment. It holds the fields and knows no avatar
provider: which one the settings choose and whether they are complete for it is `relay.providers.table` (`chosen`,
`load_settings`); each provider's settings are named `<provider>_...`, its key `<provider>_api_key`.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import uuid
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")
_OVERRIDE_PATH = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
_INTEGRITY = re.compile(r"sha(?:256|384|512)-[A-Za-z0-9+/]+={0,2}")
_VARIABLE_NAME = re.compile(r"\*|[^\s{}\"']+")


class ConfigError(Exception):
    """The configuration is invalid; the message names the variable(s) to fix and never contains a secret."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      case_sensitive=False)

    # ElevenLabs Conversational AI
    elevenlabs_agent_id: str | None = None
    elevenlabs_api_key: SecretStr | None = None
    elevenlabs_base_url: str = "https://api.elevenlabs.io"
    # The agent's branch and environment (environment variables of the agent), on the socket URL and the signed-URL
    # request as the SDKs send them; unset: the agent's defaults (main branch, "production").
    elevenlabs_branch_id: str | None = None
    elevenlabs_environment: str | None = None

    # HeyGen Streaming API v1
    heygen_api_key: SecretStr | None = None
    heygen_base_url: str = "https://api.heygen.com"
    heygen_avatar_id: str | None = None
    heygen_voice_id: str | None = None
    heygen_quality: Literal["low", "medium", "high"] = "medium"
    heygen_mode: Literal["repeat", "realtime"] = "repeat"
    heygen_idle_timeout: int = Field(default=120, ge=30, le=3600)

    # LiveAvatar (LITE mode)
    liveavatar_api_key: SecretStr | None = None
    liveavatar_base_url: str = "https://api.liveavatar.com"
    liveavatar_avatar_id: str | None = None
    liveavatar_sandbox: bool = False
    liveavatar_quality: Literal["very_high", "high", "medium", "low"] = "high"
    # Seconds LiveAvatar keeps the session at most; default: RELAY_MAX_DURATION plus a minute (see the property).
    liveavatar_max_session_duration: int | None = Field(default=None, gt=0)

    # Simli (docs/protocol.md "Simli")
    simli_api_key: SecretStr | None = None
    simli_base_url: str = "https://api.simli.ai"
    simli_face_id: str | None = None  # a preset or own face id; "faceId/emotionId" for a Trinity face's emotion
    # `maxSessionLength` asked of Simli; default: RELAY_MAX_DURATION plus a minute (see the property).
    simli_max_session_length: int | None = Field(default=None, gt=0)
    # `maxIdleTime`: Simli ends a session this long without audio. The relay feeds a quiet session silence three
    # times per period; a crashed relay's sessions end within it (docs/deploy.md).
    simli_max_idle_time: int = Field(default=120, ge=10, le=3600)

    # The relay itself
    relay_avatar: str | None = None  # a provider of relay.providers.table, or "none" (checked there)
    relay_host: str = "127.0.0.1"
    relay_port: int = Field(default=8000, ge=0, le=65535)
    relay_degrade_to_voice: bool = True
    relay_setup_timeout: float = Field(default=20.0, gt=0)
    # Seconds after `ready` (the browser joins the avatar's room then) for the avatar to say `connected`; without
    # it the conversation goes on voice-only (docs/reliability.md).
    relay_avatar_connect_timeout: float = Field(default=20.0, gt=0)
    # Seconds the agent's speech may wait for an avatar that has not said `connected` yet; then the browser plays
    # it as voice (usually the greeting) and the avatar takes over from the next turn (docs/protocol.md).
    relay_avatar_speech_hold: float = Field(default=3.0, ge=0)
    # The LITE packet cadence's first packet of a turn, in ms of audio (the guide: ~600 ms, then ~1 s packets, so
    # the avatar can buffer); 0 sends every chunk of the agent's audio as it comes (docs/performance.md).
    relay_lite_first_packet_ms: int = Field(default=600, ge=0, le=1000)
    relay_stop_timeout: float = Field(default=5.0, gt=0)
    relay_idle_timeout: float = Field(default=60.0, gt=0)
    # Seconds a conversation whose browser connection dropped waits for a `resume` (0: never; docs/protocol.md).
    relay_resume_window: float = Field(default=20.0, ge=0, le=600)
    # What a resume token names this relay by, for a proxy to route a resume on (docs/deploy.md); empty: its fleet
    # id with RELAY_REDIS_URL, a random one otherwise. `-w<index>` is added under `serve --workers N`.
    relay_resume_route: str = Field(default="", pattern=r"^[A-Za-z0-9_-]{0,56}$")
    relay_max_duration: float = Field(default=1800.0, gt=0)
    relay_keep_alive_interval: float = Field(default=60.0, gt=0)
    relay_max_frame_bytes: int = Field(default=256 * 1024, gt=0)
    # The largest `start` (a socket's first message, read before its token is checked): a token, the dynamic
    # variables and overrides fit in a few KiB.
    relay_max_start_bytes: int = Field(default=64 * 1024, ge=4096)
    relay_max_conversations: int = Field(default=500, gt=0)
    relay_max_conversations_per_client: int = Field(default=20, gt=0)
    # Before `start` (docs/reliability.md "Before the token"): a socket holds no conversation seat, only one of at
    # most RELAY_MAX_PENDING pre-start slots (when they are all taken the oldest waiting socket is closed to make
    # room), at most RELAY_MAX_PENDING_PER_CLIENT per client, for at most RELAY_START_TIMEOUT seconds.
    relay_start_timeout: float = Field(default=10.0, gt=0)
    relay_max_pending: int = Field(default=256, gt=0)
    relay_max_pending_per_client: int = Field(default=8, gt=0)
    # IPv6 clients are counted per network of this prefix length (one household or host usually has a whole /64).
    relay_client_ipv6_prefix: int = Field(default=64, ge=32, le=128)
    relay_drain_timeout: float = Field(default=10.0, gt=0)
    relay_workers: Annotated[int, Field(ge=1)] | Literal["auto"] = 1  # `serve` processes on one socket (docs/deploy.md)
    # livekit-client's ES module for the widget: "" = the relay's own pinned copy (relay/client, `npm ci --prefix
    # relay/client`; docs/embedding.md), or a URL to load it from instead.
    relay_livekit_client_url: str = ""
    relay_livekit_client_dir: str | None = None  # where that copy is; default relay/client/node_modules/livekit-client
    # With RELAY_LIVEKIT_CLIENT_URL set: that file's Subresource Integrity (`sha384-…`); the page refuses any other
    # content. Unset or empty: no check. The relay's own copy always carries its pinned hash (relay.server.embed).
    relay_livekit_client_integrity: str | None = None
    # Length of the microphone frames the page sends. The relay's CPU is per frame (docs/performance.md): longer
    # frames cost less and add their length to the capture latency.
    relay_client_frame_ms: int = Field(default=60, ge=20, le=250)
    relay_log_format: Literal["text", "json"] = "text"
    relay_log_level: str = "INFO"
    # Operations (docs/operations.md)
    relay_transcripts_dir: str | None = None  # write each conversation's turns (JSON Lines, no audio) here
    relay_transcript_max_bytes: int = Field(default=4 * 2**20, ge=1024)  # per conversation, then `truncated`
    # Avatar seconds per client subject too (avatar_relay_avatar_session_seconds_by_subject): the first N subjects
    # get their own label, the rest share "~other" (bounded label cardinality). 0: off.
    relay_metrics_subjects: int = Field(default=0, ge=0, le=1000)
    relay_predrain_delay: float = Field(default=0.0, ge=0)  # on SIGTERM: seconds not-ready before the drain

    # Reliability and protection (docs/reliability.md)
    relay_state_dir: str | None = None  # the session journal's directory; default $XDG_STATE_HOME/avatar-relay
    # Seconds between sweeps of the journal (sessions left by dead processes, sessions whose stop failed); 0: only
    # at start-up.
    relay_reap_interval: float = Field(default=60.0, ge=0)
    relay_journal: bool = True  # journal open avatar sessions and reap a dead process's leftovers at start-up
    relay_auth: Literal["auto", "token", "off"] = "auto"  # auto: tokens required unless in demo mode
    relay_auth_secret: SecretStr | None = None  # HS256 key for client JWTs (`avatar-relay token`)
    relay_auth_jwks_url: str | None = None  # the identity provider's JWKS: RS256/ES256/EdDSA client tokens
    relay_auth_public_key: str | None = None  # a PEM public key for RS256/ES256/EdDSA client tokens
    relay_auth_issuer: str | None = None  # the `iss` client tokens must carry, when set
    relay_auth_audience: str | None = None  # the `aud` client tokens must carry, when set
    relay_auth_leeway: float = Field(default=30.0, ge=0, le=300)  # seconds of clock skew allowed on exp/nbf/iat
    relay_auth_v1: bool = True  # also accept the deprecated v1.<expires>.<subject>.<signature> tokens
    # Least seconds between two JWKS fetches for an unknown `kid` (a flood of forged kids fetches once per interval)
    relay_auth_jwks_min_interval: float = Field(default=30.0, ge=1)
    relay_frame_ancestors: str = "'self'"  # CSP frame-ancestors: who may embed the page (space-separated sources)
    # The page's media hosts (CSP connect-src besides its own origin): LiveKit's signalling and region lookup.
    relay_page_connect_src: str = "wss://*.livekit.cloud https://*.livekit.cloud"
    relay_allowed_origins: str = ""  # comma-separated Origins allowed on /ws besides the relay's own; "*" = any
    # Host names the relay answers to besides IP addresses and localhost (and the hosts of RELAY_ALLOWED_ORIGINS):
    # comma-separated, "*" any. Anything else gets 421 (DNS rebinding; docs/reliability.md).
    relay_allowed_hosts: str = ""
    relay_metrics_token: SecretStr | None = None  # when set, /metrics (and /_demo/simulators) need it as a bearer
    # The operator's endpoints (`/admin/...`, docs/operations.md): off unless set, then only for this bearer token
    # (at least 16 characters). Never route /admin/ through the public proxy.
    relay_admin_token: SecretStr | None = Field(default=None, min_length=16)
    # Seconds between two comparisons of the avatar accounts' running sessions with the relay's records (the metric
    # avatar_relay_untracked_avatar_sessions); 0: never (the admin endpoint still compares on demand).
    relay_untracked_check_interval: float = Field(default=60.0, ge=0, le=86400)
    # The proxies whose X-Forwarded-For names the client: addresses and networks, comma-separated
    # (`10.0.0.0/8,192.0.2.7`); RELAY_TRUST_FORWARDED_FOR=true alone means a proxy on this machine (loopback).
    relay_trusted_proxies: str = ""
    relay_trust_forwarded_for: bool = False
    relay_max_starts_per_minute: int = Field(default=30, gt=0)  # new conversations per client address
    relay_max_frames_per_second: int = Field(default=500, gt=0)  # client frames per conversation
    relay_send_timeout: float = Field(default=10.0, gt=0)  # a browser send blocked this long ends the conversation
    # `/ws` over plain TCP served on its own socket (relay.server.direct_ws: no hypercorn reader task, C-parsed frames,
    # permessage-deflate declined); false: through hypercorn's ASGI callables, as TLS connections always are.
    relay_direct_websocket: bool = True
    relay_agent_silence_timeout: float = Field(default=60.0, gt=0)  # no frame at all from the agent this long ends it
    relay_finish_speaking_timeout: float = Field(default=15.0, ge=0)  # agent ended: let the last words play this long
    # What a browser's `start` may change in the agent (docs/protocol.md "Overrides"): comma-separated dotted paths
    # of `overrides` (`agent.language,tts.voice_id`; a parent allows its children; "*" any); empty: none.
    relay_client_overrides: str = ""
    relay_client_extra_body: bool = False  # whether a `start` may send `custom_llm_extra_body` to the agent's LLM
    # Which `dynamic_variables` a browser's `start` may set (comma-separated names, "*" any; empty: none). A token's
    # `relay_dynamic_variables` are set whatever this says, and win over the browser's.
    relay_client_dynamic_variables: str = ""
    # Conversations one client token opens over its life (one at a time); its `relay_max_conversations` claim wins.
    relay_token_max_conversations: int = Field(default=1, ge=1, le=1000)

    # A fleet of relays sharing one state in Redis (docs/deploy.md, "A fleet on Redis"); unset: this machine only.
    # redis://, rediss://, unix://, redis+sentinel://host:port[,host:port]/service[/db], redis+cluster://host:port
    relay_redis_url: SecretStr | None = None  # a secret: the URL may carry a password
    relay_redis_prefix: str = Field(default="avatar-relay", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    # Seconds a relay's lease lives without a heartbeat: a dead relay's seats free and its sessions are taken over
    # by another relay within this long (heartbeats every third of it).
    relay_fleet_lease: float = Field(default=15.0, ge=1, le=300)
    # While Redis is unreachable: "refuse" new conversations (upstream_unavailable), or admit them under this relay's
    # own caps ("local"); open conversations go on either way (docs/deploy.md).
    relay_fleet_outage: Literal["refuse", "local"] = "refuse"
    # The avatar accounts' concurrent-session budgets (the plans' limits), shared by the fleet with Redis, by the
    # machine's workers without: `liveavatar=20,simli=10` per provider, or a bare number for each listed provider.
    # Over it the next listed provider is tried, after the last a conversation goes voice-only (avatar_unavailable
    # `capacity`), after waiting up to RELAY_AVATAR_SEAT_WAIT seconds for a seat. Unset: no budget (the providers'
    # own refusals still move on). Kept normalized ("20" or "liveavatar=20,simli=10"); read with
    # `relay.providers.table.avatar_budgets`.
    relay_max_avatar_sessions: str | None = None
    relay_avatar_seat_wait: float = Field(default=0.0, ge=0, le=60)

    @field_validator("relay_max_avatar_sessions", mode="before")
    @classmethod
    def _budgets_are_numbers(cls, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            return value
        if not value.strip():
            return None
        budgets = parse_avatar_budgets(value)
        if isinstance(budgets, int):
            return str(budgets)
        return ",".join(f"{name}={size}" for name, size in budgets.items())

    @field_validator("liveavatar_avatar_id")
    @classmethod
    def _avatar_id_is_a_uuid(cls, value: str | None) -> str | None:
        # The real API's schema says `format: uuid` and answers 422 otherwise (docs/deploy.md).
        if value:
            try:
                uuid.UUID(value)
            except ValueError:
                raise ValueError(f"LiveAvatar avatar ids are UUIDs (like 6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01), "
                                 f"not {value[:64]!r}; copy the id from app.liveavatar.com (a HeyGen avatar name "
                                 "does not work on LiveAvatar)") from None
        return value

    # Settings whose mistakes would otherwise surface only at the first conversation (or never): refused at start-up
    # with one line naming them (docs/operations.md, "When it will not start").

    @field_validator("*")
    @classmethod
    def _is_a_web_url(cls, value: Any, info: ValidationInfo) -> Any:
        # Every upstream's `*_base_url` (a provider's too, by its name) and the page's livekit-client URL.
        if not (info.field_name or "").endswith("_base_url") and info.field_name != "relay_livekit_client_url":
            return value
        if info.field_name == "relay_livekit_client_url" and value == "":
            return value  # the relay's own copy (relay.server.embed)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an http(s):// URL is needed, like https://example.com, not {value[:80]!r}")
        return value

    @field_validator("relay_host")
    @classmethod
    def _is_a_host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOSTNAME.fullmatch(value):
                raise ValueError(f"an IP address or a host name to listen on (like 127.0.0.1, 0.0.0.0 or ::), not "
                                 f"{value[:80]!r}; the port is RELAY_PORT") from None
        return value

    @field_validator("relay_log_level")
    @classmethod
    def _is_a_log_level(cls, value: str) -> str:
        if value.strip().upper() not in LOG_LEVELS:
            raise ValueError(f"one of {', '.join(LOG_LEVELS)}, not {value[:40]!r}")
        return value

    @field_validator("relay_frame_ancestors", "relay_page_connect_src")
    @classmethod
    def _is_a_source_list(cls, value: str) -> str:
        # A Content-Security-Policy source list, space-separated: a ";" or "," would end the directive and start
        # another in the page's policy.
        if any(c in value for c in ";,\"\r\n"):
            raise ValueError(f"space-separated CSP sources (like 'self' https://shop.example), without ; , or "
                             f"quotes other than the keywords', not {value[:80]!r}")
        return value

    @field_validator("relay_allowed_origins")
    @classmethod
    def _are_origins(cls, value: str) -> str:
        for origin in (part.strip() for part in value.split(",") if part.strip()):
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.hostname
                                  or parts.path not in ("", "/") or parts.query or parts.fragment):
                raise ValueError(f"comma-separated origins like https://shop.example (a scheme and a host, no path), "
                                 f"or *, not {origin[:80]!r}")
        return value

    @field_validator("relay_client_overrides")
    @classmethod
    def _are_override_paths(cls, value: str) -> str:
        for path in (part.strip() for part in value.split(",") if part.strip()):
            if path != "*" and not _OVERRIDE_PATH.fullmatch(path):
                raise ValueError(f"comma-separated dotted paths of `overrides` like agent.language,tts.voice_id "
                                 f"(or *), not {path[:80]!r}")
        return value

    @field_validator("relay_livekit_client_integrity")
    @classmethod
    def _is_an_integrity(cls, value: str | None) -> str | None:
        if value is not None and value.strip() and not _INTEGRITY.fullmatch(value.strip()):
            raise ValueError(f"a Subresource Integrity value like sha384-<base64 of the file's SHA-384> (or empty), "
                             f"not {value[:80]!r}")
        return value

    @field_validator("relay_allowed_hosts")
    @classmethod
    def _are_host_names(cls, value: str) -> str:
        for host in (part.strip() for part in value.split(",") if part.strip()):
            if "/" in host:
                raise ValueError(f"comma-separated host names like relay.example.com (no scheme, no path), not "
                                 f"{host[:80]!r}")
            name = host  # host, host:port, an IPv6 address, [v6]:port
            if host.startswith("[") and "]" in host:
                name = host[1:host.find("]")]
            elif host.count(":") == 1:
                name = host.split(":")[0]
            try:
                ipaddress.ip_address(name)
            except ValueError:
                if host != "*" and not _HOSTNAME.fullmatch(name):
                    raise ValueError(f"comma-separated host names like relay.example.com (no scheme, no path, no "
                                     f"wildcard but * alone), not {host[:80]!r}") from None
        return value

    @field_validator("relay_client_dynamic_variables")
    @classmethod
    def _are_variable_names(cls, value: str) -> str:
        for name in (part.strip() for part in value.split(",") if part.strip()):
            if not _VARIABLE_NAME.fullmatch(name):
                raise ValueError(f"comma-separated dynamic variable names like customer_name,plan (or *), not "
                                 f"{name[:80]!r}")
        return value

    @field_validator("relay_trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                try:
                    ipaddress.ip_network(part.strip(), strict=False)
                except ValueError:
                    raise ValueError(f"{part.strip()[:64]!r} is not an IP address or network (like 10.0.0.0/8)"
                                     ) from None
        return value

    @property
    def liveavatar_session_duration(self) -> int:
        """The `max_session_duration` asked of LiveAvatar: LIVEAVATAR_MAX_SESSION_DURATION, else RELAY_MAX_DURATION
        plus a minute (set-up comes before the conversation's clock), so the avatar never ends first."""
        if self.liveavatar_max_session_duration is not None:
            return self.liveavatar_max_session_duration
        return math.ceil(self.relay_max_duration) + 60

    @property
    def simli_session_length(self) -> int:
        """The `maxSessionLength` asked of Simli: SIMLI_MAX_SESSION_LENGTH, else RELAY_MAX_DURATION plus a minute
        (set-up comes before the conversation's clock), so the avatar never ends first."""
        if self.simli_max_session_length is not None:
            return self.simli_max_session_length
        return math.ceil(self.relay_max_duration) + 60

    @property
    def livekit_client_integrity(self) -> str | None:
        """The integrity the page checks an operator's RELAY_LIVEKIT_CLIENT_URL against (None: none, or the relay's
        own copy, whose pinned integrity is relay.server.embed's)."""
        if not self.relay_livekit_client_url or self.relay_livekit_client_integrity is None:
            return None
        return self.relay_livekit_client_integrity.strip() or None

    @property
    def demo_mode(self) -> bool:
        """No upstream credentials or agent at all (no ELEVENLABS_AGENT_ID, no `*_API_KEY` of any upstream): run on
        the built-in simulators."""
        return not (self.elevenlabs_agent_id or any(getattr(self, name)
                                                    for name in type(self).model_fields if name.endswith("_api_key")))

    @property
    def workers(self) -> int:
        """How many worker processes `avatar-relay serve` runs: RELAY_WORKERS, `auto` meaning one per CPU."""
        return (os.cpu_count() or 1) if self.relay_workers == "auto" else self.relay_workers

    @model_validator(mode="after")
    def _branch_needs_a_signed_url(self) -> Settings:
        # A branch is selected on the signed-URL request only (docs/protocol.md "What the relay tells ElevenLabs").
        if self.elevenlabs_branch_id and self.elevenlabs_api_key is None:
            raise ValueError("ELEVENLABS_BRANCH_ID needs ELEVENLABS_API_KEY: a branch is chosen on the signed-URL "
                             "request (the official SDKs never put it on the public socket URL, where it might be "
                             "ignored and the main branch run instead)")
        return self


_BUDGET = re.compile(r"([a-z][a-z0-9_-]*)=([0-9]+)")


def parse_avatar_budgets(value: str) -> int | dict[str, int]:
    """RELAY_MAX_AVATAR_SESSIONS read: a bare number (for each listed provider) or `name=number` pairs separated by
    commas. Raises ValueError saying what is wrong; which names are providers is `relay.providers.table`'s."""
    text = value.strip()
    if text.isdigit():
        if int(text) <= 0:
            raise ValueError(f"a budget must be a positive number of sessions, not {text[:40]!r}")
        return int(text)
    budgets: dict[str, int] = {}
    for part in text.split(","):
        match = _BUDGET.fullmatch(part.strip().lower())
        if match is None:
            raise ValueError(f"a number of sessions (20) or provider=number pairs (liveavatar=20,simli=10) are "
                             f"needed, not {part.strip()[:40]!r}")
        name, size = match.group(1), int(match.group(2))
        if size <= 0:
            raise ValueError(f"a budget must be a positive number of sessions ({name}={size})")
        if name in budgets:
            raise ValueError(f"{name} is given a budget twice")
        budgets[name] = size
    return budgets


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings' fields; raise ConfigError with a message naming each bad variable (no
    secrets). Whether they are complete for the chosen provider is `relay.providers.table.load_settings`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            loc = ".".join(str(p) for p in err["loc"]).upper()
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}" if loc else msg)
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
