"""Issue 29 in real Chromium: the network cut (offline emulation) in the middle of a reply. For 3 s the page says
"reconnecting…", resumes the same conversation and goes on (acking what it has); for longer than the window it says
the conversation ended and offers a new one."""

from __future__ import annotations

import pytest

from tests.browser.conftest import wait_until
from tests.browser.test_page import debug, send_text, start

pytestmark = pytest.mark.timeout(120)


def test_a_three_second_network_cut_mid_reply_resumes_the_same_conversation(relays, open_page) -> None:
    relay = relays("liveavatar")
    page = open_page(relay, mic="silence")
    info = start(page)
    send_text(page, "What can you do?")
    page.locator(".entry.agent", has_text="You said").first.wait_for()
    page.context.set_offline(True)
    page.wait_for_function("() => window.__relayDebug.status === 'reconnecting'")
    assert "Reconnecting" in page.locator("#status").inner_text()
    page.wait_for_timeout(3000)  # the cut lasts 3 s (the scenario, not a wait for a condition)
    page.context.set_offline(False)
    page.wait_for_function("() => window.__relayDebug.resumes === 1 && !window.__relayDebug.reconnecting")
    after = debug(page)
    assert after["conversationId"] == info["conversationId"] and after["endedReason"] is None
    assert page.locator(".entry.agent", has_text="You said").count() == 1  # the captions stayed, not doubled
    send_text(page, "And after the cut?")
    page.locator(".entry.agent", has_text="After the cut").first.wait_for()
    # The page acks what it has (the relay then forgets it): 5 s after the answer, and the relay takes it.
    page.wait_for_function("() => window.__relayDebug.sent.includes('ack')")
    page.get_by_role("button", name="Stop").click()
    page.wait_for_function("() => window.__relayDebug.endedReason === 'client_stop'")
    ledger = relay.ledger("elevenlabs")
    assert sum(1 for c in ledger["conversations"] if c["id"] == info["conversationId"]) == 1


def test_a_cut_longer_than_the_window_ends_the_conversation_and_offers_a_new_one(relays, open_page) -> None:
    relay = relays("liveavatar", RELAY_RESUME_WINDOW="2")
    page = open_page(relay, mic="silence")
    start(page)
    send_text(page, "What can you do?")
    page.locator(".entry.agent", has_text="You said").first.wait_for()
    page.context.set_offline(True)
    page.wait_for_function("() => window.__relayDebug.status === 'reconnecting'")
    page.wait_for_function("() => window.__relayDebug.endedReason !== null", timeout=20_000)
    page.context.set_offline(False)
    assert "ended" in page.locator("#status").inner_text()
    assert page.get_by_role("button", name="Start").is_enabled()
    wait_until(lambda: all(s.get("stopped_at") or s.get("stopped") for s in
                           relay.ledger("liveavatar")["sessions"].values()), 15, "the avatar session never stopped")
