"""`avatar_changed` in a real Chromium against the real relay in demo mode (issue #23 §3): the avatar's session is
ended by the provider mid-conversation; the relay replaces it, the page changes faces without a reload and with no
console error, and the captions go on."""

from __future__ import annotations

import json
import urllib.request

import pytest

from relay.avatars.common import PLACEHOLDER_API_KEY
from tests.browser.test_page import debug, send_text, start

pytestmark = pytest.mark.timeout(120)


def end_session(simulator: str, session_id: str) -> None:
    """The provider ends the session (LiveAvatar's stop, as its dashboard would)."""
    request = urllib.request.Request(simulator + "/v1/sessions/stop", method="POST",
                                     data=json.dumps({"session_id": session_id, "reason": "USER_CLOSED"}).encode(),
                                     headers={"content-type": "application/json", "X-API-KEY": PLACEHOLDER_API_KEY})
    with urllib.request.urlopen(request, timeout=5.0) as response:
        assert response.status == 200


def captioned_words(page: object) -> int:
    return int(page.evaluate("() => window.__relayDebug.captionLog.length"))  # type: ignore[attr-defined]


def test_the_page_changes_faces_when_the_avatar_is_replaced_and_the_captions_go_on(relays, open_page) -> None:
    relay = relays("liveavatar")
    page = open_page(relay, mic="silence")
    info = start(page)
    first = info["avatarSessionId"]
    assert first is not None
    send_text(page, "What can you do?")
    page.wait_for_function("() => window.__relayDebug.captionLog.length > 0")
    end_session(relay.simulators["liveavatar"], first)
    page.wait_for_function("() => window.__relayDebug.avatarChanges === 1")
    state = debug(page)
    assert state["avatarSessionId"] not in (None, first)
    assert page.locator("#sim-face").get_attribute("data-variant") == "1"
    # the face is the <avatar-relay> element's, in its shadow root (read directly, not through a locator)
    assert page.evaluate("() => window.__relayRoot.getElementById('sim-face').dataset.variant") == "1"
    assert page.locator("#sim-face").is_visible()
    page.locator(".entry.system", has_text="The avatar was replaced").wait_for()
    before = captioned_words(page)
    send_text(page, "What else can you do?")
    page.wait_for_function(f"() => window.__relayDebug.captionLog.length > {before}")
    assert debug(page)["conversationId"] == info["conversationId"]  # the same conversation, no reload
