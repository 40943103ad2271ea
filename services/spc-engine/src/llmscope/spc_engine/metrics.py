"""The SPC engine's Prometheus metrics, in a registry of its own (served on /metrics).

Counters and the batch histogram are updated as telemetry is charted; chart and partition
gauges are read from the live service when Prometheus scrapes (:class:`EngineCollector`), so
they never go stale; consumer lag is sampled from the server (:mod:`llmscope.bus.metrics`).
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llmscope.bus.metrics import ConsumerMetrics
from llmscope.config.metrics import service_registry
from llmscope.spc_engine.availability import AvailabilityChart
from llmscope.spc_engine.chart import MetricChart

# A batch is up to LLMSCOPE_SPC_BATCH_SIZE points plus one PubAck per violation.
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class SpcMetrics:
    """What the engine counts as it works; ``registry`` is the /metrics body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else service_registry("spc-engine")
        self.violations = Counter(
            "llmscope_spc_violations",
            "Violation events published, by rule, severity and state (open, cleared)",
            ["rule", "severity", "state"],
            registry=self.registry,
        )
        self.telemetry = Counter(
            "llmscope_spc_telemetry",
            "Telemetry events charted (a replayed duplicate counts again), by partition",
            ["partition"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "llmscope_spc_batch_seconds",
            "Time to chart one batch of telemetry and publish its violations",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.consumers = ConsumerMetrics(self.registry)
        self._telemetry: dict[int, Counter] = {}

    def telemetry_of(self, partition: int) -> Counter:
        """The partition's child of ``telemetry``, looked up once (``labels`` takes a lock and
        builds a key on every call, and every batch counts)."""
        child = self._telemetry.get(partition)
        if child is None:
            child = self._telemetry[partition] = self.telemetry.labels(str(partition))
        return child


class Ownership:
    """Who holds each partition's lease, from reading the leases now and then.

    A held lease changes at every renewal (``ttl / 4``), a lease whose holder died is taken over
    after ``ttl`` by the replica that wants the partition, and a partition handed over is taken
    within a round; a lease that stayed free, or unchanged, for two TTLs therefore has nobody to
    take it: the partition's telemetry is not charted (no replica runs, or a member that still
    announces itself does not take its partitions).
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._seen: dict[int, tuple[int, float]] = {}  # partition -> (revision, 0 when free; since)
        self.holders: dict[int, str] = {}
        """The holder written in each partition's lease (free leases are absent)."""
        self.reported: dict[int, float] = {}
        """:meth:`unowned` as of the last complete read of the leases (what was logged)."""

    def observe(self, partition: int, holder: str | None, revision: int) -> None:
        now = self._clock()
        state = revision if holder else 0
        seen = self._seen.get(partition)
        if seen is None or seen[0] != state:
            self._seen[partition] = (state, now)
        if holder:
            self.holders[partition] = holder
        else:
            self.holders.pop(partition, None)

    def forget(self) -> None:
        """Start over (after a failed read: an unchanged lease then proves nothing)."""
        self._seen.clear()

    def unowned(self) -> dict[int, float]:
        """Partitions nobody took for two TTLs, with seconds since their lease last changed."""
        now = self._clock()
        return {k: now - since for k, (_, since) in self._seen.items() if now - since >= 2 * self.ttl}


class EngineCollector(Collector):
    """Gauges read from the running service at scrape time."""

    def __init__(
        self,
        charts: Callable[[], Iterable[tuple[str, MetricChart | AvailabilityChart]]],
        held: Callable[[], set[int]],
        ownership: Ownership,
        members: Callable[[], int] | None = None,
    ) -> None:
        self._charts = charts
        self._held = held
        self._ownership = ownership
        self._members = members

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states: Tally[tuple[str, str]] = Tally()
        refused: Tally[str] = Tally()
        for metric, chart in self._charts():
            if isinstance(chart, MetricChart):
                armed = chart.armed
                if chart.state.refused:
                    refused[metric] += 1
            else:
                armed = chart.state.threshold is not None
            states[(metric, "armed" if armed else "collecting")] += 1
        charts = GaugeMetricFamily(
            "llmscope_spc_charts",
            "Charts in memory by metric and state: armed (limits frozen) or collecting a baseline",
            labels=["metric", "state"],
        )
        for (metric, state), n in sorted(states.items()):
            charts.add_metric([metric, state], n)
        yield charts
        unstable = GaugeMetricFamily(
            "llmscope_spc_charts_baseline_refused",
            "Charts collecting again because their last baseline was refused as unstable",
            labels=["metric"],
        )
        for metric, n in sorted(refused.items()):
            unstable.add_metric([metric], n)
        yield unstable
        yield GaugeMetricFamily(
            "llmscope_spc_partitions_held",
            "Partitions whose lease this replica holds (it charts their telemetry)",
            value=len(self._held()),
        )
        owners = GaugeMetricFamily(
            "llmscope_spc_partition_owner",
            "1 for each partition and the holder written in its lease, as this replica last read them",
            labels=["partition", "holder"],
        )
        for partition, holder in sorted(self._ownership.holders.items()):
            owners.add_metric([str(partition), holder], 1)
        yield owners
        if self._members is not None:
            yield GaugeMetricFamily(
                "llmscope_spc_members",
                "Engine replicas alive as this replica last read them (they share the partitions)",
                value=self._members(),
            )
        yield GaugeMetricFamily(
            "llmscope_spc_partitions_unowned",
            "Partitions whose lease nobody took or renewed for two TTLs: their telemetry is not charted",
            value=len(self._ownership.reported),
        )
