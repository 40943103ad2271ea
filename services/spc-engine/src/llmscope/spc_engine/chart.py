"""One metric's chart: transform, Phase I model, the detectors, and violation episodes.

The same object runs in the service (one per provider/model/target/prompt/metric) and in the
offline ``analyze`` command. Its whole state is a msgspec Struct (:class:`ChartState`), so a
snapshot is ``msgspec.json.encode(chart.state)`` and ``MetricChart(config, state=decoded)``
continues exactly where the snapshot left off.

Phase I collects ``baseline_n`` points and fits the in-control model (:func:`baseline.fit`): a
baseline that is not stable is not frozen, its older part is dropped and collection goes on,
and ``ChartState.note`` says why. Phase II judges each point by its one-step residual from the
model's robust filter (``r``, innovation sigmas), clipped at ``clip`` for the CUSUM and EWMA.

Episodes (what is published): the critical detectors of one direction (``CUSUM``, ``TAIL``,
``SPIKE``) share one episode per direction, keyed ``PAGE:up`` / ``PAGE:down``: it opens once, at
the first point any of them fires (named after that rule), and clears after ``clear_after``
points on which none fired and, once a CUSUM fired in it, after the return test says the level
is back: ``B = max(0, B + a - d)`` over the episode's signed residuals ``d`` with ``a`` half the
shift measured so far (at most MAX_RETURN_SHIFT), clearing when B passes the h that a shift
still present would take ``clear_arl`` points to reach. So a sustained shift of any size is one
episode, however its CUSUM wanders near h or the shift eases off, and a shift up and a later
shift down are two. The other rules (EWMA, Nelson tests) keep one episode per rule and direction
and clear after ``clear_after`` quiet points. When an episode clears, its CUSUM side (or the
EWMA) restarts from zero. Phase I points are never judged; Phase II starts with the point after
the baseline's last.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal

import msgspec

from llmscope.proto.violation import ChartKind, ChartLimits, Direction
from llmscope.spc_engine import transforms
from llmscope.spc_engine.availability import binomial_threshold
from llmscope.spc_engine.baseline import Fit, Unstable, fit, spike_limit
from llmscope.spc_engine.charts.cusum import CusumChart, CusumSide, CusumState
from llmscope.spc_engine.charts.ewma import EwmaChart, EwmaState
from llmscope.spc_engine.charts.individuals import IndividualsChart, IndividualsState
from llmscope.spc_engine.config import BASELINE_SETTINGS, ChartConfig
from llmscope.spc_engine.rules import Severity

RECENT = 64
"""Points kept for reporting the points that formed a pattern (longest default run: 15)."""
RULE_ORDER = ("CUSUM", "TAIL", "SPIKE", "EWMA", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8")
PAGING_RULES = ("CUSUM", "TAIL", "SPIKE")
"""The rules that share one episode per direction, in the order that names an episode."""
SIDED_TESTS = frozenset({1, 2, 5, 6})
"""Nelson tests with a side (the others, trends and runs within or beyond 1 sigma, have none)."""
MODEL_VERSION = 2
"""The in-control model's version: a state from an older one is re-baselined at its next point."""
UPGRADE_REASON = (
    "new in-control model (serial dependence, robust baseline, tail rate, stability check):"
    " the limits are estimated again"
)
LEVEL_POINTS = 50
"""Newest points whose mean is the level a sustained signal is judged by against ``min_change``."""
SHIFT_PRIOR_POINTS = 20
MIN_RETURN_SHIFT = 0.1
MAX_RETURN_SHIFT = 0.5
"""Largest ``a`` of the return test: a large shift that eases off but stays well above the
baseline (+55 % falling to +35 %, seen on a real server) is still one episode; the chart clears
only when the level is back within about half a residual sigma of the baseline."""
"""Smallest ``a`` of the return test (residual sigmas): even a tiny shift clears one day."""


_log = math.log
_isfinite = math.isfinite
_INF = math.inf


class PointRef(msgspec.Struct, frozen=True, array_like=True):
    """A charted point: its index in the series, telemetry id, value (metric units), time."""

    index: int
    id: str
    value: float
    ts: datetime | None = None


class Baseline(msgspec.Struct, frozen=True, kw_only=True):
    """The frozen Phase I model limits are judged against, in chart units.

    ``center`` and ``sigma`` are the level and marginal sigma (the drawn limits); the detectors
    judge one-step residuals of the AR model ``ar`` in units of ``sigma_e``.
    """

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
    model: int = 1
    ar: tuple[float, ...] = ()
    sigma_e: float = 0.0
    w_mean: float = 0.0
    w_sd: float = 1.0
    tail_rate: float = 0.0
    spike_rate: float = 0.0
    spike_excess: float = 0.0
    worst: float = 0.0
    lag_corr: tuple[float, ...] = ()


class EpisodeState(msgspec.Struct, kw_only=True):
    open_index: int
    open_point_id: str
    quiet: int = 0
    rule: str = ""
    """The rule that opened it ("" in states from before episodes were keyed by direction)."""
    cusum: bool = False
    """A CUSUM fired in this episode: it clears only when the return test passes."""
    shift_sum: float = 0.0
    shift_n: int = 0
    back: float = 0.0
    """The return test's statistic."""


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
    model: int = 1
    """MODEL_VERSION the state was built with (1: before the field existed)."""
    hist: list[float] = msgspec.field(default_factory=list)
    """The robust filter's last ``p`` values, oldest first (the AR predictor's inputs)."""
    tail_window: list[bool] = msgspec.field(default_factory=list)
    """Whether each of the last ``tail.window`` points was a tail point (worse direction)."""
    note: str = ""
    """Why the baseline in progress was extended ("" when nothing was refused)."""
    refused: int = 0
    """Baselines refused as unstable since the last armed one."""


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
    direction: Direction = ""
    better: bool = False
    level: float | None = None
    """The process's estimated level (metric units) when the signal fired, where estimated."""


class _Fire(msgspec.Struct, frozen=True, kw_only=True):
    chart: ChartKind
    severity: Severity
    name: str
    statistic: float | None = None
    n_points: int = 1
    direction: Direction = ""
    better: bool = False
    level: float | None = None


_NO_FIRES: dict[str, _Fire] = {}
"""Shared and never written: the per-point path makes a dict only when a detector fires."""


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
        if state is None:
            state = ChartState(model=MODEL_VERSION)
        self.state = state
        if state.baseline is None and config.center is not None and config.sigma is not None:
            center = transforms.forward(config.transform, config.center)
            if center is None:
                raise ValueError(
                    f"center {config.center} cannot be charted with transform {config.transform}"
                )
            state.model = MODEL_VERSION
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
                    model=MODEL_VERSION,
                    sigma_e=config.sigma,
                    w_sd=_clipped_normal_sd(config.clip),
                    tail_rate=_normal_tail(config.tail.k),
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
            "TAIL": cfg.tail.enabled,
            "EWMA": cfg.ewma.enabled,
            **{f"R{n}": cfg.individuals and cfg.rules.test(n).enabled for n in range(1, 9)},
        }
        return [r for r in RULE_ORDER if enabled[r]]

    @property
    def spike_limit(self) -> float:
        """Residual sigmas (worse direction) beyond which one point is a SPIKE."""
        b = self.state.baseline
        return math.inf if b is None else spike_limit_of(self.config, b)

    @property
    def tail_threshold(self) -> int:
        """Tail points among the last ``tail.window`` that open a TAIL episode."""
        b = self.state.baseline
        return 0 if b is None else tail_threshold_of(self.config, b)

    @property
    def tail_clear(self) -> int:
        """Tail points among the last ``tail.window`` that keep an open episode going."""
        b, t = self.state.baseline, self.config.tail
        rate = max(t.min_rate, b.tail_rate if b is not None else 0.0)
        return max(1, math.ceil(2 * t.window * rate))

    # -- updates ---------------------------------------------------------------------------
    def update(self, x: float, point_id: str = "", ts: datetime | None = None) -> list[Signal]:
        # transforms.forward, inlined: this runs for every point of every chart.
        y: float | None
        if self.config.transform == "log":
            y = _log(x) if x > 0.0 and x != _INF else None  # x > 0 is False for NaN
        else:
            y = x if _isfinite(x) else None
        st = self.state
        if y is None:
            st.n_rejected += 1
            return []
        out: list[Signal] | None = None
        if st.model < MODEL_VERSION:
            out = self.rebaseline("engine", UPGRADE_REASON)
            st.model = MODEL_VERSION
        ref = PointRef(st.n_points, point_id, x, ts)
        st.n_points += 1
        recent = st.recent
        recent.append(ref)
        if len(recent) > RECENT:
            del recent[0]
        baseline = st.baseline
        if baseline is None:
            self._collect(y, ref)
            return out if out is not None else []
        judged = self._judge(y, ref, baseline)
        return out + judged if out else judged

    def _hot(self) -> None:
        """Constants of the per-point path that follow from the configuration alone."""
        cfg = self.config
        self._hot_config = cfg
        worse: Direction = cfg.worse
        self._worse = worse
        self._better: Direction = "down" if worse == "up" else "up"
        self._sign = 1.0 if worse == "up" else -1.0
        self._ewma_on = cfg.ewma.enabled
        self._nelson = self._ind.nelson if self._ind is not None and cfg.individuals else None
        self._cusum_on = cfg.cusum.enabled
        tail = cfg.tail
        self._tail_on = tail.enabled
        self._tail_k = tail.k
        self._tail_n = tail.window
        self._spike_on = cfg.spike.enabled
        self._clip = cfg.clip
        self._floors = bool(cfg.min_change or cfg.min_spike_change)

    def rebaseline(self, by: str, reason: str) -> list[Signal]:
        """Forget the limits and collect a new baseline; open episodes clear now."""
        st = self.state
        out: list[Signal] = []
        if st.baseline is not None and st.recent:
            last = st.recent[-1]
            y = transforms.forward(self.config.transform, last.value)
            z = 0.0 if y is None or not st.baseline.sigma else (y - st.baseline.center) / st.baseline.sigma
            for key in sorted(st.episodes, key=_episode_order):
                ep = st.episodes.pop(key)
                rule = _rule_of(key, ep)
                fire = self._describe(rule, _direction_of(key))
                out.append(self._signal(rule, fire, "cleared", last, z, st.baseline, ep))
        st.baseline = None
        st.individuals = st.ewma = st.cusum = None
        st.episodes = {}
        st.collected = []
        st.collected_first = None
        st.hist = []
        st.tail_window = []
        st.note = ""
        st.refused = 0
        st.baseline_number += 1
        st.pending_by = by
        st.pending_reason = reason
        self._build()
        return out

    def reconfigure(self, config: ChartConfig, by: str, reason: str) -> list[Signal]:
        """Run with ``config`` from the next point on.

        A change of a setting the in-control model depends on (:data:`BASELINE_SETTINGS`, the
        tail rule's k) starts a new baseline (recorded with ``by`` and ``reason``; open episodes
        clear now, as in :meth:`rebaseline`). Any other change keeps the baseline and the run
        counters; a CUSUM whose k, h or cap changed restarts from zero.
        """
        old = self.config
        if (
            any(getattr(old, f) != getattr(config, f) for f in BASELINE_SETTINGS)
            or old.tail.k != config.tail.k
        ):
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
        result = settle_baseline(cfg, st.collected, st.refused, self._format_level)
        if not isinstance(result, Fit):
            kept = st.collected[result.keep_from :]
            start = ref.index - len(kept) + 1
            st.collected = kept
            st.collected_first = next(
                (p for p in st.recent if p.index == start),
                PointRef(start, "", transforms.inverse(cfg.transform, kept[0])),
            )
            st.note = result.reason
            st.refused += 1
            return
        first = st.collected_first if st.collected_first is not None else ref
        sigma_e = max(result.sigma_e, cfg.min_sigma) if math.isfinite(result.sigma_e) else cfg.min_sigma
        baseline = Baseline(
            id=_baseline_id(self.key, st.baseline_number, first.index, ref.index),
            number=st.baseline_number,
            center=result.center,
            sigma=max(result.sigma, sigma_e),
            n=result.n,
            n_excluded=result.n_excluded,
            first_index=first.index,
            last_index=ref.index,
            started_at=first.ts,
            ended_at=ref.ts,
            created_by=st.pending_by,
            reason=st.pending_reason + _refusals_note(st.refused, cfg.max_refusals, result.n),
            model=MODEL_VERSION,
            ar=result.ar,
            sigma_e=sigma_e,
            w_mean=result.w_mean,
            w_sd=result.w_sd if result.w_sd > 0 else 1.0,
            tail_rate=result.tail_rate,
            spike_rate=result.spike_rate,
            spike_excess=result.spike_excess,
            worst=result.max_residual,
            lag_corr=result.lag_corr,
        )
        st.collected = []
        st.collected_first = None
        st.note = ""
        st.refused = 0
        self._arm(baseline)

    def _format_level(self, y: float) -> str:
        return f"{transforms.inverse(self.config.transform, y):.4g}"

    def _arm(self, baseline: Baseline) -> None:
        st = self.state
        st.baseline = baseline
        st.individuals = IndividualsState()
        st.ewma = EwmaState()
        cfg = self.config.cusum
        st.cusum = CusumChart(cfg.k, cfg.h, cfg.cap).state
        st.hist = [baseline.center] * len(baseline.ar)
        st.tail_window = []
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
        # The Nelson tests read residuals, which are standardised already.
        self._ind = IndividualsChart(0.0, 1.0, cfg.rules, st.individuals)
        self._ewma = EwmaChart(cfg.ewma.lam, cfg.ewma.L, st.ewma)
        self._cusum = CusumChart(cfg.cusum.k, cfg.cusum.h, cfg.cusum.cap, st.cusum)
        self._spike = self.spike_limit
        self._tail_open = self.tail_threshold
        self._tail_keep = self.tail_clear
        # Per-point constants, so the hot path formats and sums nothing it did before.
        self._tail_count = sum(st.tail_window)
        self._page_worse = f"PAGE:{cfg.worse}"
        self._hot()

    def _describe(self, rule: str, direction: Direction = "") -> _Fire:
        cfg = self.config
        better = direction != "" and direction != cfg.worse
        way = "faster" if better else "slower"
        severity: Severity
        if rule == "SPIKE":
            name = f"one answer {way} than anything the baseline made plausible"
            chart: ChartKind = "individuals"
            severity = cfg.spike.severity
        elif rule == "CUSUM":
            name, chart, severity = f"sustained shift: {way} than the baseline", "cusum", cfg.cusum.severity
        elif rule == "TAIL":
            t = cfg.tail
            name = f"more unusually slow answers than the baseline has (>= {self._tail_open} in {t.window})"
            chart, severity = "individuals", t.severity
        elif rule == "EWMA":
            name, chart, severity = f"gradual drift: {way} than the baseline", "ewma", cfg.ewma.severity
        else:
            n = int(rule[1:])
            name, chart, severity = cfg.rules.name(n), "individuals", cfg.rules.test(n).severity
        if better and not cfg.page_better:
            severity = "info"
        return _Fire(chart=chart, severity=severity, name=name, direction=direction, better=better)

    def _level(self, n: int) -> float:
        """The process's level now, in metric units: the (log-scale) mean of the last ``n`` points.

        Measured, not modelled: converting a residual shift back to a level divides by
        ``1 - sum(phi)``, which under strong autocorrelation turned a 0.9 s level into "3.4 s"."""
        t = self.config.transform
        points = self.state.recent[-max(1, n) :]
        # transforms.forward, inlined: a CUSUM above its h asks for this at every point.
        if t == "log":
            ys = [_log(v) for p in points if (v := p.value) > 0.0 and v != _INF]
        else:
            ys = [v for p in points if _isfinite(v := p.value)]
        return transforms.inverse(t, sum(ys) / len(ys)) if ys else math.nan

    def _judge(self, y: float, ref: PointRef, baseline: Baseline) -> list[Signal]:
        cfg = self.config
        st = self.state
        ewma = self._ewma
        assert ewma is not None
        assert self._cusum is not None
        if self._hot_config is not cfg:
            self._hot()
        b = baseline
        worse = self._worse
        better = self._better
        sign = self._sign
        center = b.center
        pred = center
        hist = st.hist
        ar = b.ar
        if ar:
            i = -1
            for phi in ar:
                pred += phi * (hist[i] - center)
                i -= 1
        r = (y - pred) / b.sigma_e
        clip = self._clip
        w = clip if r > clip else (-clip if r < -clip else r)
        if ar:
            hist.append(pred + w * b.sigma_e)
            del hist[0]
        u = (w - b.w_mean) / b.w_sd
        z = (y - b.center) / b.sigma if b.sigma else 0.0
        d = sign * u  # worse-positive

        out: list[Signal] = []
        # The critical detectors, one episode per direction (the dicts are made when one fires).
        paging_worse: dict[str, _Fire] = _NO_FIRES
        paging_better: dict[str, _Fire] = _NO_FIRES
        side_worse = side_better = None
        if self._cusum_on:
            # CusumChart.step, inlined (the same arithmetic in the same order).
            cusum = self._cusum
            cs = cusum.state
            upper, lower, run_up, run_down = cs.upper, cs.lower, cs.run_up, cs.run_down
            capped = cusum.capped
            up_fired = down_fired = False
            for i, k, h, limit in cusum.steps:
                up = upper[i] + d - k
                down = lower[i] - d - k
                if up > 0.0:
                    run_up[i] += 1
                else:
                    up = 0.0
                    run_up[i] = 0
                if down > 0.0:
                    run_down[i] += 1
                else:
                    down = 0.0
                    run_down[i] = 0
                if capped:
                    if limit < up:
                        up = limit
                    if limit < down:
                        down = limit
                upper[i] = up
                lower[i] = down
                if up > h:
                    up_fired = True
                if down > h:
                    down_fired = True
            # The sides are built only when they signal: nothing reads them otherwise.
            if up_fired:
                side_worse = self._cusum.side("up")
                paging_worse = {"CUSUM": self._cusum_fire(worse, side_worse)}
            if down_fired:
                side_better = self._cusum.side("down")
                paging_better = {"CUSUM": self._cusum_fire(better, side_better)}
        if self._tail_on:
            window = st.tail_window
            hit = sign * r > self._tail_k
            window.append(hit)
            count = self._tail_count + hit  # kept in step with the window, not summed per point
            tail_n = self._tail_n
            if len(window) > tail_n:
                count -= window.pop(0)
            self._tail_count = count
            if len(window) >= tail_n:
                need = self._tail_keep if self._page_worse in st.episodes else self._tail_open
                if count >= need:
                    fire = self._describe("TAIL", worse)
                    if paging_worse is _NO_FIRES:
                        paging_worse = {}
                    paging_worse["TAIL"] = msgspec.structs.replace(
                        fire,
                        name=f"{count} of the last {cfg.tail.window} answers unusually slow"
                        f" (the baseline has {100 * b.tail_rate:.2g} %)",
                        n_points=cfg.tail.window,
                    )
        if self._spike_on and sign * r > self._spike:
            if paging_worse is _NO_FIRES:
                paging_worse = {}
            paging_worse["SPIKE"] = msgspec.structs.replace(self._describe("SPIKE", worse), level=ref.value)
        episodes = st.episodes
        if paging_worse and self._floors and self._page_worse not in episodes:
            paging_worse = self._large_enough(paging_worse, b)
        if paging_worse or episodes:
            out += self._family(worse, paging_worse, side_worse, d, ref, z, b)
        if paging_better or episodes:
            out += self._family(better, paging_better, side_better, -d, ref, z, b)

        # The other rules: one episode per rule and direction (the dict is made when one fires).
        fired: dict[str, _Fire] = _NO_FIRES
        nelson = self._nelson
        if nelson is not None:
            # IndividualsChart.update on residuals (centre 0, sigma 1: z is r), without the call.
            st_ind = st.individuals
            assert st_ind is not None
            st_ind.n += 1
            for n in nelson.update(r, r):
                direction: Direction = ("up" if r > 0 else "down") if n in SIDED_TESTS else ""
                key = f"R{n}:{direction}" if direction else f"R{n}"
                if fired is _NO_FIRES:
                    fired = {}
                fired[key] = msgspec.structs.replace(
                    self._describe(f"R{n}", direction), n_points=cfg.rules.window(n)
                )
        if self._ewma_on:
            # EwmaChart.update and _ewma_fired, inlined (the same arithmetic in the same order).
            es = ewma.state
            value = es.value = ewma.keep * es.value + ewma.lam * u
            es.n += 1
            bound = ewma.bound
            if abs(value) > bound:
                ewma_fired = True
            elif st.episodes:
                # Hysteresis: an EWMA hovering at its limit during a shift is one episode.
                ewma_fired = f"EWMA:{'up' if value > 0 else 'down'}" in st.episodes and abs(value) > bound / 2
            else:
                ewma_fired = False
            if ewma_fired:
                # u is not oriented: a positive EWMA is the metric going up, whichever way is worse.
                direction = "up" if ewma.state.value > 0 else "down"
                span = min(ewma.state.n, max(1, round(2.0 / cfg.ewma.lam)))
                level = self._level(span)
                if fired is _NO_FIRES:
                    fired = {}
                fired[f"EWMA:{direction}"] = msgspec.structs.replace(
                    self._describe("EWMA", direction), statistic=level, level=level, n_points=span
                )
        if not fired:
            if not st.episodes:
                return out
            rest = [k for k in st.episodes if not k.startswith("PAGE:")]
            if not rest:
                return out
            order = sorted(rest, key=_episode_order)
        else:
            order = sorted(
                set(fired) | {k for k in st.episodes if not k.startswith("PAGE:")}, key=_episode_order
            )
        for key in order:
            found = fired.get(key)
            ep = st.episodes.get(key)
            rule = key.split(":")[0]
            if ep is None:
                if found is not None:
                    ep = st.episodes[key] = EpisodeState(
                        open_index=ref.index, open_point_id=ref.id, rule=rule
                    )
                    out.append(self._signal(rule, found, "open", ref, z, b, ep))
                continue
            if found is not None:
                ep.quiet = 0
                continue
            ep.quiet += 1
            if ep.quiet >= cfg.clear_after:
                del st.episodes[key]
                cleared = self._describe(_rule_of(key, ep), _direction_of(key))
                out.append(self._signal(_rule_of(key, ep), cleared, "cleared", ref, z, b, ep))
                if rule == "EWMA":
                    ewma.reset()
        return out

    def _large_enough(self, fires: dict[str, _Fire], b: Baseline) -> dict[str, _Fire]:
        """The fires whose change is large enough to open the page (``min_change``,
        ``min_spike_change``): the level a message reports (CUSUM: the mean since its run began;
        TAIL: of its window; SPIKE: the answer) at least ``1 + floor`` times worse than the centre."""
        cfg = self.config
        center = transforms.inverse(cfg.transform, b.center)
        out: dict[str, _Fire] = {}
        for rule, fire in fires.items():
            if rule == "SPIKE":
                floor, level = cfg.min_spike_change, fire.level
            else:
                # The level now: the newest points of the signal, at most LEVEL_POINTS, so that a
                # large shift after a long small drift is not diluted by the drift.
                floor, level = cfg.min_change, self._level(min(max(1, fire.n_points), LEVEL_POINTS))
                fire = msgspec.structs.replace(fire, level=level)
            if level is None or not level > 0 or not center > 0:
                continue
            if (level / center if cfg.worse == "up" else center / level) >= 1.0 + floor:
                out[rule] = fire
        return out

    def _cusum_fire(self, direction: Direction, side: CusumSide) -> _Fire:
        stat = side.statistic if direction == "up" else -side.statistic
        run = max(1, side.run)
        return msgspec.structs.replace(
            self._describe("CUSUM", direction), statistic=stat, n_points=run, level=self._level(run)
        )

    def _family(
        self,
        direction: Direction,
        fires: dict[str, _Fire],
        side: CusumSide | None,
        d: float,
        ref: PointRef,
        z: float,
        b: Baseline,
    ) -> list[Signal]:
        """The shared episode of the critical detectors in one direction (``d``: that way +)."""
        st = self.state
        key = f"PAGE:{direction}"
        ep = st.episodes.get(key)
        if ep is None:
            if not fires:
                return []
            rule = next(r for r in PAGING_RULES if r in fires)
            ep = st.episodes[key] = EpisodeState(open_index=ref.index, open_point_id=ref.id, rule=rule)
            if "CUSUM" in fires and side is not None:
                _start_return_test(ep, side)
            return [self._signal(rule, fires[rule], "open", ref, z, b, ep)]
        ep.quiet = 0 if fires else ep.quiet + 1
        a = 0.0
        if "CUSUM" in fires and not ep.cusum and side is not None:
            _start_return_test(ep, side)
        elif ep.cusum:
            ep.shift_sum += d
            ep.shift_n += 1
            a = min(MAX_RETURN_SHIFT, max(MIN_RETURN_SHIFT, ep.shift_sum / ep.shift_n / 2.0))
            ep.back = max(0.0, ep.back + a - d)
        cfg = self.config
        if ep.quiet < cfg.clear_after or (ep.cusum and ep.back <= return_h(a, cfg.clear_arl)):
            return []
        del st.episodes[key]
        assert self._cusum is not None
        self._cusum.reset("up" if direction == cfg.worse else "down")
        fire = msgspec.structs.replace(self._describe(ep.rule, direction), level=ref.value)
        return [self._signal(ep.rule, fire, "cleared", ref, z, b, ep)]

    def _signal(
        self,
        rule: str,
        fire: _Fire,
        state: Literal["open", "cleared"],
        ref: PointRef,
        z: float,
        baseline: Baseline,
        ep: EpisodeState,
    ) -> Signal:
        first_judged = baseline.last_index + 1
        n_points = fire.n_points if state == "open" else 1
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
            direction=fire.direction,
            better=fire.better,
            level=fire.level,
        )


def settle_baseline(
    config: ChartConfig,
    values: Sequence[float],
    refused: int,
    level: Callable[[float], str] = "{:.4g}".format,
) -> Fit | Unstable:
    """:func:`fit_baseline`, except that after ``config.max_refusals`` unstable baselines in a row
    (``refused``) the next one is fitted without the stability test.

    Measured on AR(1) latency whose level wanders slowly (``performance.Process.wander``): charts
    armed this way raise no more false alarms than those whose baseline passed the test.
    """
    result = fit_baseline(config, values, level)
    if isinstance(result, Unstable) and config.max_refusals and refused >= config.max_refusals:
        return fit_baseline(msgspec.structs.replace(config, stability=False), values, level)
    return result


def _refusals_note(refused: int, max_refusals: int, n: int) -> str:
    if not refused:
        return ""
    plural = "s" * (refused > 1)
    if max_refusals and refused >= max_refusals:
        return (
            f" (after {refused} unstable baseline{plural}: armed on the latest {n} points although"
            " the level still moved; re-baseline once the endpoint is steady)"
        )
    return f" (after {refused} unstable baseline{plural})"


def fit_baseline(
    config: ChartConfig, values: Sequence[float], level: Callable[[float], str] = "{:.4g}".format
) -> Fit | Unstable:
    """:func:`baseline.fit` with a chart configuration's settings."""
    return fit(
        values,
        estimator=config.sigma_estimator,
        clip=config.clip,
        tail_k=config.tail.k,
        worse=1.0 if config.worse == "up" else -1.0,
        max_order=config.max_ar_order,
        serial=config.serial,
        stability=config.stability,
        winsor=config.clean_limit,
        level=level,
        min_spread=stability_spread(config),
        inverse=lambda y: transforms.inverse(config.transform, y),
    )


def stability_spread(config: ChartConfig) -> float:
    """The factor a baseline's block levels must be apart, besides beyond its noise, to be refused:
    ``1 + min_change / 2``. A step smaller than that cannot by itself take the level to the page
    floor from the baseline's median, and on a real server the level wanders by a few per cent
    with nothing wrong: measured, the test in sigma units alone refused three baselines in a row
    for block spreads of 3.5-8 % (README, "Measured against a real inference server"). With no
    floor (``min_change`` 0) the test is the statistical one alone."""
    return 1.0 + config.min_change / 2.0


def spike_limit_of(config: ChartConfig, b: Baseline) -> float:
    """The SPIKE limit of baseline ``b`` under ``config`` (residual sigmas, worse direction)."""
    return spike_limit(config.spike.k, b.spike_rate, b.spike_excess, b.worst, config.spike.arl0)


def tail_threshold_of(config: ChartConfig, b: Baseline) -> int:
    """Tail points among the last ``tail.window`` that open a TAIL episode on baseline ``b``."""
    t = config.tail
    return binomial_threshold(t.window, max(t.min_rate, b.tail_rate), t.alpha)


def _start_return_test(ep: EpisodeState, side: CusumSide) -> None:
    """Start the shift estimate from what the CUSUM measured over its run (``k + C / run``),
    worth at most SHIFT_PRIOR_POINTS points: at the moment it signals, a CUSUM overestimates a
    small shift (it signals when the noise helped), and a return test sized to that estimate
    would clear a small shift that is still there."""
    ep.cusum = True
    weight = min(max(1, side.run), SHIFT_PRIOR_POINTS)
    ep.shift_sum = side.shift * weight
    ep.shift_n = weight
    ep.back = 0.0


def return_h(a: float, arl: float) -> float:
    """h of the return test ``B = max(0, B + a - d)`` for a false-clear ARL of ``arl`` points
    when the shift ``2a`` is still there (drift ``-a``, unit variance; Siegmund's approximation
    ``(exp(2ab) - 2ab - 1) / (2a^2)`` with ``b = h + 1.166``)."""
    if a <= 0.0:
        return math.inf
    b = math.log(arl * 2 * a * a + 1) / (2 * a)
    for _ in range(3):
        b = math.log(arl * 2 * a * a + 2 * a * b + 1) / (2 * a)
    return b - 1.166


def _rule_of(key: str, ep: EpisodeState) -> str:
    return ep.rule or key.split(":")[0]


def _direction_of(key: str) -> Direction:
    part = key.partition(":")[2]
    return "up" if part == "up" else ("down" if part == "down" else "")


def _episode_order(key: str) -> tuple[int, str]:
    rule = key.split(":")[0]
    return (RULE_ORDER.index(rule) if rule in RULE_ORDER else len(RULE_ORDER), key)


def _normal_tail(k: float) -> float:
    return 0.5 * math.erfc(k / math.sqrt(2.0))


def _clipped_normal_sd(c: float) -> float:
    """Standard deviation of a standard normal clipped to +-c."""
    pdf = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    tail = _normal_tail(c)
    return math.sqrt((1 - 2 * tail) - 2 * c * pdf + 2 * c * c * tail)
