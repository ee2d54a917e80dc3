"""The benchmark of the relay against a minimal baseline (`python -m bench`; see docs/performance.md)."""
