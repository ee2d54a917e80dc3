"""relay/server/worker_metrics.py: the workers' metrics merged into one exposition, with no processes."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from relay.ops.metrics import RelayMetrics
from relay.server.worker_metrics import merge_expositions


def _families(text: bytes) -> dict[str, tuple[str, str]]:
    return {f.name: (f.type, f.documentation) for f in text_string_to_metric_families(text.decode())}


def test_merged_metrics_keep_names_types_and_help_and_label_every_sample_with_its_worker() -> None:
    one, two = RelayMetrics(avatar="heygen"), RelayMetrics(avatar="heygen")
    one.refused.labels("capacity").inc()
    two.refused.labels("capacity").inc(2)
    merged = merge_expositions({0: one.render(), 1: two.render(), 2: None})
    families = _families(merged)
    for name, kind in _families(one.render()).items():
        assert families[name] == kind
    samples = [s for f in text_string_to_metric_families(merged.decode()) for s in f.samples]
    assert all("worker" in s.labels for s in samples)
    refused = {s.labels["worker"]: s.value for s in samples if s.name == "avatar_relay_conversations_refused_total"}
    assert refused == {"0": 1.0, "1": 2.0}
    up = {s.labels["worker"]: s.value for s in samples if s.name == "avatar_relay_worker_up"}
    assert up == {"0": 1.0, "1": 1.0, "2": 0.0}
    assert merged.count(b"# TYPE avatar_relay_setup_seconds histogram") == 1
