"""Running the relay in production: the crash `journal` of avatar sessions and its reaper, Prometheus `metrics`,
per-conversation `transcripts`, the `doctor`'s checks, and `logs` (text or JSON lines carrying conversation ids).
They read conversation records (`relay.conversation.record`) and never import the web layer."""

from relay.ops import doctor, journal, logs, metrics, transcripts

__all__ = ["doctor", "journal", "logs", "metrics", "transcripts"]
