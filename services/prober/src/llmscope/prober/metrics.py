"""The prober's Prometheus metrics (served on /metrics by the health server).

Probe latency and time to first token are named after the OpenTelemetry GenAI client metrics
(``gen_ai.client.operation.duration``, ``gen_ai.client.operation.time_to_first_chunk``), in
Prometheus form (dots to underscores, unit suffix), with the conventions' attributes as labels
(``gen_ai_operation_name``, ``gen_ai_provider_name``, ``gen_ai_request_model``) and their
advised bucket boundaries, so dashboards built for instrumented LLM clients read them too.
Failed probes are not observed in them (a timeout would read as a slow answer); they are
counted in ``llmscope_prober_probes_total`` by status.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmscope.config.metrics import service_registry

# The GenAI semantic conventions' advice for gen_ai.client.operation.duration.
LATENCY_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
GENAI_LABELS = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "target"]


class ProberMetrics:
    """Counters and histograms of one prober, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else service_registry("prober")
        self.registry = registry
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
            "gen_ai_client_operation_duration_seconds",
            "Duration of successful probes, request sent to last byte (gen_ai.client.operation.duration)",
            [*GENAI_LABELS, "streaming"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time to the first content token of successful streaming probes "
            "(gen_ai.client.operation.time_to_first_chunk)",
            GENAI_LABELS,
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
