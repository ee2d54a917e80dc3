"""avatar-relay: give an ElevenLabs Conversational AI agent a live, lip-synced avatar face."""

__version__ = "0.1.0"
