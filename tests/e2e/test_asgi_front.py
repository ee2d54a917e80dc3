"""`/ws` in front of Quart (relay.server.asgi_ws) on the real relay and simulators: a browser that leaves while its
avatar is still starting — when nothing reads its socket — ends the conversation at once (the agent's conversation is
closed while the avatar's `streaming.new` is still pending), as it did when quart-trio's reader task noticed the
disconnect; and only `/ws` goes past Quart (another WebSocket path is Quart's 404 before any upgrade)."""

from __future__ import annotations

import pytest
from trio_websocket import HandshakeError, open_websocket_url

from tests.support.harness import running_relay


async def test_a_browser_leaving_during_the_avatars_start_ends_the_conversation_at_once() -> None:
    async with running_relay(relay_setup_timeout=120.0, relay_avatar_connect_timeout=120.0) as relay:
        await relay.faults("heygen", latency_ms={"streaming.new": 60_000})  # far longer than anything waits here
        async with relay.browser() as browser:
            await browser.send(type="start")
            await relay.wait_for_ledger("elevenlabs", lambda ledger: len(ledger["conversations"]) == 1,
                                        "the agent's conversation opened while the avatar starts")
        # The browser is gone (close 1000); nothing reads its socket until `ready`, which is a minute away.
        await relay.wait_for_ledger(
            "elevenlabs", lambda ledger: ledger["conversations"][0]["closed_at"] is not None,
            "the agent's conversation closed although the avatar has not answered streaming.new")


async def test_another_websocket_path_is_quarts_404_before_any_upgrade() -> None:
    async with running_relay() as relay:
        with pytest.raises(HandshakeError) as refused:
            async with open_websocket_url(relay.url.replace("http://", "ws://") + "/ws/other"):
                pass
        assert getattr(refused.value, "status_code", None) == 404
