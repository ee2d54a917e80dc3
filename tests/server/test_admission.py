"""The registry's per-client counting when a token's `sub` becomes the client (no sockets)."""

from __future__ import annotations

import pytest

from relay.server.admission import AdmissionRefused, Registry


async def test_a_conversation_moves_from_its_address_to_its_tokens_sub() -> None:
    registry = Registry(10, 1)
    async with registry.admit("1.2.3.4") as first, registry.admit("5.6.7.8") as second:
        await registry.reassign(first, "sub:alice")
        async with registry.admit("1.2.3.4"):  # the address is free again
            pass
        with pytest.raises(AdmissionRefused, match="for this user"):
            await registry.reassign(second, "sub:alice")
        with pytest.raises(AdmissionRefused, match="for this user"):
            async with registry.admit("sub:alice"):
                pass
        with pytest.raises(AdmissionRefused, match="from your address"):
            async with registry.admit("5.6.7.8"):
                pass
    assert registry.open_count == 0
    async with registry.admit("sub:alice"):
        pass
