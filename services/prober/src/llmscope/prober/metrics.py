"""The prober's Prometheus metrics (served on /metrics by the health server)."""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)


class ProberMetrics:
    """Counters and histograms of one prober; pass a fresh registry in tests."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else prometheus_client.REGISTRY
        self.probes = Counter(
            "llmscope_prober_probes",
            "Probes sent, by outcome",
            ["target", "provider", "model", "status"],
            registry=registry,
        )
        self.cold_starts = Counter(
            "llmscope_prober_cold_starts",
            "Probes whose model load took longer than the target's cold_start_ms (any policy)",
            ["target"],
            registry=registry,
        )
        self.latency = Histogram(
            "llmscope_prober_latency_seconds",
            "Latency of successful probes, request sent to last byte",
            ["target", "streaming"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "llmscope_prober_ttft_seconds",
            "Time to first content token of successful streaming probes",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.published = Counter(
            "llmscope_prober_published", "Telemetry events acknowledged by JetStream", registry=registry
        )
        self.publish_failures = Counter(
            "llmscope_prober_publish_failures",
            "Publish attempts that failed (the event stays in the outbox)",
            registry=registry,
        )
        self.dropped = Counter(
            "llmscope_prober_outbox_dropped",
            "Telemetry events dropped because the outbox was full",
            registry=registry,
        )
        self.outbox_size = Gauge(
            "llmscope_prober_outbox_size", "Telemetry events waiting to be published", registry=registry
        )
