"""Logs of real conversations (relay + simulators on loopback): one line per event that matters, every line of a
conversation carries its ids (as fields in JSON), and no line ever holds a secret or an audio payload."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest

from relay.ops.logs import make_handler
from tests.support.harness import running_relay, silence, spoken_sentence

pytestmark = pytest.mark.timeout(60)

EL_KEY, HG_KEY, LA_KEY = "xi-SECRET-el-4f1b9c", "hg-SECRET-hg-77aa01", "la-SECRET-la-c0ffee"
KEYS = {"elevenlabs_api_key": EL_KEY, "heygen_api_key": HG_KEY, "liveavatar_api_key": LA_KEY}
BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{120,}")


class Captured:
    def __init__(self) -> None:
        self.relay_json = io.StringIO()
        self.relay_text = io.StringIO()
        self.everything = io.StringIO()

    def json_lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.relay_json.getvalue().splitlines()]

    def all_text(self) -> str:
        return self.relay_json.getvalue() + self.relay_text.getvalue() + self.everything.getvalue()


@contextmanager
def captured_logs() -> Iterator[Captured]:
    """The relay's lines at DEBUG in both formats, and every library's lines at INFO and above."""
    captured = Captured()
    relay_logger, root = logging.getLogger("relay"), logging.getLogger()
    handlers = [make_handler("json", captured.relay_json), make_handler("text", captured.relay_text)]
    for handler in handlers:
        handler.setLevel(logging.DEBUG)
        relay_logger.addHandler(handler)
    everything = make_handler("text", captured.everything)
    everything.setLevel(logging.INFO)
    root.addHandler(everything)
    saved = relay_logger.level, root.level
    relay_logger.setLevel(logging.DEBUG)
    root.setLevel(logging.INFO)
    try:
        yield captured
    finally:
        relay_logger.setLevel(saved[0])
        root.setLevel(saved[1])
        for handler in handlers:
            relay_logger.removeHandler(handler)
        root.removeHandler(everything)


def assert_no_secret(text: str, *more: str) -> None:
    for secret in (EL_KEY, HG_KEY, LA_KEY, "SECRET", "conversation_signature", *more):
        assert secret not in text, f"{secret!r} leaked into the logs"
    assert BASE64_RUN.search(text) is None, "something like an audio payload was logged"


async def test_a_text_mode_conversation_logs_its_events_with_ids_and_no_secret() -> None:
    with captured_logs() as logs:
        async with running_relay(relay_auth="off", **KEYS) as relay:
            async with relay.browser() as browser:
                ready = await browser.start()
                rate = ready["input_audio"]["sample_rate"]
                await browser.send(type="text", text="what are your opening hours?")
                await browser.expect("avatar_speaking")
                await browser.stream(spoken_sentence(rate) + silence(1.0, rate))
                await browser.expect("agent_response", where=lambda m: "speech" in m["text"], timeout=15)
                await browser.send(type="stop")
                await browser.expect("ended")
            await relay.wait_all_sessions_stopped("heygen")
    lines = logs.json_lines()
    conversation_id, session_id = ready["conversation_id"], ready["avatar"]["session_id"]
    ours = [line for line in lines if line["relay_id"] is not None]
    relay_id = ours[0]["relay_id"]
    assert {line["relay_id"] for line in ours} == {relay_id}
    messages = [line["message"] for line in ours]
    assert messages[0] == "conversation opened"
    ready_line = next(line for line in ours if line["message"].startswith("conversation ready"))
    assert ready_line["conversation_id"] == conversation_id and ready_line["avatar_session_id"] == session_id
    assert re.fullmatch(r"conversation ready setup=\d+\.\d{3}s avatar=heygen", ready_line["message"])
    (ended,) = [line for line in ours if line["message"].startswith("conversation ended")]
    assert re.fullmatch(r"conversation ended reason=client_stop error=None duration=\d+\.\ds degraded=False "
                        r"message=-", ended["message"])
    assert ended["conversation_id"] == conversation_id and ended["avatar_session_id"] == session_id
    # A provider's own line, from a module that knows nothing of conversations, carries the ids too.
    stopped = next(line for line in ours if line["logger"] == "relay.heygen" and "stopped" in line["message"])
    assert stopped["avatar_session_id"] == session_id and stopped["conversation_id"] == conversation_id
    text_lines = logs.relay_text.getvalue().splitlines()
    assert any(line.endswith(f"[relay_id={relay_id} conversation_id={conversation_id} "
                             f"avatar_session_id={session_id}]") and "conversation ended" in line
               for line in text_lines)
    assert_no_secret(logs.all_text(), ready["avatar"]["access_token"])


async def test_an_audio_mode_conversation_never_logs_its_session_tokens() -> None:
    with captured_logs() as logs:
        async with running_relay(relay_auth="off", relay_avatar="liveavatar", **KEYS) as relay:
            async with relay.browser() as browser:
                ready = await browser.start()
                await browser.wait_for_audio(16000)
                await browser.send(type="stop")
                await browser.expect("ended")
            ledger = await relay.wait_all_sessions_stopped("liveavatar")
    assert_no_secret(logs.all_text(), ready["avatar"]["access_token"])
    assert ready["avatar"]["session_id"] in ledger["sessions"]


async def test_upstream_errors_are_logged_with_kind_and_code_but_never_the_key() -> None:
    with captured_logs() as logs:
        async with running_relay(relay_auth="off", **KEYS) as relay:
            await relay.faults("elevenlabs", invalid_api_keys=[EL_KEY])
            await relay.faults("heygen", invalid_keys=[HG_KEY])
            async with relay.browser() as browser:
                await browser.send(type="start")
                await browser.expect("ended")
    lines = logs.json_lines()
    errors = [line["message"] for line in lines if line["message"].startswith("upstream error")]
    assert any(m.startswith("upstream error upstream=elevenlabs kind=unauthorized code=401 ") for m in errors)
    assert any(m.startswith("upstream error upstream=heygen kind=unauthorized code=") for m in errors)
    assert all(line["relay_id"] is not None for line in lines if line["message"].startswith("upstream error"))
    (ended,) = [line["message"] for line in lines if line["message"].startswith("conversation ended")]
    assert "reason=upstream_unavailable error=upstream_unavailable" in ended
    assert_no_secret(logs.all_text())
