"""The process tests' own helper (tests/support/processes.py): a relay whose port was taken between `free_port` and
its bind is started again on another port, so a full run does not fail on a port another process happened to take."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx2
import pytest

import tests.support.processes as processes
from tests.faults.test_process_faults import base_env
from tests.support.processes import relay_process

ROOT = Path(__file__).resolve().parents[2]


async def test_a_relay_whose_port_was_taken_is_started_on_another(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real_free_port = processes.free_port
    ports = iter([taken.getsockname()[1]])
    monkeypatch.setattr(processes, "free_port", lambda: next(ports, None) or real_free_port())
    try:
        async with relay_process(base_env(XDG_STATE_HOME=str(tmp_path)), ROOT) as (process, url):
            assert process.poll() is None
            assert url != f"http://127.0.0.1:{taken.getsockname()[1]}"
            async with httpx2.AsyncClient(timeout=5) as http:
                assert (await http.get(url + "/healthz")).status_code == 200
    finally:
        taken.close()
