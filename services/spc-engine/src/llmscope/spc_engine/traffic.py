"""Real traffic in the SPC engine: requests -> minutes -> subgroup charts -> violations (pure).

The owner of a telemetry partition owns its models' traffic too (a model's requests all land in
its partition), so no other process aggregates them and no second consumer reads the stream.
:class:`TrafficPartition` is one partition's state: the :class:`MinuteAggregator` and one
:class:`SubgroupChart` per subgroup and metric. The service snapshots it in the
chart bucket before it writes the partition's checkpoint, each subgroup (its open minutes and
charts) under ``_traffic.p<k>.<digest>`` and the partition's clock under ``_traffic.p<k>``
(a busy subgroup's open minute holds thousands of values: one value per subgroup stays well under
NATS's message size), so a replay
from the checkpoint continues it exactly; the minutes it closes are published, and their
violations too, before the batch that closed them is acknowledged.

Charts (key: provider / model / service / ``traffic:<operation>`` / metric):

- ``traffic_error_rate``: failed requests / requests (``p`` chart);
- ``traffic_latency_per_token_p50`` and ``..._p90``: latency / output tokens of the successful
  requests with output tokens (log scale);
- ``traffic_ttft_p50``: time to first chunk of the successful streamed requests (log scale).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from datetime import datetime

import msgspec

from llmscope.proto import charts as charts_contract
from llmscope.proto.charts import ChartMeta, TrafficPoint, chart_key
from llmscope.proto.telemetry import TelemetryEvent, traffic_prompt_id
from llmscope.proto.traffic import Quantiles, TrafficMinuteEvent
from llmscope.proto.violation import BaselineRef, ChartLimits, ViolationEvent
from llmscope.spc_engine.minutes import AggregatorState, MinuteAggregator, Subgroup, group_key
from llmscope.spc_engine.subgroup import (
    Point,
    SubgroupChart,
    SubgroupConfig,
    SubgroupSignal,
    SubgroupState,
    center_at,
    score,
)
from llmscope.spc_engine.traffic_view import RECENT_MINUTES, minute_point, render

ERROR_RATE = "traffic_error_rate"
LPT_P50 = "traffic_latency_per_token_p50"
LPT_P90 = "traffic_latency_per_token_p90"
TTFT_P50 = "traffic_ttft_p50"
TRAFFIC_METRICS = charts_contract.TRAFFIC_METRICS
"""(ERROR_RATE, LPT_P50, LPT_P90, TTFT_P50): the readers' list, in :mod:`llmscope.proto.charts`."""
_WORDS = {
    ERROR_RATE: "error rate",
    LPT_P50: "p50 latency per output token",
    LPT_P90: "p90 latency per output token",
    TTFT_P50: "p50 time to first chunk",
}
_FLOOR = 1e-6  # ms: a zero quantile has no log
MIN_FOR_P90 = 50
"""Requests a minute needs for its p90 to be a point: at least 5 above it. With fewer, the p90 is
one of the last few values, and the 1 % of very slow requests make it jump (measured)."""


def default_configs(min_requests: int = 10, baseline_minutes: int = 1440) -> dict[str, SubgroupConfig]:
    """Each traffic chart's configuration (the defaults chosen in ``bench/traffic_bench.py``)."""
    return {
        metric: SubgroupConfig(
            kind="p" if metric == ERROR_RATE else "quantile",
            baseline_minutes=baseline_minutes,
            min_requests=max(min_requests, MIN_FOR_P90) if metric == LPT_P90 else min_requests,
        )
        for metric in TRAFFIC_METRICS
    }


def _log(x: float) -> float:
    return math.log(max(x, _FLOOR))


Closed = tuple[list[TrafficMinuteEvent], list[ViolationEvent]]
"""The minutes a step closed, and their violations."""


def points_of(ev: TrafficMinuteEvent) -> list[tuple[str, Point]]:
    """The chart points a minute makes: (metric, point), the quantities it has."""
    out = [(ERROR_RATE, Point(id=ev.id, ts=ev.ts, v=ev.errors / ev.n if ev.n else 0.0, n=ev.n))]

    def median(q: Quantiles) -> Point:
        # Var of a log median ~ 1 / (4 n f^2), f ~ 0.5 / (log p75 - log p25).
        return Point(id=ev.id, ts=ev.ts, v=_log(q.p50), n=q.n, a=(_log(q.p75) - _log(q.p25)) ** 2)

    lpt = ev.latency_per_token_ms
    if lpt is not None:
        out.append((LPT_P50, median(lpt)))
        # Var of a log p90 ~ 0.09 / (n f^2), f ~ 0.2 / (log p95 - log p75).
        a90 = 2.25 * (_log(lpt.p95) - _log(lpt.p75)) ** 2
        out.append((LPT_P90, Point(id=ev.id, ts=ev.ts, v=_log(lpt.p90), n=lpt.n, a=a90)))
    if ev.ttft_ms is not None:
        out.append((TTFT_P50, median(ev.ttft_ms)))
    return out


class TrafficChartEntry(msgspec.Struct, kw_only=True):
    provider: str
    model: str
    service_name: str
    operation: str
    metric: str
    state: SubgroupState
    baseline_number: int = 0
    """0 for the first baseline, +1 per re-baseline."""
    baseline_by: str = ""
    """Who asked for the baseline in progress or in force ("": the engine, at the chart's start)."""
    baseline_reason: str = ""


class SubgroupRecord(msgspec.Struct, kw_only=True):
    """A subgroup's open minutes and charts: the KV value under ``_traffic.p<k>.<digest>``."""

    version: int = 1
    group: Subgroup
    charts: dict[str, TrafficChartEntry] = msgspec.field(default_factory=dict)
    """By chart key."""


def traffic_key(partition: int, group: str = "") -> str:
    """KV key of a partition's traffic head (its clock and counts), or of one of its subgroups."""
    if not group:
        return f"_traffic.p{partition}"
    return f"_traffic.p{partition}.{hashlib.sha256(group.encode()).hexdigest()[:24]}"


class TrafficPartition:
    """One partition's traffic: ``on_request`` / ``observe`` / ``advance`` return the minutes they
    closed and the violations of those minutes."""

    def __init__(
        self,
        config_for: Callable[[str], SubgroupConfig],
        *,
        grace_s: float = 10.0,
        window_s: int = 60,
        max_values: int = 10_000,
        head: AggregatorState | None = None,
        records: list[SubgroupRecord] = (),  # type: ignore[assignment]
    ) -> None:
        state = head or AggregatorState()
        self.charts: dict[str, dict[str, TrafficChartEntry]] = {}
        for record in records:
            g = record.group
            key = group_key(g.provider, g.model, g.service_name, g.operation)
            state.groups[key] = g
            self.charts[key] = record.charts
        self._config_for = config_for
        self.aggregator = MinuteAggregator(
            grace_s=grace_s,
            window_s=window_s,
            min_requests=config_for(ERROR_RATE).min_requests,
            max_values=max_values,
            state=state,
        )
        self.head_dirty = False
        self.recent: dict[str, list[TrafficPoint]] = {}
        """The latest charted minutes per chart key, for its chart record (see ``seed``)."""
        self.dirty_charts: dict[str, str] = {}
        """Charts whose record changed since ``take_records``: chart key -> subgroup key."""

    def seed(self, key: str, recent: tuple[TrafficPoint, ...]) -> None:
        """The recent minutes of a chart as its stored record had them (after a restart or a move)."""
        self.recent[key] = list(recent[-RECENT_MINUTES:])

    @property
    def dirty(self) -> bool:
        return self.head_dirty or bool(self.aggregator.touched) or bool(self.dirty_charts)

    def on_request(self, ev: TelemetryEvent, stored: datetime, seq: int = 0) -> Closed:
        self.head_dirty = True
        return self._chart(self.aggregator.add(ev, stored, seq))

    def observe(self, stored: datetime, seq: int = 0) -> Closed:
        """Another message of the partition (a probe): its stream time may close minutes."""
        if not self.aggregator.state.groups:  # nothing to close, nothing worth a snapshot
            return [], []
        self.head_dirty = True
        return self._chart(self.aggregator.observe(stored, seq))

    def advance(self, now: datetime) -> Closed:
        """Close what the wall clock says is over (a caught-up, quiet partition)."""
        minutes = self.aggregator.advance(now)
        if minutes:
            self.head_dirty = True
        return self._chart(minutes)

    def _chart(self, minutes: list[TrafficMinuteEvent]) -> Closed:
        violations: list[ViolationEvent] = []
        for ev in minutes:
            violations += self.on_minute(ev)
        return minutes, violations

    def on_minute(self, ev: TrafficMinuteEvent) -> list[ViolationEvent]:
        out: list[ViolationEvent] = []
        prompt_id = traffic_prompt_id(ev.operation)
        group = group_key(ev.provider, ev.model, ev.service_name, ev.operation)
        charts = self.charts.setdefault(group, {})
        for metric, point in points_of(ev):
            key = chart_key(ev.provider, ev.model, ev.service_name, prompt_id, metric)
            entry = charts.get(key)
            if entry is None:
                entry = charts[key] = TrafficChartEntry(
                    provider=ev.provider,
                    model=ev.model,
                    service_name=ev.service_name,
                    operation=ev.operation,
                    metric=metric,
                    state=SubgroupState(),
                )
            config = self._config_for(metric)
            before = entry.state.baseline
            for sig in SubgroupChart(config, entry.state).update(point):
                out.append(violation_of(key, entry, config, sig))
            self.dirty_charts[key] = group
            if point.n >= config.min_requests:
                recent = self.recent.setdefault(key, [])
                # A replay from the checkpoint closes minutes the stored record may have already.
                if not recent or point.ts > recent[-1].ts:
                    recent.append(minute_point(config, before, point))
                    del recent[:-RECENT_MINUTES]
        return out

    def entry(self, key: str) -> tuple[str, TrafficChartEntry] | None:
        """(subgroup key, chart) of a traffic chart key, or None when this partition has no such chart."""
        for group, charts in self.charts.items():
            found = charts.get(key)
            if found is not None:
                return group, found
        return None

    def rebaseline(self, key: str, by: str, reason: str) -> list[ViolationEvent] | None:
        """Drop a chart's baseline (it collects a new one); None when there is no such chart.

        An open episode clears at once, tied to the chart's latest point, so a repeat makes the
        same id."""
        found = self.entry(key)
        if found is None:
            return None
        group, entry = found
        config = self._config_for(entry.metric)
        st = entry.state
        out: list[ViolationEvent] = []
        if st.episode is not None and st.baseline is not None and st.recent:
            p = st.recent[-1]
            z, sd = score(config, st.baseline, p.v, p.n)
            sig = SubgroupSignal(
                state="cleared",
                rule="TRAFFIC",
                rule_name="re-baselined",
                point=p,
                z=z,
                sd=sd,
                baseline=st.baseline,
                episode_point_id=st.episode,
                points=tuple(st.recent),
            )
            ev = violation_of(key, entry, config, sig)
            out.append(msgspec.structs.replace(ev, detail=f"re-baselined by {by}: {reason}"[:2000]))
        entry.state = SubgroupState()
        entry.baseline_number += 1
        entry.baseline_by, entry.baseline_reason = by, reason
        self.aggregator.touched.add(group)  # the subgroup's record is written with the next snapshot
        self.dirty_charts[key] = group
        return out

    def take_records(self, updated_at: datetime) -> list[tuple[str, bytes]]:
        """(chart key, chart record) of the traffic charts changed since the last call."""
        out = []
        for key, group in sorted(self.dirty_charts.items()):
            e = self.charts[group][key]
            config = self._config_for(e.metric)
            st = e.state
            record = render(
                key=key,
                meta=ChartMeta(
                    provider=e.provider,
                    model=e.model,
                    target=e.service_name,
                    prompt_id=traffic_prompt_id(e.operation),
                    metric=e.metric,
                ),
                config=config,
                baseline=st.baseline,
                collected=len(st.collected) // 24,
                episode_open=st.episode is not None,
                baseline_number=e.baseline_number,
                baseline_by=e.baseline_by,
                baseline_reason=e.baseline_reason,
                service_name=e.service_name,
                operation=e.operation,
                points=st.points,
                skipped=st.skipped,
                recent=self.recent.get(key, []),
                updated_at=updated_at,
            )
            out.append((key, msgspec.json.encode(record)))
        self.dirty_charts.clear()
        return out

    def take_dirty(self, partition: int) -> list[tuple[str, bytes]]:
        """(KV key, value) of what changed since the last call: the subgroups, then the head."""
        out = []
        groups = self.aggregator.state.groups
        for key in sorted(self.aggregator.touched):
            record = SubgroupRecord(group=groups[key], charts=self.charts.get(key, {}))
            out.append((traffic_key(partition, key), msgspec.json.encode(record)))
        self.aggregator.touched.clear()
        if out or self.head_dirty:
            head = msgspec.structs.replace(self.aggregator.state, groups={})
            out.append((traffic_key(partition), msgspec.json.encode(head)))
        self.head_dirty = False
        return out

    @staticmethod
    def load_head(data: bytes) -> AggregatorState:
        return msgspec.json.decode(data, type=AggregatorState)

    @staticmethod
    def load_record(data: bytes) -> SubgroupRecord:
        return msgspec.json.decode(data, type=SubgroupRecord)


def _vid(key: str, state: str, point_id: str) -> str:
    return hashlib.sha256(f"{key}|TRAFFIC:up|{state}|{point_id}".encode()).hexdigest()[:32]


def violation_of(
    key: str, entry: TrafficChartEntry, config: SubgroupConfig, sig: SubgroupSignal
) -> ViolationEvent:
    """The ``violation.v1`` event of a subgroup chart's signal."""
    b, p, sd, k = sig.baseline, sig.point, sig.sd, config.k
    vid = _vid(key, sig.state, p.id)
    is_p = config.kind == "p"
    c = center_at(b, p.n)  # a load-adjusted chart's center at this minute's load

    def nat(x: float) -> float:
        return x if is_p else math.exp(x)

    value, center = nat(p.v), nat(c)
    limits = ChartLimits(
        transform="none" if is_p else "log",
        center=center,
        sigma=sd,
        ucl=nat(c + k * sd),
        lcl=max(0.0, c - k * sd) if is_p else math.exp(c - k * sd),
        zone_a_upper=nat(c + 2 * sd),
        zone_a_lower=max(0.0, c - 2 * sd) if is_p else math.exp(c - 2 * sd),
        zone_b_upper=nat(c + sd),
        zone_b_lower=max(0.0, c - sd) if is_p else math.exp(c - sd),
    )
    words = _WORDS.get(entry.metric, entry.metric)
    if is_p:
        detail = (
            f"{words} {value:.1%} over {p.n} requests in the minute, against {center:.2%} "
            f"(limit {limits.ucl:.1%} at this n)"
        )
    else:
        detail = (
            f"{words} {value:.3g} ms over {p.n} requests in the minute, "
            f"{(value / center - 1) * 100:+.0f} % over the {center:.3g} ms baseline "
            f"(limit {limits.ucl:.3g} ms at this n)"
        )
    if sig.state == "cleared":
        detail = f"back within the limits: {detail}"
    return ViolationEvent(
        id=vid,
        ts=p.ts,
        state=sig.state,
        episode_id=vid if sig.state == "open" else _vid(key, "open", sig.episode_point_id),
        provider=entry.provider,  # type: ignore[arg-type]
        model=entry.model,
        target=entry.service_name,
        prompt_id=traffic_prompt_id(entry.operation),
        metric=entry.metric,
        chart="p" if is_p else "subgroup",
        chart_key=key,
        rule=sig.rule,
        rule_name=sig.rule_name,
        severity="critical",
        value=value,
        deviation_sigma=sig.z if math.isfinite(sig.z) else 40.0,
        limits=limits,
        baseline=BaselineRef(
            id=b.id,
            n=b.minutes,
            started_at=b.started_at,
            ended_at=b.ended_at,
            created_by=entry.baseline_by or "engine",
            reason=entry.baseline_reason
            or f"first {b.minutes} minutes of traffic with at least {config.min_requests} requests",
        ),
        point_ids=tuple(q.id for q in sig.points),
        point_values=tuple(nat(q.v) for q in sig.points),
        point_ts=tuple(q.ts for q in sig.points),
        opened_at=p.ts if sig.state == "open" else None,
        direction="up",
        level=value,
        change_pct=(value / center - 1.0) * 100.0 if center else None,
        detail=detail[:2000],
    )
