"""Control charts of per-minute traffic subgroups, whose size ``n`` changes from minute to minute
(pure; measured in ``bench/traffic_bench.py``, the choices explained in the README).

Each point is one minute's statistic ``v`` over its ``n`` requests: the error rate (``kind="p"``)
or a quantile of a log-scale timing (``kind="quantile"``: the log of the median or p90 of latency
per output token, of the median TTFT). Its variance has two parts:

- sampling, ``a / n``: for the error rate ``a = p(1 - p)``; for a quantile ``q`` of a log timing
  ``a = q(1 - q) / f(q)^2``, with the density ``f`` read off the minute's own quantiles (pooled
  over the baseline): ``(p75 - p25)^2`` for the median, ``2.25 (p95 - p75)^2`` for p90. It shrinks
  with ``n``: a busy minute's median is known far better than a quiet one's.
- between minutes, which no ``n`` removes: load, the mix of prompts, the time of day.

``variance="components"`` (the default, chosen by measurement) models it as ``a / n + tau^2``,
``tau^2`` estimated from the baseline's spread (``estimator``: ``sd`` by default; the moving range
``mr`` sees only the short-term part and under-estimates it when minutes are autocorrelated and the
day has a load cycle, ``mad`` ignores the skewed upper tail of error rates) net of its sampling
part: limits narrow with ``n`` but never below the minute-to-minute variation.
``variance="laney"`` is Laney's p' (and its analogue for quantiles): ``sigma_z^2 a / n``, one
inflation factor fitted at the baseline's typical ``n``, too narrow for busier minutes.

The error rate is judged by an exact binomial tail (mid-p) at the effective size
``n_eff = p(1 - p) / variance``, not a normal approximation, which pages on two errors among ten
requests at a 1 % rate. Each point becomes a z score; a signal opens when one point is beyond
``k`` or two in a row beyond ``k_run`` (only upward: more errors, slower), and clears after
``clear_after`` points below ``k_run``. Minutes with fewer than ``min_requests`` requests are not
points. The first ``baseline_minutes`` points are the baseline (Phase I); then limits freeze.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime
from statistics import NormalDist
from typing import Literal

import msgspec
import numpy as np

Kind = Literal["p", "quantile"]
Variance = Literal["components", "laney"]
Estimator = Literal["mr", "mad", "sd"]

_NORMAL = NormalDist()
_D2 = 1.128  # E|x1 - x2| / sigma for normal x: the moving-range constant
_MAD = 1.4826


class SubgroupConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a subgroup chart judges its points (see the module docstring)."""

    kind: Kind = "quantile"
    baseline_minutes: int = 1440
    min_requests: int = 10
    variance: Variance = "components"
    estimator: Estimator = "sd"
    k: float = 4.5
    k_run: float = 3.5
    clear_after: int = 5
    load_adjust: bool = True
    """Quantile charts: let the center follow the minute's relative load when the baseline shows
    that the load moves the statistic (see :func:`load_fit`)."""


class Point(msgspec.Struct, frozen=True, kw_only=True):
    """One minute: its statistic ``v`` (chart scale), size ``n`` and per-request variance ``a``."""

    id: str
    ts: datetime
    v: float
    n: int
    a: float = 0.0


class SubgroupBaseline(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    center: float
    a: float
    tau2: float
    sigma_z: float
    minutes: int
    mean_n: float
    started_at: datetime
    ended_at: datetime
    load_slope: float = 0.0
    """Change of a quantile chart's center per unit of relative load ``n / mean_n`` (0: none)."""
    load_lo: float = 1.0
    load_hi: float = 1.0
    """The relative loads the baseline saw: the center is not extrapolated beyond them."""


class SubgroupState(msgspec.Struct, kw_only=True):
    collected: bytearray = msgspec.field(default_factory=bytearray)
    """Baseline points so far: (v, n, a) as float64 triples (a day of them fits a KV value)."""
    first: Point | None = None
    """The baseline's first point (its id and time name the baseline)."""
    baseline: SubgroupBaseline | None = None
    last_z: float | None = None
    episode: str | None = None
    """Id of the point that opened the open episode."""
    episode_rule: str = ""
    quiet: int = 0
    points: int = 0
    skipped: int = 0
    """Minutes with fewer than ``min_requests`` requests."""
    recent: list[Point] = msgspec.field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SubgroupSignal:
    """An episode opened or cleared at ``point``."""

    state: Literal["open", "cleared"]
    rule: str
    rule_name: str
    point: Point
    z: float
    sd: float
    """Standard deviation of this point's statistic under the baseline (chart scale)."""
    baseline: SubgroupBaseline
    episode_point_id: str
    points: tuple[Point, ...]


RECENT_POINTS = 5


def estimate(xs: np.ndarray, estimator: Estimator) -> float:
    """A spread (standard deviation) of ``xs``: moving range or MAD."""
    if estimator == "mr":
        return float(np.mean(np.abs(np.diff(xs)))) / _D2 if len(xs) > 1 else 0.0
    if estimator == "sd":
        return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return _MAD * float(np.median(np.abs(xs - np.median(xs))))


def fit_baseline(config: SubgroupConfig, points: list[Point]) -> SubgroupBaseline:
    """The frozen Phase I estimates from ``points`` (at least two)."""
    v = np.array([p.v for p in points])
    n = np.array([p.n for p in points], dtype=float)
    a = np.array([p.a for p in points])
    return fit_arrays(config, v, n, a, points[0], points[-1])


def fit_arrays(
    config: SubgroupConfig, v: np.ndarray, n: np.ndarray, per_request: np.ndarray, first: Point, last: Point
) -> SubgroupBaseline:
    """:func:`fit_baseline` of the points' values, sizes and per-request variances."""
    if config.kind == "p":
        # A baseline without an error still has a rate: half an error over its requests.
        center = max(float(np.sum(v * n) / np.sum(n)), 0.5 / float(np.sum(n)))
        a = center * (1.0 - center)
    else:
        center = float(np.median(v))
        a = max(float(np.median(per_request)), 1e-12)
    w = a / n
    slope, lo, hi = 0.0, 1.0, 1.0
    if config.kind == "quantile" and config.load_adjust and len(v) >= LOAD_MIN_POINTS:
        slope, lo, hi = load_fit(v, n)
        if slope:
            v = v - slope * (np.clip(n / float(np.mean(n)), lo, hi) - 1.0)
            center = float(np.median(v))
    if config.variance == "laney":
        z = (v - center) / np.sqrt(w)
        s = estimate(z, config.estimator)
        # p: never narrower than the binomial; a quantile's a is approximate, so s calibrates it.
        sigma_z, tau2 = (max(s, 1.0) if config.kind == "p" else max(s, 1e-6)), 0.0
    else:
        total = estimate(v, config.estimator) ** 2
        sigma_z, tau2 = 1.0, max(0.0, total - float(np.mean(w)))
    digest = hashlib.sha256(f"{first.id}|{last.id}|{len(v)}".encode()).hexdigest()[:16]
    return SubgroupBaseline(
        id=f"subgroup-{digest}",
        center=center,
        a=a,
        tau2=tau2,
        sigma_z=sigma_z,
        minutes=len(v),
        mean_n=float(np.mean(n)),
        started_at=first.ts,
        ended_at=last.ts,
        load_slope=slope,
        load_lo=lo,
        load_hi=hi,
    )


LOAD_MIN_POINTS = 60
LOAD_MIN_SHARE = 0.1
"""The share of the baseline's minute-to-minute variance the load must explain to be adjusted for."""


def load_fit(v: np.ndarray, n: np.ndarray) -> tuple[float, float, float]:
    """(slope, lo, hi): least squares of the minute statistic on the relative load ``n / mean_n``,
    slope 0 when the load explains less than :data:`LOAD_MIN_SHARE` of its variance."""
    x = n / float(np.mean(n))
    sxx = float(np.sum((x - 1.0) ** 2))
    if sxx <= 0.0:
        return 0.0, 1.0, 1.0
    slope = float(np.sum((x - 1.0) * (v - np.mean(v)))) / sxx
    explained = slope**2 * sxx / max(float(np.sum((v - np.mean(v)) ** 2)), 1e-300)
    if explained < LOAD_MIN_SHARE:
        return 0.0, 1.0, 1.0
    return slope, float(np.min(x)), float(np.max(x))


def center_at(b: SubgroupBaseline, n: float) -> float:
    """The baseline's center for a minute of ``n`` requests (its load, within the baseline's)."""
    if not b.load_slope:
        return b.center
    return b.center + b.load_slope * (min(max(n / b.mean_n, b.load_lo), b.load_hi) - 1.0)


def variance(b: SubgroupBaseline, n: int) -> float:
    """Variance of a minute's statistic of ``n`` requests under the baseline."""
    return b.sigma_z**2 * b.a / n + b.tau2


def binomial_upper(x: int, n: int, p: float) -> float:
    """Mid-p upper tail ``P(X > x) + P(X = x) / 2`` of Binomial(n, p), summed exactly."""
    if x <= 0:
        return 1.0 - 0.5 * (1.0 - p) ** n
    if x > n:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)

    def pmf(k: int) -> float:
        return math.exp(base - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq)

    first = pmf(x)
    total = 0.5 * first
    term = first
    for k in range(x + 1, n + 1):
        # Recurrence from the previous term: cheaper than lgamma, and the terms only fall here.
        term *= (n - k + 1) / k * p / (1.0 - p)
        total += term
        if term < total * 1e-15:
            break
    return min(total, 1.0)


def score(config: SubgroupConfig, b: SubgroupBaseline, v: float, n: int) -> tuple[float, float]:
    """(z, sd): how far a minute's statistic is above the baseline, and its sd at this ``n``."""
    var = variance(b, n)
    sd = math.sqrt(var)
    if config.kind != "p" or v <= b.center:
        c = center_at(b, n)
        return (v - c) / sd if sd > 0 else 0.0, sd
    # Exact tail at the binomial size with this variance (n itself when nothing inflates it).
    n_eff = max(1, round(b.center * (1.0 - b.center) / var))
    x_eff = round(v * n_eff)
    tail = binomial_upper(x_eff, n_eff, b.center)
    return _NORMAL.inv_cdf(min(max(1.0 - tail, 1e-300), 1.0 - 1e-16)), sd


class SubgroupChart:
    """One subgroup chart: ``update(point)`` returns the signals it completes."""

    def __init__(self, config: SubgroupConfig, state: SubgroupState | None = None) -> None:
        self.config = config
        self.state = state or SubgroupState()

    @property
    def armed(self) -> bool:
        return self.state.baseline is not None

    def update(self, point: Point) -> list[SubgroupSignal]:
        cfg, st = self.config, self.state
        if point.n < cfg.min_requests:
            st.skipped += 1
            return []
        st.points += 1
        st.recent = [*st.recent[-(RECENT_POINTS - 1) :], point]
        b = st.baseline
        if b is None:
            if st.first is None:
                st.first = point
            st.collected += np.array([point.v, point.n, point.a], dtype=np.float64).tobytes()
            if len(st.collected) >= 24 * cfg.baseline_minutes:
                vna = np.frombuffer(bytes(st.collected), dtype=np.float64).reshape(-1, 3)
                st.baseline = fit_arrays(cfg, vna[:, 0], vna[:, 1], vna[:, 2], st.first, point)
                st.collected, st.first = bytearray(), None
            return []
        z, sd = score(cfg, b, point.v, point.n)
        last, st.last_z = st.last_z, z
        out: list[SubgroupSignal] = []
        if st.episode is None:
            rule = ""
            if z > cfg.k:
                rule = "one minute beyond the limit"
            elif last is not None and z > cfg.k_run and last > cfg.k_run:
                rule = f"two minutes in a row beyond {cfg.k_run:g} sigma"
            if rule:
                st.episode, st.episode_rule, st.quiet = point.id, rule, 0
                out.append(self._signal("open", point, z, sd, point.id))
        elif z < cfg.k_run:
            st.quiet += 1
            if st.quiet >= cfg.clear_after:
                opened, st.episode, st.quiet = st.episode, None, 0
                out.append(self._signal("cleared", point, z, sd, opened))
        else:
            st.quiet = 0
        return out

    def _signal(
        self, state: Literal["open", "cleared"], point: Point, z: float, sd: float, opened: str
    ) -> SubgroupSignal:
        b = self.state.baseline
        assert b is not None
        return SubgroupSignal(
            state=state,
            rule="TRAFFIC",
            rule_name=self.state.episode_rule if state == "open" else "back within the limits",
            point=point,
            z=z,
            sd=sd,
            baseline=b,
            episode_point_id=opened,
            points=tuple(self.state.recent),
        )
