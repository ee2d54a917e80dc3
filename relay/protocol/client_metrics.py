"""The page's own measurements of what the user lived (`client_metrics`), sans-I/O: read, bounded and rate-limited.

The page times each turn where the user is — from the end of their speech (the final `user_transcript` it is sent,
or the moment it sends a typed message) to the agent's first audio heard and to the avatar's mouth moving — plus
the avatar video's freezes and how far its captions trail the voice, and reports them in a `client_metrics` text
frame (docs/protocol.md). A page is not trusted: a report is at most MAX_REPORT_CHARS characters, holds at most
MAX_TURNS turns and MAX_FREEZES freezes, every number is bounded, and it carries values only — the labels they
are exported under come from what the relay knows itself (the conversation's avatar provider). A report that
breaks any of that, or comes faster than `ReportGate` lets through, is dropped (`DroppedClientMetrics`, logged by
the conversation), never an error to the conversation. No I/O, no clock of its own (`now` comes from the caller).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

MAX_REPORT_CHARS: Final = 2048  # a full report (8 turns, 16 freezes) is under 1 KiB
MAX_TURNS: Final = 8
MAX_FREEZES: Final = 16
MAX_MS: Final = 120_000.0  # no measured span of a turn is longer than two minutes; a freeze no longer either
# The relay lets a conversation report a burst of REPORT_BURST at once, then one every REPORT_EVERY seconds (the page
# reports at most every 5 s, and once more when the conversation ends).
REPORT_BURST: Final = 3
REPORT_EVERY: Final = 4.0

DropReason = Literal["oversized", "malformed", "too_frequent"]

_Ms = Annotated[float, Field(ge=0.0, le=MAX_MS, allow_inf_nan=False, strict=True)]  # JSON numbers only


class _Strict(BaseModel):
    # Unknown fields are ignored (a newer page may measure more); they never reach a metric or a label.
    model_config = ConfigDict(extra="ignore", frozen=True)


class TurnTimings(_Strict):
    """One turn as the user lived it, in milliseconds; a figure the page could not measure is None.
    `event_id`: the agent turn it is (the `event_id` of its `agent_response`), for the turn's trace span."""

    event_id: Annotated[StrictInt, Field(ge=0, le=2**31)] | None = None
    speech_to_audio_ms: _Ms | None = None
    speech_to_mouth_ms: _Ms | None = None
    caption_offset_ms: _Ms | None = None


class ClientMetrics(_Strict):
    """A valid `client_metrics` frame: the turns finished since the last report, and the avatar video's freezes
    (each one's length) seen meanwhile."""

    type: Literal["client_metrics"]
    turns: Annotated[tuple[TurnTimings, ...], Field(max_length=MAX_TURNS)] = ()
    freezes_ms: Annotated[tuple[_Ms, ...], Field(max_length=MAX_FREEZES)] = ()


@dataclass(frozen=True, slots=True)
class DroppedClientMetrics:
    """A `client_metrics` frame the relay does not take, and why (`detail`: safe to log, bounded)."""

    reason: DropReason
    detail: str = ""


def read_report(raw: dict[str, Any], size: int) -> ClientMetrics | DroppedClientMetrics:
    """A parsed `client_metrics` frame (`raw`, `size` characters of text) as a report, or the reason it is dropped."""
    if size > MAX_REPORT_CHARS:
        return DroppedClientMetrics("oversized", f"{size} characters (at most {MAX_REPORT_CHARS})")
    try:
        return ClientMetrics.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "frame"
        return DroppedClientMetrics("malformed", f"{where[:80]}: {first['msg'][:120]}")


class ReportGate:
    """How often one conversation's reports are taken: a bucket of REPORT_BURST reports that refills one every
    REPORT_EVERY seconds. `take(now)` says whether a report arriving at `now` (seconds, any monotonic clock) is
    taken; one that is not is dropped as `too_frequent`."""

    def __init__(self, burst: int = REPORT_BURST, every: float = REPORT_EVERY) -> None:
        self._burst = burst
        self._every = every
        self._tokens = float(burst)
        self._at: float | None = None

    def take(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(float(self._burst), self._tokens + max(0.0, now - self._at) / self._every)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
