"""The choice of avatar provider by configuration (RELAY_AVATAR): one place that knows every provider module."""

from __future__ import annotations

import httpx2

from relay.avatars import AvatarProvider
from relay.config import Settings


def make_provider(settings: Settings, http: httpx2.AsyncClient) -> AvatarProvider | None:
    """The configured provider, or None for voice only (`RELAY_AVATAR=none`)."""
    choice = settings.avatar
    if choice == "none":
        return None
    if choice == "heygen":
        from relay.heygen import HeyGenProvider

        return HeyGenProvider(settings, http)
    from relay.liveavatar import LiveAvatarProvider

    return LiveAvatarProvider(settings, http)
