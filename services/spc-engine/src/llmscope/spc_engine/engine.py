"""The engine's handler: telemetry in, violation events out, with no knowledge of NATS.

Charts (rational subgroups): one per provider / model / target / prompt / metric for
``latency_ms``, ``ttft_ms`` and ``tokens_per_s`` (each on the log scale by default), so probes
of different prompts or endpoints never share limits; one availability chart per provider /
model / target fed by every probe's outcome. Failed probes never enter the metric charts.

Chart keys, the chart's public meta and view, and the KV contract the API reads are in
:mod:`llmscope.proto.charts`; the snapshot below adds the engine's own ``config`` and ``state``
(stored apart from the public record since: :mod:`llmscope.spc_engine.store`).

Duplicate and late telemetry (documented policy):
- a stream message delivered again (nak, restart replay) is skipped: each chart remembers the
  last stream sequence it applied (``seq``), and sequences at or below it are ignored;
- the same event id published twice is dropped by JetStream's duplicate window; beyond that
  window, an id among the chart's last 64 points is skipped too;
- late telemetry (a timestamp older than the chart's last point) is charted in arrival
  (stream) order, which is the order every replica and every replay sees.

Violation ids are ``sha256(chart_key | rule[:direction] | state | point id)`` (32 hex digits; the
direction, where the rule has one, keeps a shift up and a shift down apart): a replay of
the same stream produces the same ids, published with ``Nats-Msg-Id`` so JetStream drops
repeats; the violation's ``ts`` is the telemetry timestamp of the point, not the wall clock.

Per-model settings (:mod:`llmscope.proto.chartconfig`): each model has a log of settings
changes, each applying from a telemetry stream sequence (``from_seq``; the service decides it
and stores the log). A chart runs with the change whose ``from_seq`` is the latest at or below
the point's sequence (the latest change for points without one), and picks a change up at its
next point: before charting it, the chart is reconfigured (:meth:`MetricChart.reconfigure`), so
a new baseline, with the cleared events of its open episodes, starts at that point. The same
stream and the same log give the same violations, whenever the engine was restarted.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from statistics import NormalDist

import msgspec

from llmscope.proto.chartconfig import ModelOverrides
from llmscope.proto.charts import AVAILABILITY as AVAILABILITY
from llmscope.proto.charts import AvailabilityView, ChartBaseline, ChartMeta, ChartView, chart_key
from llmscope.proto.charts import parse_chart_key as parse_chart_key
from llmscope.proto.telemetry import SystemMetrics, TelemetryEvent
from llmscope.proto.violation import BaselineRef, ChartLimits, ViolationEvent
from llmscope.spc_engine import arl
from llmscope.spc_engine.availability import (
    AvailabilityChart,
    AvailabilityConfig,
    AvailabilitySignal,
    AvailabilityState,
    binomial_tail,
    run_needed,
)
from llmscope.spc_engine.baseline import SPIKE_U
from llmscope.spc_engine.chart import (
    MODEL_VERSION,
    RECENT,
    Baseline,
    ChartState,
    MetricChart,
    Signal,
    spike_limit_of,
    tail_threshold_of,
)
from llmscope.spc_engine.config import (
    BASELINE_SETTINGS,
    CHARTED_METRICS,
    ChartConfig,
    apply_settings,
    default_config,
    describe_changes,
    to_settings,
)
from llmscope.spc_engine.describe import describe_signal


def violation_id(key: str, rule: str, state: str, point_id: str) -> str:
    return hashlib.sha256(f"{key}|{rule}|{state}|{point_id}".encode()).hexdigest()[:32]


class ChartSnapshot(msgspec.Struct, kw_only=True):
    """A chart's whole state: what engines before the split of chart state stored under its key
    in ``llmscope_spc_charts`` (still read, :mod:`llmscope.spc_engine.store`).

    A :class:`~llmscope.proto.charts.ChartRecord` (what readers decode) plus ``config`` and
    ``state``, the engine's internals.
    """

    version: int = 1
    key: str
    meta: ChartMeta
    seq: int
    """Last telemetry stream sequence applied to this chart."""
    updated_at: datetime | None = None
    config: ChartConfig
    state: ChartState
    view: ChartView | None = None
    settings_seq: int = 0
    """``from_seq`` of the model's settings change the chart runs with (0: none)."""


class AvailabilitySnapshot(msgspec.Struct, kw_only=True):
    """The KV value of an availability chart (key ending in ``.availability``)."""

    version: int = 1
    key: str
    meta: ChartMeta
    seq: int
    updated_at: datetime | None = None
    config: AvailabilityConfig
    state: AvailabilityState
    availability: AvailabilityView | None = None


Snapshot = ChartSnapshot | AvailabilitySnapshot


class SettingsChange(msgspec.Struct, frozen=True, kw_only=True):
    """A model's overrides (None: back to the defaults) from one telemetry stream sequence on."""

    from_seq: int
    overrides: ModelOverrides | None


class SettingsLog(msgspec.Struct, kw_only=True):
    """A model's settings changes in order: the KV value under ``_settings.<kv_key>``."""

    version: int = 1
    provider: str
    model: str
    changes: list[SettingsChange] = msgspec.field(default_factory=list)


class _Change:
    """A settings change with the chart configurations it gives, per metric (cached)."""

    __slots__ = ("change", "configs")

    def __init__(self, change: SettingsChange) -> None:
        self.change = change
        self.configs: dict[str, ChartConfig] = {}


def decode_snapshot(key: str, data: bytes) -> Snapshot:
    if key.endswith("." + AVAILABILITY):
        return msgspec.json.decode(data, type=AvailabilitySnapshot)
    return msgspec.json.decode(data, type=ChartSnapshot)


def critical_arl0(config: ChartConfig, baseline: Baseline | None = None) -> float | None:
    """Combined in-control ARL of the critical detectors, for the model the chart runs with.

    The detectors judge one-step residuals, which the fitted model makes independent: the
    degradation side of each CUSUM (Brook-Evans), the spike at the chart's own limit by the
    baseline's tail model, and the tail rule at its binomial threshold. Improvements never page
    unless ``page_better``. None: nothing is critical.
    """
    arls: list[float] = []
    sides = 2 if config.page_better else 1
    if config.cusum.enabled and config.cusum.severity == "critical":
        arls += [_cusum_arl(k, h) / sides for k, h in zip(config.cusum.k, config.cusum.h, strict=True)]
    if baseline is not None and baseline.model >= MODEL_VERSION:
        if config.spike.enabled and config.spike.severity == "critical":
            limit = spike_limit_of(config, baseline)
            if baseline.spike_rate > 0 and baseline.spike_excess > 0:
                rate = baseline.spike_rate * math.exp(-(limit - SPIKE_U) / baseline.spike_excess)
            else:  # known parameters: no baseline tail was learned, the residuals are taken as normal
                rate = NormalDist().cdf(-limit)
            arls.append(math.inf if rate <= 0 else 1.0 / rate)
        if config.tail.enabled and config.tail.severity == "critical":
            p = binomial_tail(
                config.tail.window,
                max(config.tail.min_rate, baseline.tail_rate),
                tail_threshold_of(config, baseline),
            )
            arls.append(math.inf if p <= 0 else 1.0 / p)
    elif config.spike.enabled and config.spike.severity == "critical":
        arls.append(2.0 * arl.shewhart_arl(config.spike.k))
    if config.ewma.enabled and config.ewma.severity == "critical":
        arls.append(_ewma_arl(config.ewma.lam, config.ewma.L))
    if config.individuals and config.rules.r1.enabled and config.rules.r1.severity == "critical":
        arls.append(arl.shewhart_arl(config.rules.r1.k))
    return arl.combined_arl(*arls) if arls else None


_ARL_CACHE: dict[tuple[str, float, float], float] = {}
_KEY_CACHE_SIZE = 65_536
"""Subgroups whose chart keys are kept; beyond it the cache starts again (never unbounded)."""


def _cusum_arl(k: float, h: float) -> float:
    """One-sided: only the degradation side pages."""
    key = ("cusum", k, h)
    if key not in _ARL_CACHE:
        _ARL_CACHE[key] = arl.cusum_arl_one_sided(k, h, m=200)
    return _ARL_CACHE[key]


def _ewma_arl(lam: float, limit: float) -> float:
    key = ("ewma", lam, limit)
    if key not in _ARL_CACHE:
        _ARL_CACHE[key] = arl.ewma_arl(lam, limit, m=151)
    return _ARL_CACHE[key]


def _public_baseline(b: Baseline | None) -> ChartBaseline | None:
    if b is None:
        return None
    return ChartBaseline(
        id=b.id,
        n=b.n,
        started_at=b.started_at,
        ended_at=b.ended_at,
        created_by=b.created_by,
        reason=b.reason,
        number=b.number,
        n_excluded=b.n_excluded,
        known=b.known,
    )


def render_availability(config: AvailabilityConfig, state: AvailabilityState) -> AvailabilityView:
    """Pure: the API's view of an availability chart's configuration and state."""
    armed = state.threshold is not None
    return AvailabilityView(
        phase="armed" if armed else "collecting",
        progress=config.baseline_n if armed else min(state.n - state.baseline_start, config.baseline_n),
        baseline_n=config.baseline_n,
        baseline_failure_rate=state.rate,
        window=config.window,
        threshold=state.threshold,
        window_failures=sum(state.outcomes),
        failure_run=state.run,
        fail_run=config.fail_run
        if state.rate is None
        else run_needed(state.rate, config.run_arl0, config.fail_run),
        open_episodes=tuple(sorted(state.episodes)),
        baseline_number=state.baseline_number,
        cold_starts=state.cold_starts,
        baseline_by=state.baseline_by,
        baseline_reason=state.baseline_reason,
    )


def render_view(config: ChartConfig, state: ChartState) -> ChartView:
    """Pure: the API's view of a metric chart's configuration and state."""
    chart = MetricChart(config, state=state)
    got, need = chart.progress
    b = state.baseline
    return ChartView(
        phase="armed" if chart.armed else "collecting",
        progress=got,
        baseline_n=need,
        limits=chart.limits(),
        baseline=_public_baseline(b),
        open_episodes=tuple(sorted(episode_names(state))),
        arl0_critical=critical_arl0(config, b),
        rules=tuple(chart.rules()),
        settings=to_settings(config),
        note=state.note,
        ar_order=len(b.ar) if b is not None else 0,
        autocorrelation=b.lag_corr[0] if b is not None and b.lag_corr else None,
        tail_rate=b.tail_rate if b is not None and b.model >= MODEL_VERSION else None,
    )


def episode_names(state: ChartState) -> list[str]:
    """Open episodes as ``RULE:direction`` (a shared critical episode by the rule that opened it)."""
    return [
        f"{ep.rule}:{key.split(':')[1]}" if key.startswith("PAGE:") else key
        for key, ep in state.episodes.items()
    ]


_metric_values: Callable[[TelemetryEvent], tuple[float | None, ...]] = operator.attrgetter(*CHARTED_METRICS)
"""A probe's values of the charted metrics, in ``CHARTED_METRICS`` order."""


def _meta(ev: TelemetryEvent, prompt_id: str, metric: str) -> ChartMeta:
    return ChartMeta(
        provider=ev.provider,
        model=ev.model,
        target=ev.target,
        prompt_id=prompt_id,
        metric=metric,
        host=ev.host,
    )


class _Entry:
    __slots__ = ("chart", "checked", "dirty", "ids", "meta", "seq", "settings_seq", "view", "view_key")

    def __init__(
        self, meta: ChartMeta, chart: MetricChart | AvailabilityChart, seq: int, settings_seq: int = 0
    ) -> None:
        self.meta = meta
        self.chart = chart
        self.seq = seq
        self.dirty = False
        self.settings_seq = settings_seq
        # False until the configuration was compared with the settings in force (after a load).
        self.checked = False
        # A superset of the ids of the chart's recent points (a re-baseline may empty those
        # without telling us): a hit is confirmed against the points, a miss is certain.
        self.ids: set[str] | None = None
        # The metric chart's last rendered view and what it was rendered from (Engine._view).
        self.view: ChartView | None = None
        self.view_key: tuple[object, ...] = ()

    def seen(self, point_id: str) -> bool:
        """Whether ``point_id`` is among the metric chart's recent points (the duplicate check)."""
        chart = self.chart
        assert isinstance(chart, MetricChart)
        if self.ids is None:
            self.ids = {p.id for p in chart.state.recent}
        return point_id in self.ids and any(p.id == point_id for p in chart.state.recent)

    def remember(self, point_id: str, evicted: str | None) -> None:
        """Keep the id set in step after a point was charted (and ``evicted`` dropped)."""
        if self.ids is None:
            return
        if evicted is not None:
            self.ids.discard(evicted)
        self.ids.add(point_id)
        if len(self.ids) > 2 * RECENT:
            self.ids = None


Loader = Callable[[str], Awaitable[Snapshot | None]]


async def _no_snapshot(_: str) -> Snapshot | None:
    return None


class Engine:
    """All charts of the partitions this replica owns; ``on_telemetry`` is the handler."""

    def __init__(
        self,
        *,
        config_for: Callable[[str], ChartConfig] = default_config,
        availability: AvailabilityConfig | None = None,
        load: Loader = _no_snapshot,
        owns: Callable[[str, str], bool] = lambda provider, model: True,
    ) -> None:
        self._config_for = config_for
        self._availability = availability or AvailabilityConfig()
        self._load = load
        self._owns = owns
        self._charts: dict[str, _Entry] = {}
        self._settings: dict[tuple[str, str], list[_Change]] = {}
        self._key_cache: dict[tuple[str, str, str, str], tuple[str, tuple[str, ...]]] = {}

    # -- per-model settings ------------------------------------------------------------------
    def settings_log(self, provider: str, model: str) -> SettingsLog:
        changes = [c.change for c in self._settings.get((provider, model), [])]
        return SettingsLog(provider=provider, model=model, changes=changes)

    def load_settings_log(self, log: SettingsLog) -> None:
        """Restore a model's settings changes (from the KV bucket, at start)."""
        ordered = sorted(log.changes, key=lambda c: c.from_seq)
        self._settings[(log.provider, log.model)] = [_Change(c) for c in ordered]

    def current_overrides(self, provider: str, model: str) -> ModelOverrides | None:
        changes = self._settings.get((provider, model))
        return changes[-1].change.overrides if changes else None

    def set_overrides(
        self, provider: str, model: str, overrides: ModelOverrides | None, from_seq: int = 0
    ) -> bool:
        """Apply ``overrides`` from stream sequence ``from_seq`` on; False when nothing changed.

        A change at the same sequence as the last one replaces it.
        """
        changes = self._settings.setdefault((provider, model), [])
        if (changes[-1].change.overrides if changes else None) == overrides:
            return False
        if changes and changes[-1].change.from_seq >= from_seq:
            from_seq = changes[-1].change.from_seq
            changes.pop()
        changes.append(_Change(SettingsChange(from_seq=from_seq, overrides=overrides)))
        return True

    def prune_settings(self, provider: str, model: str, covered_seq: int) -> None:
        """Forget changes no replay after ``covered_seq`` can need (all but the last in force)."""
        changes = self._settings.get((provider, model), [])
        in_force = [i for i, c in enumerate(changes) if c.change.from_seq <= covered_seq + 1]
        if len(in_force) > 1:
            del changes[: in_force[-1]]

    def _change_at(self, provider: str, model: str, seq: int) -> _Change | None:
        changes = self._settings.get((provider, model))
        if not changes:
            return None
        if not seq:
            return changes[-1]
        found = None
        for c in changes:
            if c.change.from_seq > seq:
                break
            found = c
        return found

    def _config(self, metric: str, change: _Change | None) -> ChartConfig:
        if change is None:
            return self._config_for(metric)
        cfg = change.configs.get(metric)
        if cfg is None:
            ov = change.change.overrides
            base = self._config_for(metric)
            cfg = change.configs[metric] = apply_settings(base, ov.for_metric(metric) if ov else None)
        return cfg

    def effective_config(self, provider: str, model: str, metric: str, seq: int = 0) -> ChartConfig:
        """The configuration a chart of this model and metric runs with at stream sequence seq."""
        return self._config(metric, self._change_at(provider, model, seq))

    def _reconcile(self, entry: _Entry, metric: str, change: _Change | None) -> list[Signal]:
        """Reconfigure the chart when the settings change in force (``change``) is not the one it
        runs with; the signals of a new baseline's start."""
        from_seq = change.change.from_seq if change is not None else 0
        if entry.checked and entry.settings_seq == from_seq:
            return []
        entry.checked = True
        entry.settings_seq = from_seq
        chart = entry.chart
        assert isinstance(chart, MetricChart)
        target = self._config(metric, change)
        if target == chart.config:
            return []
        overrides = change.change.overrides if change is not None else None
        by = overrides.updated_by if overrides is not None else "engine"
        what = "; ".join(describe_changes(chart.config, target, BASELINE_SETTINGS))
        if overrides is None and change is not None:
            what = f"overrides removed: {what}"
        why = f" ({overrides.reason})" if overrides is not None and overrides.reason else ""
        return chart.reconfigure(target, by, f"configuration changed: {what}{why}"[:2000])

    @property
    def charts(self) -> dict[str, _Entry]:
        return self._charts

    def owns(self, provider: str, model: str) -> bool:
        return self._owns(provider, model)

    async def _entry(self, key: str, meta: ChartMeta, metric: str, seq: int = 0) -> _Entry:
        entry = self._charts.get(key)
        if entry is not None:
            return entry
        snap = await self._load(key)
        if metric == AVAILABILITY:
            state = snap.state if snap is not None and isinstance(snap.state, AvailabilityState) else None
            entry = _Entry(meta, AvailabilityChart(self._availability, state), snap.seq if snap else 0)
        elif isinstance(snap, ChartSnapshot):
            # The configuration the state was built with; a change since applies at the next point.
            chart = MetricChart(snap.config, key=key, state=snap.state)
            entry = _Entry(meta, chart, snap.seq, snap.settings_seq)
        else:
            change = self._change_at(meta.provider, meta.model, seq)
            chart = MetricChart(self._config(metric, change), key=key)
            entry = _Entry(meta, chart, 0, change.change.from_seq if change is not None else 0)
            entry.checked = True
        self._charts[key] = entry
        return entry

    def _keys(self, ev: TelemetryEvent) -> tuple[str, tuple[str, ...]]:
        """Chart keys of a probe's subgroup (availability, then one per charted metric), cached:
        building them escapes every name, and the same few subgroups come back every probe."""
        subgroup = (ev.provider, ev.model, ev.target, ev.prompt_id)
        keys = self._key_cache.get(subgroup)
        if keys is None:
            if len(self._key_cache) >= _KEY_CACHE_SIZE:
                self._key_cache.clear()
            keys = self._key_cache[subgroup] = (
                chart_key(ev.provider, ev.model, ev.target, "*", AVAILABILITY),
                tuple(chart_key(*subgroup, metric) for metric in CHARTED_METRICS),
            )
        return keys

    async def on_telemetry(self, ev: TelemetryEvent, seq: int = 0) -> list[ViolationEvent]:
        """Chart one probe; ``seq`` is its stream sequence (0: unknown, never skipped)."""
        out = self.on_telemetry_loaded(ev, seq)
        if out is None:
            await self._load_charts(ev, seq)
            out = self.on_telemetry_loaded(ev, seq)
            assert out is not None  # every chart it needs is in memory now
        return out

    async def _load_charts(self, ev: TelemetryEvent, seq: int) -> None:
        """Load (or create) the charts a probe updates that are not in memory."""
        avail_key, metric_keys = self._keys(ev)
        if avail_key not in self._charts:
            await self._entry(avail_key, _meta(ev, "*", AVAILABILITY), AVAILABILITY)
        if not ev.ok or ev.cold_start:
            return
        for metric, key, value in zip(CHARTED_METRICS, metric_keys, _metric_values(ev), strict=True):
            if value is not None and key not in self._charts:
                await self._entry(key, _meta(ev, ev.prompt_id, metric), metric, seq)

    def on_telemetry_loaded(self, ev: TelemetryEvent, seq: int = 0) -> list[ViolationEvent] | None:
        """:meth:`on_telemetry` without a coroutine when every chart the probe updates is in
        memory (the usual case: the service's per-event path); None, with nothing done, when one
        must be loaded first."""
        if not self._owns(ev.provider, ev.model):
            return []
        avail_key, metric_keys = self._keys(ev)
        charts = self._charts
        entry = charts.get(avail_key)
        if entry is None:
            return None
        ok = ev.ok
        charted = ok and not ev.cold_start
        values = _metric_values(ev)
        if charted:
            for key, value in zip(metric_keys, values, strict=True):
                if value is not None and key not in charts:
                    return None
        out: list[ViolationEvent] = []
        # Engine._fresh, inlined here and below: this runs for every chart of every probe.
        if not (seq and seq <= entry.seq):
            if seq:
                entry.seq = seq
            entry.dirty = True
            achart = entry.chart
            assert isinstance(achart, AvailabilityChart)
            asigs = achart.update(not ok, ev.id)
            if asigs:
                for asig in asigs:
                    out.append(self._availability_event(avail_key, entry, asig, ev.id, ev.ts, ev.system))
        if not charted:
            if ok and isinstance(entry.chart, AvailabilityChart):
                # A model load is not warm latency: counted on the availability chart, never charted.
                entry.chart.state.cold_starts += 1
            return out
        # The same for the probe's every metric: looked up once.
        change = self._change_at(ev.provider, ev.model, seq)
        from_seq = change.change.from_seq if change is not None else 0
        point_id = ev.id
        for metric, key, value in zip(CHARTED_METRICS, metric_keys, values, strict=True):
            if value is None:
                continue
            entry = charts[key]
            if seq and seq <= entry.seq:
                continue
            if seq:
                entry.seq = seq
            entry.dirty = True
            chart = entry.chart
            assert isinstance(chart, MetricChart)
            # _Entry.seen and _Entry.remember, inlined.
            ids = entry.ids
            if ids is None:
                ids = entry.ids = {p.id for p in chart.state.recent}
            if point_id in ids and any(p.id == point_id for p in chart.state.recent):
                continue
            if not entry.checked or entry.settings_seq != from_seq:
                for sig in self._reconcile(entry, metric, change):
                    out.append(self._metric_event(key, entry, sig, ev))
            if ev.prompt_hash != chart.state.prompt_hash:
                for sig in self._prompt_changed(chart, ev.prompt_hash):
                    out.append(self._metric_event(key, entry, sig, ev))
            recent = chart.state.recent
            oldest = recent[0].id if len(recent) >= RECENT else None
            signals = chart.update(float(value), point_id, ev.ts)
            if signals:
                for sig in signals:
                    out.append(self._metric_event(key, entry, sig, ev))
            if recent and recent[-1].id == point_id:  # charted (a value the transform refuses is not)
                if oldest is not None:
                    ids.discard(oldest)
                ids.add(point_id)
                if len(ids) > 2 * RECENT:
                    entry.ids = None
        return out

    @staticmethod
    def _prompt_changed(chart: MetricChart, prompt_hash: str) -> list[Signal]:
        """A new prompt text under the same prompt id is a new process: a new baseline."""
        old, chart.state.prompt_hash = chart.state.prompt_hash, prompt_hash
        if not old:  # the chart's first point, or a snapshot from before prompt hashes were kept
            return []
        return chart.rebaseline("engine", f"prompt text changed (hash {old[:12]} -> {prompt_hash[:12]})")

    async def ensure_loaded(self, key: str) -> bool:
        """Load a chart from its snapshot if it is not in memory; False when there is none."""
        if key in self._charts:
            return True
        snap = await self._load(key)
        if snap is None:
            return False
        await self._entry(key, snap.meta, snap.meta.metric)
        return True

    def rebaseline(self, key: str, by: str, reason: str, ts: datetime) -> list[ViolationEvent] | None:
        """Re-baseline one loaded chart; None when this replica does not hold it."""
        entry = self._charts.get(key)
        if entry is None:
            return None
        entry.dirty = True
        chart = entry.chart
        if isinstance(chart, MetricChart):
            return [self._metric_event(key, entry, sig, None, ts) for sig in chart.rebaseline(by, reason)]
        # The clears are tied to the latest probe, so a replay of the same request makes the same ids.
        point = chart.last_point_id or f"rebaseline-{chart.state.baseline_number}"
        signals = chart.rebaseline(by, reason)
        return [self._availability_event(key, entry, sig, point, ts, SystemMetrics()) for sig in signals]

    def snapshot(self, key: str, updated_at: datetime | None = None) -> Snapshot:
        entry = self._charts[key]
        chart = entry.chart
        if isinstance(chart, MetricChart):
            return ChartSnapshot(
                key=key,
                meta=entry.meta,
                seq=entry.seq,
                updated_at=updated_at,
                config=chart.config,
                state=chart.state,
                view=self._view(entry, chart),
                settings_seq=entry.settings_seq,
            )
        return AvailabilitySnapshot(
            key=key,
            meta=entry.meta,
            seq=entry.seq,
            updated_at=updated_at,
            config=chart.config,
            state=chart.state,
            availability=render_availability(chart.config, chart.state),
        )

    def public_view(self, key: str) -> tuple[ChartMeta, int, ChartView | AvailabilityView]:
        """What a chart's public record shows (its meta, seq and view), without the snapshot of
        its state: a public-only write (each second) reads this for every chart that took a
        point, and most of their views are unchanged."""
        entry = self._charts[key]
        chart = entry.chart
        if isinstance(chart, MetricChart):
            return entry.meta, entry.seq, self._view(entry, chart)
        return entry.meta, entry.seq, render_availability(chart.config, chart.state)

    @staticmethod
    def _view(entry: _Entry, chart: MetricChart) -> ChartView:
        """``render_view``, reused while everything it reads is unchanged: the configuration and
        the baseline (frozen, compared by identity), the points collected, the note and the open
        episodes. Every chart that took a point is written each second, its view with it."""
        st = chart.state
        episodes = tuple((key, ep.rule) for key, ep in st.episodes.items())
        got = entry.view_key
        if (
            entry.view is not None
            and got[0] is chart.config
            and got[1] is st.baseline
            and got[2] == len(st.collected)
            and got[3] == st.note
            and got[4] == episodes
        ):
            return entry.view
        view = entry.view = render_view(chart.config, st)
        entry.view_key = (chart.config, st.baseline, len(st.collected), st.note, episodes)
        return view

    def take_dirty(self) -> list[str]:
        keys = [k for k, e in self._charts.items() if e.dirty]
        for k in keys:
            self._charts[k].dirty = False
        return keys

    @staticmethod
    def _fresh(entry: _Entry, seq: int) -> bool:
        if seq and seq <= entry.seq:
            return False
        if seq:
            entry.seq = seq
        entry.dirty = True
        return True

    def _metric_event(
        self, key: str, entry: _Entry, sig: Signal, ev: TelemetryEvent | None, ts: datetime | None = None
    ) -> ViolationEvent:
        meta = entry.meta
        # The direction is part of the id: a shift up and a shift down are two episodes, and
        # both may open or clear at one point (an id without it would be dropped as a duplicate).
        rule = f"{sig.rule}:{sig.direction}" if sig.direction else sig.rule
        vid = violation_id(key, rule, sig.state, sig.point_id)
        episode = vid if sig.state == "open" else violation_id(key, rule, "open", sig.episode_point_id)
        b = sig.baseline
        when = ts if ts is not None else (ev.ts if ev is not None else None)
        if when is None:
            when = sig.points[-1].ts if sig.points and sig.points[-1].ts else datetime.fromtimestamp(0, UTC)
        return ViolationEvent(
            id=vid,
            ts=when,
            state=sig.state,
            episode_id=episode,
            provider=meta.provider,  # type: ignore[arg-type]
            model=meta.model,
            target=meta.target,
            host=meta.host,
            prompt_id=meta.prompt_id,
            metric=meta.metric,
            chart=sig.chart,
            chart_key=key,
            rule=sig.rule,
            rule_name=sig.rule_name,
            severity=sig.severity,
            value=sig.value,
            statistic=sig.statistic,
            deviation_sigma=sig.deviation_sigma,
            limits=sig.limits,
            baseline=BaselineRef(
                id=b.id,
                n=b.n,
                started_at=b.started_at,
                ended_at=b.ended_at,
                created_by=b.created_by,
                reason=b.reason,
            ),
            point_ids=tuple(p.id for p in sig.points),
            point_values=tuple(p.value for p in sig.points),
            point_ts=tuple(p.ts for p in sig.points if p.ts is not None),
            system=ev.system if ev is not None else SystemMetrics(),
            opened_at=when if sig.state == "open" else None,
            direction=sig.direction,
            better=sig.better,
            level=sig.level,
            change_pct=(sig.level / sig.limits.center - 1.0) * 100.0
            if sig.level is not None and sig.limits.center
            else None,
            detail=describe_signal(meta.metric, sig),
        )

    def _availability_event(
        self,
        key: str,
        entry: _Entry,
        sig: AvailabilitySignal,
        point_id: str,
        ts: datetime,
        system: SystemMetrics,
    ) -> ViolationEvent:
        chart, meta = entry.chart, entry.meta
        assert isinstance(chart, AvailabilityChart)
        st, cfg = chart.state, chart.config
        rate = st.rate or 0.0
        ucl = (st.threshold or cfg.window) / cfg.window
        vid = violation_id(key, sig.rule, sig.state, point_id)
        episode = vid if sig.state == "open" else violation_id(key, sig.rule, "open", sig.episode_point_id)
        # The first baseline keeps the id it always had; each re-baseline gets its own.
        baseline_id = f"availability-{key}" + (f"#{st.baseline_number}" if st.baseline_number else "")
        return ViolationEvent(
            id=vid,
            ts=ts,
            state=sig.state,
            episode_id=episode,
            provider=meta.provider,  # type: ignore[arg-type]
            model=meta.model,
            target=meta.target,
            host=meta.host,
            prompt_id="",
            metric=AVAILABILITY,
            chart="availability",
            chart_key=key,
            rule=sig.rule,
            rule_name=sig.rule_name,
            severity=sig.severity,
            value=float(sig.failures),
            deviation_sigma=0.0,
            limits=ChartLimits(
                center=rate,
                sigma=0.0,
                ucl=ucl,
                lcl=0.0,
                zone_a_upper=ucl,
                zone_a_lower=0.0,
                zone_b_upper=ucl,
                zone_b_lower=0.0,
            ),
            # Why the baseline was started, as every chart's: "initial baseline" or the
            # re-baseline's reason. Its size and rate are ``n`` and ``limits.center``; a bare
            # "failure rate" (before) read "n=40, failure rate" on the dashboard, cut short.
            baseline=BaselineRef(
                id=baseline_id,
                n=min(st.n - st.baseline_start, cfg.baseline_n),
                created_by=st.baseline_by or "engine",
                reason=st.baseline_reason or "initial baseline",
            ),
            point_ids=(point_id,),
            system=system,
            opened_at=ts if sig.state == "open" else None,
        )
