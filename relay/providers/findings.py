"""The doctor's language (`avatar-relay doctor`): a `Finding` is `ok`, a `problem` (the relay will not work as
configured) or a `note` (worth knowing), said about one service in plain words. Plain data: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Level = Literal["ok", "problem", "note"]


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    service: str  # "configuration", "ElevenLabs", a provider's title, "Redis", "journal"
    text: str


def ok(service: str, text: str) -> Finding:
    return Finding("ok", service, text)


def problem(service: str, text: str) -> Finding:
    return Finding("problem", service, text)


def note(service: str, text: str) -> Finding:
    return Finding("note", service, text)


def dig(data: Any, *keys: str) -> Any:
    """`data[k1][k2]...`, or None where a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def key_refused(found: list[Finding]) -> bool:
    """Whether the findings say the API key was refused (then nothing else can be read with it)."""
    return any(f.level == "problem" and "_API_KEY was refused" in f.text for f in found)


def any_ok(found: list[Finding]) -> bool:
    return any(f.level == "ok" for f in found)


def sessions_note(service: str, count: int, advice: str) -> Finding:
    """How many sessions run on the account now (`advice`: what to make of a non-zero count)."""
    if count == 0:
        return ok(service, "no sessions are running on the account now.")
    return note(service, f"{count} session(s) are running on the account now ({advice}).")


CHECK_TIMEOUT = 10.0  # seconds one of the doctor's requests may take
