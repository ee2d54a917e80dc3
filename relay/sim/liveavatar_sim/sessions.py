"""The simulated LiveAvatar account: its avatar catalogue, default faults, and the sessions (`SimSession`) held in
`SimState`."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

from relay.sim.faults import SimLedger
from relay.sim.lite_socket import LiteLedger, LiteSocketSimulator

SANDBOX_AVATAR_ID = "dd73ea75-1218-4ef3-92ce-606d5f7fbc0a"
SIMULATED_LIVEKIT_URL = "wss://livekit.simulated.invalid"
STOP_REASONS = frozenset({
    "UNKNOWN", "USER_DISCONNECTED", "SERVER_ERROR", "IDLE_TIMEOUT", "NO_CREDITS", "USER_CLOSED",
    "AVATAR_DELETED", "MAX_DURATION_REACHED", "ZOMBIE_SESSION_REAP", "AGENT_HANG_UP",
})
QUALITIES = frozenset({"very_high", "high", "medium", "low"})
ENCODINGS = frozenset({"VP8", "H264"})

AVATARS: list[dict[str, Any]] = [
    {"id": SANDBOX_AVATAR_ID, "name": "Sandbox Avatar", "type": "PUBLIC", "status": "ACTIVE",
     "preview_url": "https://files.simulated.invalid/sandbox.webp",
     "default_voice": {"id": "sim-voice-1", "name": "Sim Voice"}, "is_sandbox": True},
    {"id": "6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01", "name": "Simulated Ada", "type": "PUBLIC", "status": "ACTIVE",
     "preview_url": "https://files.simulated.invalid/ada.webp",
     "default_voice": {"id": "sim-voice-2", "name": "Ada"}, "is_sandbox": False},
]

DEFAULT_FAULTS: dict[str, Any] = {
    "latency_ms": {},
    "fail": {},
    "invalid_keys": [],
    "no_credits": False,
    "concurrency_limit": None,
    "idle_timeout_s": 300.0,
    "sandbox_duration_s": 60.0,
    "close_ws_after_ms": None,
    "suppress_connected": False,
    "connected_delay_ms": 0,
    "withhold_connected": False,
    "render_delay_ms": 300,
    "livekit_url": None,
    "after_commit": "drop",
    "tier_max_session_duration_s": 7200,
    "record_audio": False,
    "drop_ws_after_audio_bytes": None,
    "unreported_max_duration_s": None,
}


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------------
# Sessions


@dataclass(slots=True)
class SimSession:
    session_id: str
    session_token: str
    ws_token: str
    avatar_id: str
    is_sandbox: bool
    mode: str
    max_session_duration: int
    created: float
    created_at: datetime
    started: float | None = None
    stopped: float | None = None
    expired: float | None = None
    ended_at: datetime | None = None
    stop_reason: str | None = None
    end_reason: str | None = None
    last_activity: float = 0.0
    rest_keep_alives: int = 0
    ws_connects: int = 0
    stop_calls: int = 0
    lite: LiteLedger = field(default_factory=LiteLedger)
    sockets: set[LiteSocketSimulator] = field(default_factory=set)
    watchdog: trio.CancelScope | None = None

    @property
    def active(self) -> bool:
        return self.stopped is None and self.expired is None

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def end(self, reason: str, *, expired: bool) -> None:
        now = time.monotonic()
        if expired:
            self.expired = now
        else:
            self.stopped = now
        self.end_reason = reason
        self.ended_at = datetime.now(UTC)
        if self.watchdog is not None:
            self.watchdog.cancel()
        for sock in list(self.sockets):
            sock.close(1000)

    def to_ledger(self) -> dict[str, Any]:
        return {
            "created": self.created, "started": self.started, "stopped": self.stopped, "expired": self.expired,
            "stop_reason": self.stop_reason, "end_reason": self.end_reason, "is_sandbox": self.is_sandbox,
            "avatar_id": self.avatar_id, "mode": self.mode, "max_session_duration": self.max_session_duration,
            "rest_keep_alives": self.rest_keep_alives, "ws_connects": self.ws_connects,
            "stop_calls": self.stop_calls, "open_sockets": len(self.sockets), "lite": self.lite.to_json(),
        }

    def credits_consumed(self, end: datetime) -> float:
        # One credit per started minute of a non-sandbox session (sandbox sessions are free).
        if self.is_sandbox or self.started is None:
            return 0.0
        return float(math.ceil(max(0.0, (end - self.created_at).total_seconds()) / 60))

    def to_api(self) -> dict[str, Any]:
        end = self.ended_at or datetime.now(UTC)
        item: dict[str, Any] = {
            "id": self.session_id, "created_at": self.created_at.isoformat(), "updated_at": end.isoformat(),
            "duration": int((end - self.created_at).total_seconds()), "source": "API", "mode": self.mode,
            "is_sandbox": self.is_sandbox, "credits_consumed": self.credits_consumed(end),
        }
        if not self.active:
            item["end_at"] = end.isoformat()
            item["end_reason"] = self.end_reason
        return item


class SimState(SimLedger[SimSession]):
    def __init__(self) -> None:
        super().__init__(DEFAULT_FAULTS)

    def reset(self) -> None:
        for session in self.sessions.values():
            if session.active:
                session.end("UNKNOWN", expired=True)
        self.clear()

    def active_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.active)
