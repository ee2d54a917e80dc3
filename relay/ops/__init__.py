"""Running the relay in production: the crash `journal` of avatar sessions and its `reaper`, the `fleet` (Redis) and
its sessions and probe, Prometheus `metrics`, per-conversation `transcripts`, the `doctor`'s checks, and `logs` (text
or JSON lines carrying conversation ids). They read conversation records (`relay.conversation.record`) and never
import the web layer. Import the module you need: this package loads none of them."""
