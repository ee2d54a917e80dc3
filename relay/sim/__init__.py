"""Simulators of the upstream services (ElevenLabs ConvAI, HeyGen Streaming v1, LiveAvatar).

Each is an ASGI app that hypercorn can serve alone; `relay.sim.runner` serves them together. They import nothing
from the relay itself, so a bug in the relay's protocol code cannot hide in both sides at once.
"""

__all__ = ["elevenlabs_sim", "faults", "heygen_sim", "liveavatar_sim", "runner"]
