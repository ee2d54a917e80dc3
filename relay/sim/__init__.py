"""Simulators of the upstream services (ElevenLabs ConvAI, HeyGen Streaming v1, LiveAvatar).

Each is an ASGI app that hypercorn can serve alone; `relay.sim.runner` serves them together. They import nothing
from the relay itself, so a bug in the relay's protocol code cannot hide in both sides at once. `http_keepalive`
is the one piece they share with the relay (which imports it from here): the ASGI guard that keeps quart-trio from
cancelling hypercorn's connection recycling, without which a kept-alive connection can lose a request.
"""

__all__ = ["elevenlabs_sim", "faults", "heygen_sim", "http_keepalive", "liveavatar_sim", "runner"]
