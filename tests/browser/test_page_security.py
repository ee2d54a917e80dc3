"""The page under its own security headers: a whole conversation with no Content-Security-Policy violation (every
violation event and console message is recorded), and a page on another origin cannot frame it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests.browser.conftest import wait_until
from tests.support.httpserver import answering

pytestmark = pytest.mark.timeout(120)

RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""


def test_a_whole_conversation_runs_under_the_pages_own_csp(relays, browsers) -> None:
    relay = relays("liveavatar")
    context = browsers("speech").new_context(viewport={"width": 1280, "height": 760})
    context.set_default_timeout(15_000)
    console: list[str] = []
    try:
        page = context.new_page()
        page.add_init_script(RECORD_VIOLATIONS)
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: console.append(f"page error: {exc}"))
        response = page.goto(relay.url + "/")
        assert "default-src 'none'" in response.headers["content-security-policy"]
        page.get_by_role("button", name="Start").click()
        page.wait_for_function("() => window.__relayDebug.conversationId !== null")
        page.wait_for_function("() => window.__relayDebug.status === 'speaking' && window.__relayDebug.mouthOpen")
        page.get_by_label("Message to the agent").fill("What can you do?")
        page.get_by_role("button", name="Send").click()
        page.locator(".entry.agent", has_text="You said").first.wait_for()
        page.get_by_role("button", name="Stop").click()
        page.get_by_role("button", name="Start").wait_for(state="visible")
        wait_until(lambda: page.get_by_role("button", name="Start").is_enabled(), 10, "Start never came back")
        assert page.evaluate("() => window.__cspViolations") == []
        assert not [m for m in console if "Content Security Policy" in m or m.startswith(("error", "page error"))]
    finally:
        context.close()


@pytest.fixture
def foreign_page() -> Iterator[Any]:
    """`foreign_page(html)`: serve `html` on another origin (another loopback port); its URL."""
    with ExitStack() as servers:
        def serve(html: str) -> str:
            body = html.encode()
            port = servers.enter_context(answering(lambda: ("text/html; charset=utf-8", body)))
            return f"http://localhost:{port}/"

        yield serve


def test_a_page_on_another_origin_cannot_frame_it(relays, browsers, foreign_page) -> None:
    relay = relays("liveavatar")
    framer = foreign_page(f'<!doctype html><iframe id="relay" src="{relay.url}/" allow="microphone" '
                          'onload="window.__framed = true"></iframe>')
    context = browsers("silence").new_context()
    try:
        page = context.new_page()
        page.goto(framer)
        page.wait_for_function("() => window.__framed === true")
        framed = [f for f in page.frames if f != page.main_frame]
        assert len(framed) == 1
        assert framed[0].evaluate("() => document.querySelector('avatar-relay') === null"), \
            "the relay's page rendered inside a foreign frame"
    finally:
        context.close()
