"""One metric's chart: transform, Phase I baseline, the detectors, and violation episodes.

The same object runs in the service (one per provider/model/target/prompt/metric) and in the
offline ``analyze`` command. Its whole state is a msgspec Struct (:class:`ChartState`), so a
snapshot is ``msgspec.json.encode(chart.state)`` and ``MetricChart(config, state=decoded)``
continues exactly where the snapshot left off.

Episodes: each rule has at most one open episode. It opens at the point that completes the
rule's pattern (one ``open`` signal), further firing points of the same run publish nothing,
and it clears (one ``cleared`` signal) after ``clear_after`` consecutive points on which the
rule did not fire. When a CUSUM or EWMA episode clears, that chart restarts from zero.
Phase I points are never judged; Phase II starts with the point after the baseline's last.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime
from typing import Literal

import msgspec

from llmscope.proto.violation import ChartKind, ChartLimits
from llmscope.spc_engine import transforms
from llmscope.spc_engine.baseline import estimate
from llmscope.spc_engine.charts.cusum import CusumChart, CusumState
from llmscope.spc_engine.charts.ewma import EwmaChart, EwmaState
from llmscope.spc_engine.charts.individuals import IndividualsChart, IndividualsState
from llmscope.spc_engine.config import BASELINE_SETTINGS, ChartConfig
from llmscope.spc_engine.rules import Severity

RECENT = 64
"""Points kept for reporting the points that formed a pattern (longest default run: 15)."""
RULE_ORDER = ("SPIKE", "CUSUM", "EWMA", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8")


class PointRef(msgspec.Struct, frozen=True, array_like=True):
    """A charted point: its index in the series, telemetry id, value (metric units), time."""

    index: int
    id: str
    value: float
    ts: datetime | None = None


class Baseline(msgspec.Struct, frozen=True, kw_only=True):
    """The frozen Phase I result limits are judged against. centre and sigma in chart units."""

    id: str
    number: int
    center: float
    sigma: float
    n: int
    n_excluded: int = 0
    known: bool = False
    first_index: int = -1
    last_index: int = -1
    started_at: datetime | None = None
    ended_at: datetime | None = None
    created_by: str = "engine"
    reason: str = "initial baseline"


class EpisodeState(msgspec.Struct, kw_only=True):
    open_index: int
    open_point_id: str
    quiet: int = 0


class ChartState(msgspec.Struct, kw_only=True):
    """Everything a chart remembers; round-trips through JSON unchanged."""

    n_points: int = 0
    n_rejected: int = 0
    baseline_number: int = 0
    pending_by: str = "engine"
    pending_reason: str = "initial baseline"
    collected: list[float] = msgspec.field(default_factory=list)
    collected_first: PointRef | None = None
    baseline: Baseline | None = None
    individuals: IndividualsState | None = None
    ewma: EwmaState | None = None
    cusum: CusumState | None = None
    episodes: dict[str, EpisodeState] = msgspec.field(default_factory=dict)
    recent: list[PointRef] = msgspec.field(default_factory=list)
    prompt_hash: str = ""
    """Hash of the prompt text the chart's points come from ("" before the first point)."""


class Signal(msgspec.Struct, frozen=True, kw_only=True):
    """An episode opening or clearing, with the statistics frozen at that point."""

    rule: str
    rule_name: str
    chart: ChartKind
    severity: Severity
    state: Literal["open", "cleared"]
    index: int
    point_id: str
    value: float
    statistic: float | None
    deviation_sigma: float
    limits: ChartLimits
    baseline: Baseline
    points: tuple[PointRef, ...]
    episode_index: int
    episode_point_id: str


class _Fire(msgspec.Struct, frozen=True):
    chart: ChartKind
    severity: Severity
    name: str
    statistic: float | None
    n_points: int


def limits_of(config: ChartConfig, baseline: Baseline) -> ChartLimits:
    """Centre, control limits and zone bounds in metric units (asymmetric on the log scale)."""
    c, s, t = baseline.center, baseline.sigma, config.transform
    k = config.rules.r1.k

    def inv(y: float) -> float:
        return transforms.inverse(t, y)

    return ChartLimits(
        transform=t,
        center=inv(c),
        sigma=s,
        ucl=inv(c + k * s),
        lcl=inv(c - k * s),
        zone_a_upper=inv(c + 2 * s),
        zone_a_lower=inv(c - 2 * s),
        zone_b_upper=inv(c + s),
        zone_b_lower=inv(c - s),
    )


def _baseline_id(key: str, number: int, first: int, last: int) -> str:
    digest = hashlib.sha256(f"{key}|{number}|{first}|{last}".encode()).hexdigest()[:16]
    return f"b{number}-{digest}"


class MetricChart:
    """Streaming chart of one metric; ``update`` returns the episode signals of that point."""

    def __init__(self, config: ChartConfig, key: str = "", state: ChartState | None = None) -> None:
        self.config = config
        self.key = key
        self.state = state if state is not None else ChartState()
        if self.state.baseline is None and config.center is not None and config.sigma is not None:
            center = transforms.forward(config.transform, config.center)
            if center is None:
                raise ValueError(
                    f"center {config.center} cannot be charted with transform {config.transform}"
                )
            self._arm(
                Baseline(
                    id=f"known-{_baseline_id(key, 0, -1, -1)}",
                    number=0,
                    center=center,
                    sigma=config.sigma,
                    n=0,
                    known=True,
                    created_by="config",
                    reason="known parameters",
                )
            )
        else:
            self._build()

    # -- read-only views -------------------------------------------------------------------
    @property
    def armed(self) -> bool:
        return self.state.baseline is not None

    @property
    def progress(self) -> tuple[int, int]:
        """(points collected, points needed) of the baseline in progress."""
        if self.state.baseline is not None:
            return (self.config.baseline_n, self.config.baseline_n)
        return (len(self.state.collected), self.config.baseline_n)

    def limits(self) -> ChartLimits | None:
        return None if self.state.baseline is None else limits_of(self.config, self.state.baseline)

    def rules(self) -> list[str]:
        """The rules this configuration evaluates, in evaluation order."""
        cfg = self.config
        enabled = {
            "SPIKE": cfg.spike.enabled,
            "CUSUM": cfg.cusum.enabled,
            "EWMA": cfg.ewma.enabled,
            **{f"R{n}": cfg.individuals and cfg.rules.test(n).enabled for n in range(1, 9)},
        }
        return [r for r in RULE_ORDER if enabled[r]]

    # -- updates ---------------------------------------------------------------------------
    def update(self, x: float, point_id: str = "", ts: datetime | None = None) -> list[Signal]:
        y = transforms.forward(self.config.transform, x)
        st = self.state
        if y is None:
            st.n_rejected += 1
            return []
        ref = PointRef(st.n_points, point_id, x, ts)
        st.n_points += 1
        st.recent.append(ref)
        if len(st.recent) > RECENT:
            del st.recent[0]
        if st.baseline is None:
            self._collect(y, ref)
            return []
        return self._judge(y, ref, st.baseline)

    def rebaseline(self, by: str, reason: str) -> list[Signal]:
        """Forget the limits and collect a new baseline; open episodes clear now."""
        st = self.state
        out: list[Signal] = []
        if st.baseline is not None and st.recent:
            last = st.recent[-1]
            y = transforms.forward(self.config.transform, last.value)
            z = 0.0 if y is None else (y - st.baseline.center) / st.baseline.sigma
            for rule in [r for r in RULE_ORDER if r in st.episodes]:
                ep = st.episodes.pop(rule)
                out.append(self._signal(rule, self._describe(rule), "cleared", last, z, st.baseline, ep, 1))
        st.baseline = None
        st.individuals = st.ewma = st.cusum = None
        st.episodes = {}
        st.collected = []
        st.collected_first = None
        st.baseline_number += 1
        st.pending_by = by
        st.pending_reason = reason
        self._build()
        return out

    def reconfigure(self, config: ChartConfig, by: str, reason: str) -> list[Signal]:
        """Run with ``config`` from the next point on.

        A change of transform, baseline size or sigma estimator starts a new baseline (recorded
        with ``by`` and ``reason``; open episodes clear now, as in :meth:`rebaseline`). Any other
        change keeps the baseline and the run counters; a CUSUM whose k, h or cap changed
        restarts from zero.
        """
        old = self.config
        if any(getattr(old, f) != getattr(config, f) for f in BASELINE_SETTINGS):
            out = self.rebaseline(by, reason)  # judged with the old transform
            self.config = config
            self._build()
            return out
        self.config = config
        st = self.state
        if st.cusum is not None and (old.cusum.k, old.cusum.h, old.cusum.cap) != (
            config.cusum.k,
            config.cusum.h,
            config.cusum.cap,
        ):
            st.cusum = CusumChart(config.cusum.k, config.cusum.h, config.cusum.cap).state
        self._build()
        return []

    def _collect(self, y: float, ref: PointRef) -> None:
        st = self.state
        if not st.collected:
            st.collected_first = ref
        st.collected.append(y)
        if len(st.collected) < self.config.baseline_n:
            return
        cfg = self.config
        est = estimate(st.collected, cfg.sigma_estimator, cfg.clean_baseline, cfg.clean_limit)
        first = st.collected_first if st.collected_first is not None else ref
        baseline = Baseline(
            id=_baseline_id(self.key, st.baseline_number, first.index, ref.index),
            number=st.baseline_number,
            center=est.center,
            sigma=max(est.sigma, cfg.min_sigma) if math.isfinite(est.sigma) else cfg.min_sigma,
            n=est.n,
            n_excluded=len(est.excluded),
            first_index=first.index,
            last_index=ref.index,
            started_at=first.ts,
            ended_at=ref.ts,
            created_by=st.pending_by,
            reason=st.pending_reason,
        )
        st.collected = []
        st.collected_first = None
        self._arm(baseline)

    def _arm(self, baseline: Baseline) -> None:
        st = self.state
        st.baseline = baseline
        st.individuals = IndividualsState()
        st.ewma = EwmaState()
        cfg = self.config.cusum
        st.cusum = CusumChart(cfg.k, cfg.h, cfg.cap).state
        self._build()

    def _build(self) -> None:
        st = self.state
        self._ind: IndividualsChart | None = None
        self._ewma: EwmaChart | None = None
        self._cusum: CusumChart | None = None
        if st.baseline is None:
            return
        cfg = self.config
        assert st.individuals is not None
        assert st.ewma is not None
        assert st.cusum is not None
        self._ind = IndividualsChart(st.baseline.center, st.baseline.sigma, cfg.rules, st.individuals)
        self._ewma = EwmaChart(cfg.ewma.lam, cfg.ewma.L, st.ewma)
        self._cusum = CusumChart(cfg.cusum.k, cfg.cusum.h, cfg.cusum.cap, st.cusum)

    def _describe(self, rule: str) -> _Fire:
        cfg = self.config
        if rule == "SPIKE":
            return _Fire(
                "individuals", cfg.spike.severity, f"1 point more than {cfg.spike.k:g} sigma", None, 1
            )
        if rule == "CUSUM":
            pairs = ", ".join(f"k={k:g} h={h:g}" for k, h in zip(cfg.cusum.k, cfg.cusum.h, strict=True))
            return _Fire("cusum", cfg.cusum.severity, f"CUSUM beyond h ({pairs})", None, 1)
        if rule == "EWMA":
            name = f"EWMA beyond limits (lambda={cfg.ewma.lam:g}, L={cfg.ewma.L:g})"
            return _Fire("ewma", cfg.ewma.severity, name, None, 1)
        n = int(rule[1:])
        return _Fire("individuals", cfg.rules.test(n).severity, cfg.rules.name(n), None, cfg.rules.window(n))

    def _judge(self, y: float, ref: PointRef, baseline: Baseline) -> list[Signal]:
        cfg = self.config
        assert self._ind is not None
        assert self._ewma is not None
        assert self._cusum is not None
        z, tests = self._ind.update(y)
        fired: dict[str, _Fire] = {}
        if cfg.individuals:
            for n in tests:
                fired[f"R{n}"] = self._describe(f"R{n}")
        if cfg.spike.enabled and abs(z) > cfg.spike.k:
            fired["SPIKE"] = self._describe("SPIKE")
        if cfg.ewma.enabled and self._ewma.update(z):
            stat = transforms.inverse(cfg.transform, baseline.center + self._ewma.value * baseline.sigma)
            window = min(self._ewma.state.n, max(1, round(2.0 / cfg.ewma.lam)))
            fired["EWMA"] = msgspec.structs.replace(self._describe("EWMA"), statistic=stat, n_points=window)
        if cfg.cusum.enabled:
            pt = self._cusum.update(z)
            if pt.fired:
                fired["CUSUM"] = msgspec.structs.replace(
                    self._describe("CUSUM"), statistic=pt.statistic, n_points=max(1, pt.run)
                )

        st = self.state
        out: list[Signal] = []
        for rule in RULE_ORDER:
            fire = fired.get(rule)
            ep = st.episodes.get(rule)
            if ep is None:
                if fire is not None:
                    ep = st.episodes[rule] = EpisodeState(open_index=ref.index, open_point_id=ref.id)
                    out.append(self._signal(rule, fire, "open", ref, z, baseline, ep, fire.n_points))
                continue
            if fire is not None:
                ep.quiet = 0
                continue
            ep.quiet += 1
            if ep.quiet >= cfg.clear_after:
                del st.episodes[rule]
                out.append(self._signal(rule, self._describe(rule), "cleared", ref, z, baseline, ep, 1))
                if rule == "CUSUM":
                    self._cusum.reset()
                elif rule == "EWMA":
                    self._ewma.reset()
        return out

    def _signal(
        self,
        rule: str,
        fire: _Fire,
        state: Literal["open", "cleared"],
        ref: PointRef,
        z: float,
        baseline: Baseline,
        ep: EpisodeState,
        n_points: int,
    ) -> Signal:
        first_judged = baseline.last_index + 1
        points = tuple(p for p in self.state.recent[-n_points:] if p.index >= first_judged)
        return Signal(
            rule=rule,
            rule_name=fire.name,
            chart=fire.chart,
            severity=fire.severity,
            state=state,
            index=ref.index,
            point_id=ref.id,
            value=ref.value,
            statistic=fire.statistic,
            deviation_sigma=z,
            limits=limits_of(self.config, baseline),
            baseline=baseline,
            points=points,
            episode_index=ep.open_index,
            episode_point_id=ep.open_point_id,
        )
