"""Traffic charts as chart records: what the API and dashboard read of them (pure).

A traffic chart's statistics live in its subgroup's ``_traffic.p<k>.<digest>`` record; readers get
the same :class:`~llmscope.proto.charts.ChartRecord` as for a probe chart under the chart's own
key, with ``view`` (phase, baseline, limits at the baseline's mean requests per minute) and
``traffic`` (the recent minutes, each with the limit at its own ``n``). Nothing here judges a point:
it renders what :mod:`llmscope.spc_engine.subgroup` decided.
"""

from __future__ import annotations

import math
from datetime import datetime

import msgspec

from llmscope.proto.charts import (
    ChartBaseline,
    ChartMeta,
    ChartView,
    TrafficPoint,
    TrafficView,
)
from llmscope.proto.violation import ChartLimits
from llmscope.spc_engine.subgroup import Point, SubgroupBaseline, SubgroupConfig, center_at, score

RECENT_MINUTES = 360
"""Minutes a record keeps for the dashboard (6 hours of 60 s minutes; ~35 kB of JSON)."""


class TrafficChartRecord(msgspec.Struct, kw_only=True):
    """The KV value of a traffic chart under its chart key (a :class:`ChartRecord` to readers)."""

    version: int = 1
    key: str
    meta: ChartMeta
    seq: int = 0
    updated_at: datetime | None = None
    view: ChartView
    traffic: TrafficView


def natural(config: SubgroupConfig, v: float) -> float:
    """A chart-scale value in metric units (the quantile charts are on the log scale)."""
    return v if config.kind == "p" else math.exp(v)


def minute_point(config: SubgroupConfig, baseline: SubgroupBaseline | None, p: Point) -> TrafficPoint:
    """One charted minute, with its limit when the chart was armed before it."""
    if baseline is None:
        return TrafficPoint(ts=p.ts, value=natural(config, p.v), n=p.n)
    z, sd = score(config, baseline, p.v, p.n)
    ucl = center_at(baseline, p.n) + config.k * sd
    return TrafficPoint(
        ts=p.ts,
        value=natural(config, p.v),
        n=p.n,
        ucl=min(ucl, 1.0) if config.kind == "p" else math.exp(ucl),
        z=z if math.isfinite(z) else None,
    )


def limits_at(config: SubgroupConfig, b: SubgroupBaseline, n: float) -> ChartLimits:
    """Limits in metric units for a minute of ``n`` requests (the error rate's are approximate)."""
    sd = math.sqrt(b.sigma_z**2 * b.a / max(n, 1.0) + b.tau2)
    c = center_at(b, n)

    def at(sigmas: float) -> float:
        x = c + sigmas * sd
        return min(max(x, 0.0), 1.0) if config.kind == "p" else math.exp(x)

    return ChartLimits(
        transform="none" if config.kind == "p" else "log",
        center=natural(config, c),
        sigma=sd,
        ucl=at(config.k),
        lcl=at(-config.k),
        zone_a_upper=at(2),
        zone_a_lower=at(-2),
        zone_b_upper=at(1),
        zone_b_lower=at(-1),
    )


def render(
    *,
    key: str,
    meta: ChartMeta,
    config: SubgroupConfig,
    baseline: SubgroupBaseline | None,
    collected: int,
    episode_open: bool,
    baseline_number: int,
    baseline_by: str,
    baseline_reason: str,
    service_name: str,
    operation: str,
    points: int,
    skipped: int,
    recent: list[TrafficPoint],
    updated_at: datetime | None,
) -> TrafficChartRecord:
    """The chart record of one traffic chart."""
    public = None
    if baseline is not None:
        public = ChartBaseline(
            id=baseline.id,
            n=baseline.minutes,
            started_at=baseline.started_at,
            ended_at=baseline.ended_at,
            created_by=baseline_by or "engine",
            reason=baseline_reason
            or f"first {baseline.minutes} minutes of traffic with at least {config.min_requests} requests",
            number=baseline_number,
        )
    view = ChartView(
        phase="armed" if baseline is not None else "collecting",
        progress=config.baseline_minutes if baseline is not None else collected,
        baseline_n=config.baseline_minutes,
        limits=limits_at(config, baseline, baseline.mean_n) if baseline is not None else None,
        baseline=public,
        open_episodes=("TRAFFIC",) if episode_open else (),
        rules=("TRAFFIC",),
    )
    return TrafficChartRecord(
        key=key,
        meta=meta,
        updated_at=updated_at,
        view=view,
        traffic=TrafficView(
            service_name=service_name,
            operation=operation,
            kind=config.kind,
            min_requests=config.min_requests,
            points=points,
            skipped=skipped,
            k=config.k,
            k_run=config.k_run,
            recent=tuple(recent),
        ),
    )
