"""The alerter's Prometheus metrics, in a registry of its own (served on /metrics).

Notifications and attempts count what this replica did; the incident gauges are read from
Postgres every few seconds, so every replica reports the same numbers (aggregate with ``max``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmscope.bus.metrics import ConsumerMetrics
from llmscope.config.metrics import service_registry

# A webhook answers in tens of milliseconds, SMTP with STARTTLS in seconds; the attempt timeout
# defaults to 10 s.
DELIVERY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class AlerterMetrics:
    """Counters the service updates, gauges it samples; ``registry`` is the /metrics body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else service_registry("alerter")
        self.notifications = Counter(
            "llmscope_alerter_notifications",
            "Notifications finished, by channel and status (sent, failed, expired)",
            ["channel", "status"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "llmscope_alerter_delivery_attempts",
            "Delivery attempts, by channel and whether the channel accepted the message",
            ["channel", "ok"],
            registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            "llmscope_alerter_delivery_attempt_seconds",
            "Duration of one delivery attempt (the channel's send, failed ones included)",
            ["channel"],
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )
        self.violations = Counter(
            "llmscope_alerter_violations",
            "Violation events recorded, by state (open, cleared)",
            ["state"],
            registry=self.registry,
        )
        self.incidents = Gauge(
            "llmscope_alerter_incidents",
            "Incidents not resolved, by state (open, acknowledged) and severity, sampled from Postgres",
            ["state", "severity"],
            registry=self.registry,
        )
        self.consumers = ConsumerMetrics(self.registry)
