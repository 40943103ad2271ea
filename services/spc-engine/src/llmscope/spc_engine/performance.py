"""Measured false alarms, detection delays and pages per shift of the ``critical`` signals.

Issue 7's targets, for the default configuration with every chart's model estimated from its own
baseline (the engine's :func:`baseline.fit`, so each chart has its own errors), on latency that
looks like a real LLM endpoint's, not only the textbook case:

- independent lognormal latency (sigma of log latency 0.2-0.6);
- AR(1) on the log scale, phi 0.1-0.5 (consecutive probes share load, batch and cache state);
- 1-2 % of answers 3-5x slower (queueing, a cold cache), as isolated additive outliers;
- both together.

Targets: at most 1 critical signal per 100,000 in-control probes (independent) and 3 (every
other case); a sustained degradation of 1 sigma found within a median of 25 probes (45 at
phi 0.3), 2 sigma within 8 (12); one critical episode per sustained shift of 0.25-5 sigma (mean
<= 1.05); none for a process that got faster. "Sigma" is the marginal standard deviation of
log latency of the in-control body (what a user would measure on a quiet stretch).

Phase II runs vectorised over many charts at once with exactly the streaming chart's
recursion for the critical detectors of the degradation direction (robust AR filter, clipped
residuals, CUSUM with caps, TAIL window, SPIKE, the shared episode with its return test);
``tests/spc_engine/test_performance.py`` checks that both give the same episodes on the same
data. Shared by those tests and ``bench/spc_bench.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from llmscope.spc_engine.availability import binomial_threshold
from llmscope.spc_engine.baseline import Fit, spike_limit
from llmscope.spc_engine.chart import (
    LEVEL_POINTS,
    MAX_RETURN_SHIFT,
    MIN_RETURN_SHIFT,
    RECENT,
    SHIFT_PRIOR_POINTS,
    MetricChart,
    return_h,
    settle_baseline,
)
from llmscope.spc_engine.config import ChartConfig, default_config

Arr = npt.NDArray[np.float64]

FALSE_ALARMS_PER_100K_TARGET = 1.0
"""Independent latency: at most one critical signal per 100,000 in-control probes."""
FALSE_ALARMS_PER_100K_TARGET_REAL = 3.0
"""Autocorrelated or heavy-tailed latency: at most three."""
DETECTION_TARGETS: dict[float, dict[float, int]] = {1.0: {0.0: 25, 0.3: 45}, 2.0: {0.0: 8, 0.3: 12}}
"""shift (sigma) -> {phi: target median delay in probes}."""
PAGES_PER_SHIFT_TARGET = 1.05
_MU = float(np.log(800.0))


@dataclass(frozen=True, slots=True)
class Process:
    """In-control log latency: AR(1) body with marginal sd ``sigma_log``, plus additive outliers."""

    name: str
    sigma_log: float = 0.3
    phi: float = 0.0
    outliers: float = 0.0
    """Fraction of answers slower by a factor drawn uniformly from ``slow``."""
    slow: tuple[float, float] = (3.0, 5.0)
    wander: float = 0.0
    """Marginal sd (in units of the body's) of a level that wanders slowly: an AR(1) with time
    constant ``wander_tau`` points, added to the body (load that comes and goes over hours)."""
    wander_tau: float = 2000.0

    @property
    def dependent_or_heavy(self) -> bool:
        return self.phi != 0.0 or self.outliers != 0.0 or self.wander != 0.0


PROCESSES: tuple[Process, ...] = (
    Process("independent, sigma_log 0.2", sigma_log=0.2),
    Process("independent, sigma_log 0.4", sigma_log=0.4),
    Process("independent, sigma_log 0.6", sigma_log=0.6),
    Process("AR(1) phi 0.1", phi=0.1),
    Process("AR(1) phi 0.3", phi=0.3),
    Process("AR(1) phi 0.5", phi=0.5),
    Process("1% 3-5x slower, sigma_log 0.2", sigma_log=0.2, outliers=0.01),
    Process("2% 3-5x slower, sigma_log 0.2", sigma_log=0.2, outliers=0.02),
    Process("1% 3-5x slower, sigma_log 0.4", sigma_log=0.4, outliers=0.01),
    Process("2% 3-5x slower, sigma_log 0.6", sigma_log=0.6, outliers=0.02),
    Process("phi 0.3 + 1% slower", phi=0.3, outliers=0.01),
    Process("phi 0.5 + 2% slower", phi=0.5, outliers=0.02),
    Process("phi 0.3 + 2% slower, sigma_log 0.6", sigma_log=0.6, phi=0.3, outliers=0.02),
)
WANDER_PROCESSES: tuple[Process, ...] = (
    Process("phi 0.5, level wanders 0.6 sd over ~2000", phi=0.5, wander=0.6),
    Process("phi 0.5, level wanders 1.0 sd over ~2000", phi=0.5, wander=1.0),
    Process("phi 0.5, level wanders 0.6 sd over ~500", phi=0.5, wander=0.6, wander_tau=500.0),
)
"""Slow level changes that make baselines fail the stability test (``max_refusals`` at work)."""


class Stream:
    """Log latency of ``reps`` independent endpoints, continued call after call."""

    def __init__(self, rng: np.random.Generator, process: Process, reps: int) -> None:
        self.rng = rng
        self.p = process
        self.state = rng.standard_normal(reps)
        # Drawn only for a wandering process, so the others' figures stay what they were.
        self.level = rng.standard_normal(reps) * process.wander if process.wander else None

    def take(self, n: int, shift: float = 0.0, rows: npt.NDArray[np.intp] | None = None) -> Arr:
        """The next ``n`` log latencies of each endpoint (of ``rows`` only, if given)."""
        p, rng = self.p, self.rng
        state = self.state if rows is None else self.state[rows]
        reps = state.size
        innov = rng.standard_normal((reps, n)) * math.sqrt(1.0 - p.phi * p.phi)
        body = np.empty((reps, n))
        for t in range(n):
            state = p.phi * state + innov[:, t]
            body[:, t] = state
        if rows is None:
            self.state = state
        else:
            self.state[rows] = state
        slow = (rng.random((reps, n)) < p.outliers) * np.log(rng.uniform(p.slow[0], p.slow[1], (reps, n)))
        if self.level is not None:
            body += self._wander(n, rows)
        return _MU + p.sigma_log * (body + shift) + slow

    def _wander(self, n: int, rows: npt.NDArray[np.intp] | None) -> Arr:
        assert self.level is not None
        p, rng = self.p, self.rng
        keep = 1.0 - 1.0 / p.wander_tau
        level = self.level if rows is None else self.level[rows]
        innov = rng.standard_normal((level.size, n)) * p.wander * math.sqrt(1.0 - keep * keep)
        out = np.empty((level.size, n))
        for t in range(n):
            level = keep * level + innov[:, t]
            out[:, t] = level
        if rows is None:
            self.level = level
        else:
            self.level[rows] = level
        return out


@dataclass(slots=True)
class Charts:
    """The frozen models of ``reps`` charts, as arrays (the streaming chart's Baseline)."""

    center: Arr
    ar: Arr
    """(reps, max order), zero-padded."""
    sigma_e: Arr
    w_mean: Arr
    w_sd: Arr
    spike: Arr
    tail_open: Arr
    tail_keep: Arr
    refused: int
    """Baselines refused as unstable (collection went on)."""
    forced: npt.NDArray[np.bool_] | None = None
    """Charts armed without the stability test after ``max_refusals`` refusals in a row."""


def fit_charts(stream: Stream, reps: int, config: ChartConfig | None = None) -> Charts:
    """Collect and fit one baseline per chart, as ``MetricChart._collect`` does (refusals too)."""
    cfg = config or default_config("latency_ms")
    return charts_from(stream.take(cfg.baseline_n), cfg, lambda i, n: stream.take(n, rows=np.array([i]))[0])


def charts_from(
    baselines: Arr, config: ChartConfig | None = None, more: Callable[[int, int], Arr] | None = None
) -> Charts:
    """Fit each row of ``baselines`` (chart scale); a refused one continues with ``more(row, n)``."""
    cfg = config or default_config("latency_ms")
    fits: list[Fit] = []
    refused = 0
    forced: list[bool] = []
    for i, y in enumerate(baselines):
        in_a_row = 0
        while True:
            result = settle_baseline(cfg, y.tolist(), in_a_row)
            if isinstance(result, Fit):
                break
            if more is None:
                raise ValueError(f"baseline {i} was refused: {result.reason}")
            refused += 1
            in_a_row += 1
            y = np.concatenate([y[result.keep_from :], more(i, result.keep_from)])
        fits.append(result)
        forced.append(bool(cfg.max_refusals) and in_a_row >= cfg.max_refusals)
    reps = len(fits)
    order = max(1, cfg.max_ar_order)
    ar = np.zeros((reps, order))
    for i, f in enumerate(fits):
        ar[i, : len(f.ar)] = f.ar
    t = cfg.tail
    rates = [max(t.min_rate, f.tail_rate) for f in fits]
    return Charts(
        center=np.array([f.center for f in fits]),
        ar=ar,
        sigma_e=np.array([max(f.sigma_e, cfg.min_sigma) for f in fits]),
        w_mean=np.array([f.w_mean for f in fits]),
        w_sd=np.array([f.w_sd if f.w_sd > 0 else 1.0 for f in fits]),
        spike=np.array(
            [
                spike_limit(cfg.spike.k, f.spike_rate, f.spike_excess, f.max_residual, cfg.spike.arl0)
                for f in fits
            ]
        ),
        tail_open=np.array([binomial_threshold(t.window, r, t.alpha) for r in rates], dtype=np.float64),
        tail_keep=np.array([max(1, math.ceil(2 * t.window * r)) for r in rates], dtype=np.float64),
        refused=refused,
        forced=np.array(forced, dtype=np.bool_),
    )


@dataclass(frozen=True, slots=True)
class Run:
    first: Arr
    """Index (1-based) of the first critical signal per chart; n + 1 if none."""
    opens: Arr
    """Critical episodes opened per chart."""
    clears: Arr
    by_rule: dict[str, int]


def run_critical(y: Arr, charts: Charts, config: ChartConfig | None = None) -> Run:
    """The degradation-direction critical episodes of each chart over log latencies ``y``.

    ``y`` is (charts, points) in the chart's scale, judged from the point after the baseline.
    """
    cfg = config or default_config("latency_ms")
    reps, n = y.shape
    c = charts
    ks = np.array(cfg.cusum.k)[:, None]
    hs = np.array(cfg.cusum.h)[:, None]
    cap = cfg.cusum.cap * hs
    clip, window = cfg.clip, cfg.tail.window
    order = c.ar.shape[1]
    hist = np.repeat(c.center[:, None], order, axis=1)  # newest first
    up = np.zeros((ks.size, reps))
    run = np.zeros((ks.size, reps))
    ring = np.zeros((window, reps))
    count = np.zeros(reps)
    is_open = np.zeros(reps, dtype=bool)
    quiet = np.zeros(reps)
    seen = np.zeros(reps, dtype=bool)
    shift_sum = np.zeros(reps)
    shift_n = np.zeros(reps)
    back = np.zeros(reps)
    first = np.full(reps, float(n + 1))
    opens = np.zeros(reps)
    clears = np.zeros(reps)
    by_rule = {"CUSUM": 0, "TAIL": 0, "SPIKE": 0}
    cols = np.arange(reps)
    h_of = np.vectorize(lambda a: return_h(float(a), cfg.clear_arl))
    # min_change: the level a signal reports must be far enough from the centre to open a page
    # (the mean of the newest points, at most RECENT of them, as MetricChart._level).
    floor = math.log1p(cfg.min_change) if cfg.min_change else None
    spike_floor = math.log1p(cfg.min_spike_change) if cfg.min_spike_change else None
    csum = np.zeros((n + 1, reps))
    np.cumsum(y.T, axis=0, out=csum[1:])

    def mean_last(t: int, m: Arr) -> Arr:
        m = np.minimum(np.maximum(m, 1), min(RECENT, t + 1)).astype(np.intp)
        out: Arr = (csum[t + 1] - csum[t + 1 - m, cols]) / m
        return out

    for t in range(n):
        pred = c.center + ((hist - c.center[:, None]) * c.ar).sum(axis=1)
        r = (y[:, t] - pred) / c.sigma_e
        w = np.clip(r, -clip, clip)
        hist = np.roll(hist, 1, axis=1)
        hist[:, 0] = pred + w * c.sigma_e
        d = (w - c.w_mean) / c.w_sd
        up = np.minimum(cap, np.maximum(0.0, up + d - ks)) if cfg.cusum.enabled else up
        run = np.where(up > 0.0, run + 1, 0)
        f_cusum = (up > hs).any(axis=0) if cfg.cusum.enabled else np.zeros(reps, dtype=bool)
        f_spike = (r > c.spike) if cfg.spike.enabled else np.zeros(reps, dtype=bool)
        tail = (r > cfg.tail.k).astype(np.float64)
        count += tail - ring[t % window]
        ring[t % window] = tail
        if cfg.tail.enabled and t + 1 >= window:
            f_tail = count >= np.where(is_open, c.tail_keep, c.tail_open)
        else:
            f_tail = np.zeros(reps, dtype=bool)
        fire = f_cusum | f_spike | f_tail
        o_cusum, o_spike, o_tail = f_cusum, f_spike, f_tail
        if floor is not None and (f_cusum & ~is_open).any():
            best_k = np.argmax(up / hs, axis=0)
            now = mean_last(t, np.minimum(run[best_k, cols], LEVEL_POINTS))
            o_cusum = f_cusum & (now - c.center >= floor)
        if floor is not None and (f_tail & ~is_open).any():
            o_tail = f_tail & (mean_last(t, np.full(reps, min(window, LEVEL_POINTS))) - c.center >= floor)
        if spike_floor is not None:
            o_spike = f_spike & (y[:, t] - c.center >= spike_floor)
        new = ~is_open & (o_cusum | o_spike | o_tail)
        if new.any():
            opens += new
            first[new & (first > n)] = t + 1
            by_rule["CUSUM"] += int((new & o_cusum).sum())
            by_rule["TAIL"] += int((new & o_tail & ~o_cusum).sum())
            by_rule["SPIKE"] += int((new & o_spike & ~o_cusum & ~o_tail).sum())
        continuing = is_open & ~new
        quiet = np.where(new | (continuing & fire), 0.0, quiet + 1)
        start = ((new & o_cusum) | continuing) & ~seen & f_cusum
        if start.any():
            best = np.argmax(up / hs, axis=0)
            big_c = up[best, cols]
            runs = np.minimum(np.maximum(run[best, cols], 1), SHIFT_PRIOR_POINTS)
            shift_sum = np.where(
                start, (big_c / np.maximum(run[best, cols], 1) + ks[best, 0]) * runs, shift_sum
            )
            shift_n = np.where(start, runs, shift_n)
            back = np.where(start, 0.0, back)
        track = continuing & seen & ~start
        shift_sum = np.where(track, shift_sum + d, shift_sum)
        shift_n = np.where(track, shift_n + 1, shift_n)
        a = np.minimum(
            MAX_RETURN_SHIFT, np.maximum(MIN_RETURN_SHIFT, shift_sum / np.maximum(shift_n, 1) / 2.0)
        )
        back = np.where(track, np.maximum(0.0, back + a - d), back)
        seen |= start
        is_open |= new
        clear = continuing & (quiet >= cfg.clear_after)
        if clear.any():
            clear &= ~seen | (back > h_of(np.where(clear & seen, a, 1.0)))
        if clear.any():
            clears += clear
            is_open &= ~clear
            seen &= ~clear
            shift_sum[clear] = shift_n[clear] = back[clear] = 0.0
            up[:, clear] = 0.0
            run[:, clear] = 0.0
    return Run(first=first, opens=opens, clears=clears, by_rule=by_rule)


@dataclass(frozen=True, slots=True)
class FalseAlarms:
    process: Process
    charts: int
    probes: int
    signals: int
    by_rule: dict[str, int]
    refused: int
    forced_charts: int = 0
    """Charts armed after ``max_refusals`` unstable baselines in a row."""
    forced_signals: int = 0

    @property
    def per_100k(self) -> float:
        return 100_000 * self.signals / self.probes

    @property
    def target(self) -> float:
        return (
            FALSE_ALARMS_PER_100K_TARGET_REAL
            if self.process.dependent_or_heavy
            else FALSE_ALARMS_PER_100K_TARGET
        )


def false_alarms(
    rng: np.random.Generator,
    process: Process,
    *,
    charts: int = 600,
    probes_per_chart: int = 5000,
    config: ChartConfig | None = None,
) -> FalseAlarms:
    """Critical signals on in-control data, every chart with its own estimated model."""
    stream = Stream(rng, process, charts)
    fitted = fit_charts(stream, charts, config)
    result = run_critical(stream.take(probes_per_chart), fitted, config)
    forced = fitted.forced if fitted.forced is not None else np.zeros(charts, dtype=np.bool_)
    return FalseAlarms(
        process,
        charts,
        charts * probes_per_chart,
        int(result.opens.sum()),
        result.by_rule,
        fitted.refused,
        forced_charts=int(forced.sum()),
        forced_signals=int(result.opens[forced].sum()),
    )


def detection_medians(
    rng: np.random.Generator,
    process: Process,
    *,
    shifts: tuple[float, ...] = (0.5, 1.0, 2.0),
    charts: int = 400,
    horizon: int = 600,
    config: ChartConfig | None = None,
) -> dict[float, float]:
    """Median probes from the start of a sustained shift (sigma units, slower) to the first critical."""
    out: dict[float, float] = {}
    for shift in shifts:
        stream = Stream(rng, process, charts)
        fitted = fit_charts(stream, charts, config)
        out[shift] = float(np.median(run_critical(stream.take(horizon, shift), fitted, config).first))
    return out


def pages_per_shift(
    rng: np.random.Generator,
    process: Process,
    shift: float,
    *,
    charts: int = 300,
    horizon: int = 3000,
    config: ChartConfig | None = None,
) -> tuple[float, float]:
    """(mean critical episodes per chart that detected it, fraction detected) over ``horizon``
    probes of a shift that lasts throughout."""
    stream = Stream(rng, process, charts)
    fitted = fit_charts(stream, charts, config)
    result = run_critical(stream.take(horizon, shift), fitted, config)
    found = result.opens > 0
    return (float(result.opens[found].mean()) if found.any() else 0.0, float(found.mean()))


def critical_when_faster(
    rng: np.random.Generator, process: Process, shift: float, *, charts: int = 20, probes: int = 1000
) -> tuple[int, int]:
    """(critical signals, info 'faster' episodes) of streaming charts whose latency got ``shift``
    sigma better for ``probes`` probes (the real chart code, not the vectorised mirror)."""
    critical = faster = 0
    cfg = default_config("latency_ms")
    stream = Stream(rng, process, charts)
    base = stream.take(cfg.baseline_n)
    after = stream.take(probes, -shift)
    for i in range(charts):
        chart = MetricChart(cfg, key=f"faster-{i}")
        for j, v in enumerate(np.exp(np.concatenate([base[i], after[i]]))):
            for sig in chart.update(float(v), point_id=str(j)):
                if sig.state != "open":
                    continue
                critical += sig.severity == "critical"
                faster += sig.rule == "CUSUM" and sig.better
    return critical, faster
