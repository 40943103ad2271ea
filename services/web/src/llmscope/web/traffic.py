"""The traffic charts the dashboard shows: one per minute of real traffic (OTLP GenAI spans) per
provider, model, service and operation, and metric (the SPC engine's chart records)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llmscope.proto.charts import ChartRecord

TRAFFIC_LABELS: dict[str, str] = {
    "traffic_error_rate": "error rate",
    "traffic_latency_per_token_p50": "p50 latency per output token (ms)",
    "traffic_latency_per_token_p90": "p90 latency per output token (ms)",
    "traffic_ttft_p50": "p50 time to first chunk (ms)",
}


class TrafficData(Protocol):
    """Reads the engine's traffic chart records (the API implements it over its KV reader)."""

    async def traffic_charts(
        self, provider: str | None = None, model: str | None = None
    ) -> list[ChartRecord]:
        """Every traffic chart (of one model when given), by key."""
        ...

    async def traffic_chart(self, chart_key: str) -> ChartRecord | None:
        """One traffic chart's record, or None when the engine has none (or it is no traffic chart)."""
        ...


@dataclass(frozen=True, slots=True)
class TrafficSeries:
    """The charts of one service's traffic to one model: a row of the traffic page."""

    provider: str
    model: str
    service_name: str
    operation: str
    charts: tuple[ChartRecord, ...]

    @property
    def open_episodes(self) -> int:
        return sum(1 for c in self.charts if c.view is not None and c.view.open_episodes)


def series_of(records: list[ChartRecord]) -> list[TrafficSeries]:
    """Records grouped by (provider, model, service, operation), metrics in their usual order."""
    order = list(TRAFFIC_LABELS)
    groups: dict[tuple[str, str, str, str], list[ChartRecord]] = {}
    for r in records:
        if r.traffic is None:
            continue
        key = (r.meta.provider, r.meta.model, r.traffic.service_name, r.traffic.operation)
        groups.setdefault(key, []).append(r)
    return [
        TrafficSeries(
            *key,
            charts=tuple(
                sorted(found, key=lambda r: order.index(r.meta.metric) if r.meta.metric in order else 9)
            ),
        )
        for key, found in sorted(groups.items())
    ]
