"""A dead relay's Simli sessions in the journal: Simli has no list and no stop by id, so the sweep forgets them and
says what bounds them (SIMLI_MAX_IDLE_TIME, SIMLI_MAX_SESSION_LENGTH) instead of failing on them forever; `avatar-relay
reap`'s list of running sessions has no Simli entries."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx2
import pytest
from pydantic import SecretStr

from relay.config import Settings
from relay.ops.journal import open_journal
from relay.ops.reaper import reap_orphans
from relay.providers import table as registry


def simli_settings() -> Settings:
    return Settings(_env_file=None, elevenlabs_agent_id="agent", relay_avatar="simli",  # type: ignore[call-arg]
                    simli_api_key=SecretStr("sm-key"), simli_face_id="face", simli_max_idle_time=90,
                    relay_max_duration=600)


async def test_an_orphaned_simli_session_is_forgotten_with_its_bound_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with open_journal(tmp_path) as writer:
        writer._pid, writer._pid_started = 999_999, "gone"
        await writer.opened("simli", "simli-session-1", "http://127.0.0.1:9")  # nothing listens: nothing is called
    caplog.set_level(logging.INFO, logger="relay.simli")
    async with open_journal(tmp_path) as journal, httpx2.AsyncClient() as http:
        result = await reap_orphans(simli_settings(), http, journal)
        assert await journal.entries() == []
    assert result.stopped == ["simli-session-1"] and result.failed == []
    assert "ends by itself within SIMLI_MAX_IDLE_TIME (90 s) of its last audio, at most SIMLI_MAX_SESSION_LENGTH " \
           "(660 s)" in caplog.text


async def test_simli_lists_no_running_sessions_for_reap() -> None:
    async with httpx2.AsyncClient() as http:
        assert await registry.list_running_ids(simli_settings(), http) == []
    assert registry.base_url(simli_settings(), "simli") == "https://api.simli.ai"
