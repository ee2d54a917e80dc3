"""`avatar-relay doctor` reports a damaged journal moved aside at a start-up (a problem until reaped and deleted) and a
state directory the relay could not use; nothing when the journal is healthy."""

from __future__ import annotations

from pathlib import Path

from relay.config import load_settings
from relay.ops.doctor import journal_findings
from relay.ops.journal import JOURNAL_FILE, open_journal


def settings(state: Path, **values: object) -> object:
    return load_settings(_env_file=None, elevenlabs_agent_id="a", elevenlabs_api_key="k", relay_avatar="heygen",
                         heygen_api_key="h", heygen_avatar_id="Wayne", relay_auth="off", relay_state_dir=str(state),
                         **values)


async def test_a_moved_aside_journal_is_a_problem_saying_what_to_do(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_FILE).write_bytes(b"not a database" * 10)
    async with open_journal(tmp_path):
        pass
    (finding,) = journal_findings(settings(tmp_path))  # type: ignore[arg-type]
    assert finding.level == "problem" and finding.service == "journal"
    assert ".damaged-" in finding.text and "avatar-relay reap" in finding.text and "delete" in finding.text


async def test_a_healthy_state_directory_is_ok(tmp_path: Path) -> None:
    async with open_journal(tmp_path):
        pass
    (finding,) = journal_findings(settings(tmp_path))  # type: ignore[arg-type]
    assert finding.level == "ok"


def test_a_state_directory_that_cannot_be_created_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    (finding,) = journal_findings(settings(tmp_path / "a-file" / "state"))  # type: ignore[arg-type]
    assert finding.level == "problem" and "RELAY_STATE_DIR" in finding.text


def test_no_journal_no_finding(tmp_path: Path) -> None:
    assert journal_findings(settings(tmp_path, relay_journal=False)) == []  # type: ignore[arg-type]
