"""The page in real headless Chromium against the relay in demo mode (simulated agent and avatars).

Each test drives the page the way a user does — buttons found by their accessible names, a fake microphone
playing a spoken sentence — and checks what the user sees and hears (captions, status line, the face's mouth, the
output level) and what the upstream services saw (the simulators' ledgers). Any console error fails the test.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from relay.sim.elevenlabs_sim import DEFAULT_FAULTS as AGENT_DEFAULT_FAULTS
from tests.browser.conftest import REPO, Relay, wait_until

pytestmark = pytest.mark.timeout(120)  # the first test also starts Chromium and may fetch livekit-client

ARTIFACTS = REPO / "tests" / ".artifacts"


def debug(page: Any) -> dict[str, Any]:
    return page.evaluate("() => JSON.parse(JSON.stringify(window.__relayDebug))")  # type: ignore[no-any-return]


def start(page: Any) -> dict[str, Any]:
    page.get_by_role("button", name="Start").click()
    page.wait_for_function("() => window.__relayDebug.conversationId !== null")
    return debug(page)


def send_text(page: Any, text: str) -> None:
    page.get_by_label("Message to the agent").fill(text)
    page.get_by_role("button", name="Send").click()


def wait_for_agent_speaking(page: Any) -> None:
    page.wait_for_function("() => window.__relayDebug.status === 'speaking' && window.__relayDebug.mouthOpen")


def status_text(page: Any) -> str:
    return str(page.locator("#status").inner_text())


@contextmanager
def agent_faults(relay: Relay, **faults: Any) -> Iterator[None]:
    """Set faults on the (shared) relay's ElevenLabs simulator for one test; put back its defaults afterwards."""
    relay.faults("elevenlabs", faults)
    try:
        yield
    finally:
        relay.faults("elevenlabs", {key: AGENT_DEFAULT_FAULTS[key] for key in faults})


@contextmanager
def slow_speech(relay: Relay) -> Iterator[None]:
    """The agent (and HeyGen's own voice) speak at 300 ms a character: the greeting lasts about 17 s, so the page
    falling silent well before that can only be the work of an interrupt."""
    relay.faults("heygen", {"ms_per_char": 300})
    try:
        with agent_faults(relay, ms_per_char=300, max_reply_s=30):
            yield
    finally:
        relay.faults("heygen", {"ms_per_char": None})


def take_screenshot(page: Any, path: Path, mouth_open: bool = True) -> None:
    """Write the page as a user sees it mid-conversation to `path` in docs/ when the page's files changed since
    the last one (their digest is kept beside it), else to tests/.artifacts/ so a test run leaves the tree clean."""
    if mouth_open:
        page.wait_for_function("() => window.__relayDebug.mouthOpenness > 0.45")
    static = REPO / "relay" / "static"
    digest = hashlib.sha256()
    for file in sorted(static.rglob("*")):
        if file.is_file():
            digest.update(file.relative_to(static).as_posix().encode() + b"\0" + file.read_bytes())
    stamp = path.with_suffix(".sha256")
    if path.exists() and stamp.exists() and stamp.read_text().strip() == digest.hexdigest():
        path = REPO / "tests" / ".artifacts" / path.name
    else:
        stamp.write_text(digest.hexdigest() + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))


def test_spoken_sentence_is_captioned_and_answered_while_the_face_speaks(relays, open_page) -> None:
    relay = relays("liveavatar")
    # No greeting: the fake microphone plays its file from the moment the page opens it, so a greeting could still
    # be playing when the sentence starts, however long the silence before it (the sentence would interrupt it).
    with agent_faults(relay, first_message=""):
        page = open_page(relay, mic="speech")
        info = start(page)
    assert info["avatarMode"] == "simulated"
    assert page.locator("#sim-face").is_visible()

    # The fake microphone speaks; the simulated agent transcribes "(N s of speech)" and replies.
    final_user = page.locator(".entry.user:not(.tentative)")
    final_user.first.wait_for(timeout=20_000)
    heard = re.search(r"(\d+\.\d) s of speech", final_user.first.inner_text())
    assert heard, final_user.first.inner_text()
    # The sentence lasts about 3.5 s: audio sent at any other rate than the announced one would not.
    assert 2.5 <= float(heard.group(1)) <= 4.5
    reply = page.locator(".entry.agent", has_text="Turn 1")
    reply.wait_for(timeout=15_000)
    # The reply plays: the mouth moves with the agent's audio.
    wait_for_agent_speaking(page)
    take_screenshot(page, ARTIFACTS / "screenshot-spoken.png")  # docs/ has the demo ones (test_page_demo.py)
    assert page.locator(".entry.agent").count() == 1  # the reply only: there was no greeting to interrupt

    state = debug(page)
    assert state["framesSent"] > 20, "the microphone must stream PCM frames to the relay"
    assert state["mouthMoves"] >= 1 and state["maxOutputRms"] > 0.01  # the mouth opened with the reply
    assert "user_transcript" in state["received"] and "avatar_state" in state["received"]
    heard_by_agent = agent_conversation(relay, info["conversationId"])
    assert heard_by_agent["user_audio_seconds"] > 5
    # Default RELAY_CLIENT_FRAME_MS: 60 ms frames of 16 kHz PCM16, 1,920 bytes each.
    assert heard_by_agent["user_audio_bytes"] == 1920 * heard_by_agent["user_audio_chunks"]


def test_the_microphone_frame_length_follows_the_relays_setting(relays, open_page) -> None:
    relay = relays("none", RELAY_CLIENT_FRAME_MS="200")
    page = open_page(relay, mic="speech")
    info = start(page)

    def chunks() -> dict[str, Any] | None:
        record = agent_conversation(relay, info["conversationId"])
        return record if record["user_audio_chunks"] >= 10 else None

    record = wait_until(chunks, 20, "ten microphone frames reach the agent")
    assert record["user_audio_bytes"] == 6400 * record["user_audio_chunks"]  # 200 ms of 16 kHz PCM16 each


def interrupt_and_wait_for_silence(page: Any) -> None:
    """Press Interrupt; the face's mouth must close and the agent's voice stop. The greeting is slow (see
    slow_speech): silence within the generous 10 s bound comes from the interrupt, not from the greeting's end."""
    page.get_by_role("button", name="Interrupt").click()
    page.wait_for_function("() => !window.__relayDebug.mouthOpen && window.__relayDebug.outputRms < 0.001",
                           timeout=10_000)


def test_interrupt_button_silences_the_heygen_avatar_and_reaches_heygen(relays, open_page) -> None:
    relay = relays("heygen")
    with slow_speech(relay):
        page = open_page(relay, mic="silence")
        info = start(page)
        wait_for_agent_speaking(page)
        interrupt_and_wait_for_silence(page)
    assert "interrupt" in debug(page)["sent"]

    def interrupted() -> bool:
        session = relay.ledger("heygen")["sessions"][info["avatarSessionId"]]
        return bool(session["interrupts"]["count"] >= 1)

    wait_until(interrupted, 5, "HeyGen's ledger shows no streaming.interrupt for the session")
    assert relay.ledger("heygen")["requests"].get("streaming.interrupt", 0) >= 1


def test_interrupt_button_silences_the_liveavatar_avatar_and_reaches_liveavatar(relays, open_page) -> None:
    relay = relays("liveavatar")
    with slow_speech(relay):
        page = open_page(relay, mic="silence")
        info = start(page)
        wait_for_agent_speaking(page)
        interrupt_and_wait_for_silence(page)
    wait_until(lambda: relay.ledger("liveavatar")["sessions"][info["avatarSessionId"]]["lite"]["interrupts"],
               5, "LiveAvatar's ledger shows no agent.interrupt for the session")


def agent_conversation(relay: Any, conversation_id: str) -> dict[str, Any]:
    conversations = relay.ledger("elevenlabs")["conversations"]
    return next(c for c in conversations if c["id"] == conversation_id)


def test_typed_message_is_shown_answered_and_rated(relays, open_page) -> None:
    relay = relays("liveavatar")
    page = open_page(relay, mic="silence")
    info = start(page)
    send_text(page, "What can you do?")
    page.locator(".entry.typed", has_text="What can you do?").wait_for()
    reply = page.locator(".entry.agent", has_text="You said")
    reply.wait_for()
    assert page.get_by_label("Message to the agent").input_value() == ""
    assert agent_conversation(relay, info["conversationId"])["user_messages"] == ["What can you do?"]

    reply.get_by_role("button", name="Good reply").click()
    assert reply.get_by_role("button", name="Good reply").get_attribute("aria-pressed") == "true"
    wait_until(lambda: agent_conversation(relay, info["conversationId"])["feedback"], 5,
               "the agent never received the feedback")
    assert agent_conversation(relay, info["conversationId"])["feedback"][0]["score"] == "like"


def test_tool_call_is_answered_with_an_error_unless_the_page_registers_the_tool(relays, open_page) -> None:
    page = open_page(relays("liveavatar"), mic="silence")
    start(page)

    send_text(page, "Which tool tells the time?")
    page.locator(".entry.system", has_text="Tool call: get_time").first.wait_for()
    page.wait_for_function("() => window.__relayDebug.toolResults.length === 1")
    first = debug(page)["toolResults"][0]
    assert first["is_error"] is True and "no client tool" in first["result"]

    page.evaluate("() => { window.relayTools = { get_time: async () => 'half past nine' }; }")
    send_text(page, "Use the tool again please")
    page.locator(".entry.agent", has_text="half past nine").wait_for()
    second = debug(page)["toolResults"][1]
    assert second == {**second, "is_error": False, "result": "half past nine"}


def test_stop_ends_the_conversation_stops_the_avatar_and_allows_a_fresh_start(relays, open_page) -> None:
    relay = relays("liveavatar")
    page = open_page(relay, mic="silence")
    first = start(page)
    page.locator(".entry.agent").first.wait_for()

    page.get_by_role("button", name="Stop").click()
    page.wait_for_function("() => window.__relayDebug.status === 'ended'")
    assert status_text(page) == "Conversation ended: you stopped it."
    assert debug(page)["endedReason"] == "client_stop"
    assert page.get_by_role("button", name="Start").is_enabled()
    assert page.get_by_role("button", name="Stop").is_disabled()
    assert page.get_by_label("Message to the agent").is_disabled()
    wait_until(lambda: relay.ledger("liveavatar")["sessions"][first["avatarSessionId"]]["stopped"],
               5, "LiveAvatar's ledger shows the session still running after Stop")

    second = start(page)
    assert second["conversationId"] != first["conversationId"]
    assert page.locator(".entry").count() <= 1, "a new conversation starts with fresh captions"
    page.locator(".entry.agent").first.wait_for()


def test_closing_the_page_stops_the_avatar_session(relays, open_page) -> None:
    relay = relays("heygen")
    page = open_page(relay, mic="silence")
    info = start(page)
    page.close()

    def stopped() -> bool:
        session = relay.ledger("heygen")["sessions"][info["avatarSessionId"]]
        return session["status"] == "closed" and session["stopped_at"] is not None

    wait_until(stopped, 10, "HeyGen's ledger shows the session still open after the page was closed")


def test_refused_microphone_shows_a_clear_message_and_typing_still_works(relays, open_page) -> None:
    page = open_page(relays("liveavatar"), mic="no-permission", permissions=[])
    start(page)
    notice = page.get_by_role("alert")
    notice.wait_for()
    assert "Microphone access was refused" in notice.inner_text()
    assert debug(page)["micError"] == "NotAllowedError"
    assert page.get_by_role("button", name="Mute").is_disabled()

    send_text(page, "Hello without a microphone")
    page.locator(".entry.agent", has_text="You said").wait_for()
    assert debug(page)["framesSent"] == 0


def test_voice_only_mode_plays_the_agents_audio(relays, open_page) -> None:
    page = open_page(relays("none"), mic="silence")
    info = start(page)
    assert info["avatarMode"] == "voice"
    assert not page.locator("#sim-face").is_visible()
    page.wait_for_function("() => window.__relayDebug.outputRms > 0.01")
    state = debug(page)
    assert state["audioFramesReceived"] > 0 and state["status"] == "speaking"


def test_voice_only_page_plays_out_the_agents_goodbye_before_it_tears_down(relays, open_page) -> None:
    """The agent hangs up (close 1000) right after streaming its goodbye, faster than real time: the page plays
    the goodbye it already has before it closes its audio (it used to cut it off on `ended`)."""
    relay = relays("none")
    with agent_faults(relay, first_message="", end_call_after_reply=True):
        page = open_page(relay, mic="silence")
        start(page)
        send_text(page, "that is all, thanks")
        page.wait_for_function("() => window.__relayDebug.playingOut !== null")
        state = debug(page)
        assert state["endedReason"] is None and state["playingOut"] > 1.0  # `ended` came, the goodbye plays on
        page.wait_for_function("() => window.__relayDebug.outputRms > 0.01")
        page.wait_for_function("() => window.__relayDebug.endedReason !== null", timeout=20000)
    state = debug(page)
    assert state["endedReason"] == "agent_ended" and state["playingOut"] is None
    assert status_text(page) == "Conversation ended: the agent ended the conversation."


def test_agent_error_ends_with_a_clear_message_and_start_is_offered_again(relays, open_page) -> None:
    relay = relays("none")
    relay.faults("elevenlabs", {"close_code": 1011, "close_reason": "simulated failure", "close_after_ms": 300})
    try:
        page = open_page(relay, mic="silence")
        start(page)
    finally:
        relay.reset("elevenlabs")
    page.wait_for_function("() => window.__relayDebug.endedReason !== null")
    state = debug(page)
    assert state["endedReason"] == "agent_error" and state["error"]["code"] == "agent_error"
    assert status_text(page).startswith("Conversation ended: the agent reported an error")
    assert page.get_by_role("button", name="Start").is_enabled()


def test_configured_livekit_client_is_importable_by_the_page(relays, open_page) -> None:
    page = open_page(relays("none"), mic="silence")
    exports = page.evaluate("""async () => {
        const config = await (await fetch('client-config.json')).json();
        const module = await import(config.livekit_client_url);
        return { room: typeof module.Room, events: typeof module.RoomEvent, track: typeof module.Track };
    }""")
    assert exports == {"room": "function", "events": "object", "track": "function"}


def test_page_fits_a_phone_screen(relays, open_page) -> None:
    page = open_page(relays("none"), mic="silence")
    page.set_viewport_size({"width": 375, "height": 740})
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    for name in ("Start", "Mute", "Interrupt", "Stop", "Send"):
        box = page.get_by_role("button", name=name).bounding_box()
        assert box is not None and box["height"] >= 44 and box["x"] + box["width"] <= 375


def test_a_conversation_works_from_the_keyboard_alone(relays, open_page) -> None:
    page = open_page(relays("none"), mic="silence")
    page.keyboard.press("Tab")
    assert page.evaluate("() => __relayRoot.activeElement?.textContent") == "Skip to the captions"
    page.keyboard.press("Tab")
    assert page.evaluate("() => __relayRoot.activeElement?.id") == "start"
    page.keyboard.press("Enter")
    page.wait_for_function("() => __relayRoot.activeElement?.id === 'text-input'")
    page.keyboard.type("Typed from the keyboard")
    page.keyboard.press("Enter")
    page.locator(".entry.agent", has_text="You said: Typed from the keyboard").wait_for()


def test_unavailable_avatar_is_announced_and_the_agent_is_still_heard(relays, open_page) -> None:
    relay = relays("liveavatar")
    relay.faults("liveavatar", {"no_credits": True})
    try:
        page = open_page(relay, mic="silence")
        page.get_by_role("button", name="Start").click()
        notice = page.get_by_role("alert")
        notice.wait_for()
        page.wait_for_function("() => window.__relayDebug.conversationId !== null")
    finally:
        relay.faults("liveavatar", {"no_credits": False})
    assert "voice only" in notice.inner_text()
    assert debug(page)["avatarMode"] == "voice"
    page.wait_for_function("() => window.__relayDebug.outputRms > 0.01")


LIVEKIT_SHA384 = "sha384-Fdl/3YF53OfPCw7/DOpOaBHl0jTR+alUeSH6OX/ThjI9KYpX8W5dLMKoeMm0lhSG"  # npm's 2.15.7 build


@pytest.mark.parametrize("integrity", [LIVEKIT_SHA384, "sha384-" + "A" * 64])
def test_livekit_client_runs_only_with_its_pinned_integrity(relays, open_page, integrity: str) -> None:
    """L4 of the security review: the page checks the module's Subresource Integrity before it runs (a CDN that
    serves anything else gets nothing run), and the CSP names that one file, not the CDN."""
    page = open_page(relays("none", RELAY_LIVEKIT_CLIENT_INTEGRITY=integrity), mic="silence")
    result = page.evaluate("""async () => {
        const config = await (await fetch('client-config.json')).json();
        const { loadModule } = await import('./static/livekit.js');
        try {
            const module = await loadModule(config.livekit_client_url, config.livekit_client_integrity);
            return typeof module.Room;
        } catch (err) { return 'refused'; }
    }""")
    assert result == ("function" if integrity == LIVEKIT_SHA384 else "refused")
    if integrity != LIVEKIT_SHA384:  # the browser says why it refused, as it should
        errors = open_page.problems.errors
        assert errors and all("integrity" in error.lower() for error in errors), errors
        errors.clear()
    csp = page.evaluate("async () => (await fetch('/')).headers.get('content-security-policy')")
    script_src = next(d for d in csp.split("; ") if d.startswith("script-src")).split()[1:]
    assert script_src == ["'self'", "blob:"]
