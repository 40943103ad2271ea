"""Prometheus metrics of one API process, in a registry of its own (no module-level singletons)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from llmscope.bus.metrics import ConsumerMetrics
from llmscope.config.metrics import service_registry


class ApiMetrics:
    """Counters the routes and the persister update; ``render()`` is the /metrics body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or service_registry("api")
        self.http_requests = Counter(
            "llmscope_api_http_requests",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "llmscope_api_http_request_seconds",
            "HTTP request duration",
            ["route"],
            registry=self.registry,
        )
        self.telemetry_accepted = Counter(
            "llmscope_api_telemetry_accepted", "telemetry accepted at POST /api/stats", registry=self.registry
        )
        self.telemetry_rejected = Counter(
            "llmscope_api_telemetry_rejected", "telemetry refused at POST /api/stats", registry=self.registry
        )
        self.otlp_spans = Counter(
            "llmscope_otlp_spans",
            "spans the OTLP receiver took (accepted: published as traffic telemetry; rejected: GenAI "
            "spans it could not map; ignored: spans that are no GenAI inference)",
            ["outcome"],
            registry=self.registry,
        )
        self.otlp_data_points = Counter(
            "llmscope_otlp_data_points",
            "metric data points the OTLP receiver took (accepted: published as traffic_histogram.v1; "
            "rejected: GenAI data points it could not map; ignored: other metrics)",
            ["outcome"],
            registry=self.registry,
        )
        self.persisted = Counter(
            "llmscope_persister_events",
            "events the persister stored (new rows)",
            ["kind"],
            registry=self.registry,
        )
        self.batches = Counter(
            "llmscope_persister_batches", "batches the persister committed", ["kind"], registry=self.registry
        )
        # The persister's durable consumers: lag sampled from the server, dead letters counted.
        self.consumers = ConsumerMetrics(self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
