"""Phase I: the in-control model a chart is judged against, fitted to a baseline it checked first.

Real LLM latency is not independent normal noise: consecutive probes share the endpoint's load,
batch and cache state (positive autocorrelation), and a shared service answers slowly now and
then (a heavy right tail). Limits built for independent points page for both. The model here:

- Level and scale are robust: the centre is the median, and points beyond ``winsor`` robust
  sigmas are pulled in to that bound before anything else is estimated, so a few slow answers
  neither shift nor inflate the limits.
- Serial dependence is an autoregressive model AR(p), p <= ``max_order`` chosen by BIC, fitted
  by Yule-Walker to the level-free series. Phase II judges each point by its *residual*: how far
  it is from what the last points predicted, in units of the innovation sigma. Residuals of a
  correct model are independent, so the CUSUM's in-control run lengths hold again. (Scaling the
  CUSUM to the long-run variance instead gives the same power for a sustained shift but keeps
  the dependence in the statistic, so its run lengths are not the textbook ones; measured in
  ``performance``.)
- The predictor uses *filtered* past values: a residual beyond ``clip`` sigmas counts only as
  ``clip`` (a robust filter), so one slow answer does not make the next point look fast, and no
  single point can move a CUSUM by more than ``clip`` minus its reference value.
- The tail is learned, not feared: the fraction of baseline residuals beyond ``tail_k`` in the
  worse direction is the baseline tail rate; Phase II pages on an *excess* of such points, and on
  a single point only beyond anything the baseline made plausible (``spike_limit``).
- Stability: before anything is frozen, the baseline is split into ``BLOCKS`` blocks; when their
  means differ by more than the model's own long-run noise allows (a step, a trend, a host still
  starting up), and, with a practical floor, by at least a given factor, the baseline is not
  used: the older blocks are dropped and collection goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt

SigmaEstimator = Literal["mr", "sd"]
D2 = 1.128
"""E|X_i - X_{i-1}| / sigma for normal data (d2 of a subgroup of 2)."""
Arr = npt.NDArray[np.float64]

BLOCKS = 5
STABILITY_P = 1e-3
"""Chance that a stable baseline is refused (and collection goes on) by the block test."""
MIN_STABILITY_N = 50
TRIM = 3.5
"""Residuals beyond this many sigmas are left out of the innovation sigma (and corrected for)."""
SPIKE_U = 2.0
SPIKE_MARGIN = 2.0
"""A single point pages only this many sigmas beyond the baseline's worst point, at least."""
PRIOR_EXCESS = 0.37
"""Mean excess of a standard normal beyond 2."""
_MAD = 1.482602218505602
_TRIM_SD = math.sqrt(1.0 - 2.0 * TRIM * NormalDist().pdf(TRIM) / (2.0 * NormalDist().cdf(TRIM) - 1.0))
"""Standard deviation of a standard normal truncated to +-TRIM: the trimmed sd is this much low."""


class Fit(msgspec.Struct, frozen=True, kw_only=True):
    """The in-control model of a stable baseline, in chart units."""

    center: float
    """Robust level (median)."""
    sigma: float
    """Robust marginal standard deviation: what "1 sigma" of a shift means."""
    ar: tuple[float, ...]
    """AR coefficients phi_1..phi_p of the level-free series (empty: independent points)."""
    sigma_e: float
    """Innovation sigma: the scale of one-step-ahead residuals."""
    w_mean: float
    w_sd: float
    """Mean and sd of the clipped residuals (in sigma_e units): the CUSUM and EWMA centre on them."""
    tail_rate: float
    """Baseline rate of residuals beyond ``tail_k`` in the worse direction, (count + 1) / (n + 2)."""
    max_residual: float
    """Largest residual of the baseline in the worse direction (sigma_e units)."""
    spike_rate: float
    spike_excess: float
    """Rate of residuals beyond SPIKE_U (worse direction) and their mean excess over it: the
    baseline's own exponential tail model, for :func:`spike_limit`."""
    lag_corr: tuple[float, ...]
    """Autocorrelation of the baseline at lags 1, 2, 3 (after robust winsorizing)."""
    n: int
    n_excluded: int
    """Points beyond the winsorizing bound (kept in time order, pulled in to the bound)."""


class Unstable(msgspec.Struct, frozen=True, kw_only=True):
    """A baseline that is itself out of control: keep ``values[keep_from:]`` and collect more."""

    reason: str
    keep_from: int


def default_clean_limit(n: int) -> float:
    """Robust sigmas beyond which a baseline point is winsorized: ``max(3, z_{1 - 0.025/n})``."""
    return max(3.0, NormalDist().inv_cdf(1.0 - 0.025 / max(n, 1)))


def robust_scale(x: Arr) -> float:
    """Normal-consistent scale: MAD, or the mean absolute deviation when half the points tie."""
    med = float(np.median(x))
    mad = _MAD * float(np.median(np.abs(x - med)))
    if mad > 0.0:
        return mad
    return float(np.mean(np.abs(x - med))) * math.sqrt(math.pi / 2.0)


def autocorr(x: Arr, lags: int) -> Arr:
    """Sample autocorrelations r_0..r_lags of ``x`` (mean removed, biased estimator, r_0 = 1)."""
    d = x - x.mean()
    denom = float(d @ d)
    out = np.zeros(lags + 1)
    out[0] = 1.0
    if denom <= 0.0:
        return out
    for k in range(1, min(lags, d.size - 1) + 1):
        out[k] = float(d[k:] @ d[:-k]) / denom
    return out


def yule_walker(r: Arr, n: int, max_order: int) -> tuple[tuple[float, ...], float]:
    """AR coefficients by Levinson-Durbin on autocorrelations ``r``, order by BIC.

    Returns (phi, innovation variance relative to the series variance).
    """
    best_phi: tuple[float, ...] = ()
    best_var = 1.0
    best_bic = 0.0  # order 0: n log(1)
    phi = np.zeros(0)
    var = 1.0
    for p in range(1, max_order + 1):
        if p >= r.size:
            break
        acc = r[p] - float(phi @ r[p - 1 : 0 : -1]) if p > 1 else r[1]
        refl = acc / var
        if not -1.0 < refl < 1.0:
            break
        phi = np.concatenate([phi - refl * phi[::-1], [refl]])
        var *= 1.0 - refl * refl
        bic = n * math.log(var) + p * math.log(n)
        if bic < best_bic:
            best_bic, best_phi, best_var = bic, tuple(float(v) for v in phi), var
    return best_phi, best_var


def residuals(
    x: Arr, center: float, ar: Sequence[float], sigma_e: float, clip: float, cleaned: Arr | None = None
) -> Arr:
    """One-step residuals (sigma_e units) of the robust filter, exactly as Phase II computes them.

    A point whose residual is beyond ``clip`` enters the predictor at ``clip`` sigmas from its
    prediction: an isolated slow answer drags the next predictions up only that much, while a
    real large innovation still moves them (rejecting it outright left the predictor behind and
    the residuals after it biased, which paged on plain AR(1) data). With
    ``cleaned``, the filtered values are written there (the series the AR model is refitted to).
    """
    p = len(ar)
    if p == 0 and sigma_e != 0.0:
        # No predictor: the same arithmetic element by element, without the loop (a fit runs
        # this seven times over its baseline, on the per-event path of a collecting chart).
        out = (x - center) / sigma_e
        if cleaned is not None:
            inside = (out >= -clip) & (out <= clip)
            cleaned[:] = np.where(inside, x, center + np.where(out > 0, clip, -clip) * sigma_e)
        return out
    hist = [center] * p  # filtered past values, newest last
    rs: list[float] = []
    kepts: list[float] = []
    for y in x.tolist():
        pred = center
        for i in range(p):
            pred += ar[i] * (hist[-1 - i] - center)
        r = (y - pred) / sigma_e
        rs.append(r)
        kept = y if -clip <= r <= clip else pred + (clip if r > 0 else -clip) * sigma_e
        kepts.append(kept)
        if p:
            hist.append(kept)
            del hist[0]
    if cleaned is not None:
        cleaned[:] = kepts
    return np.array(rs, dtype=float)


def _scale_of(r: Arr, estimator: SigmaEstimator) -> float:
    """The sd of residuals ``r`` (already in rough sigma units), trimmed at TRIM and corrected."""
    keep = np.abs(r) <= TRIM
    if estimator == "mr":
        pair = keep[1:] & keep[:-1]
        mr = np.abs(np.diff(r))[pair]
        return float(mr.mean()) / D2 / _TRIM_SD if mr.size else 0.0
    kept = r[keep]
    return float(kept.std(ddof=1)) / _TRIM_SD if kept.size > 1 else 0.0


def _stability(
    xw: Arr,
    max_order: int,
    serial: bool,
    level: Callable[[float], str],
    min_spread: float = 1.0,
    inverse: Callable[[float], float] = float,
) -> Unstable | None:
    """The block-means test: None when the baseline's blocks agree within the model's noise, or
    when their levels (``inverse`` takes them to the metric's units) are less than ``min_spread``
    times apart: a step too small to matter in practice (a real server's level wanders by a few
    per cent with nothing wrong, which the test in sigma units calls real)."""
    n = xw.size
    if n < MIN_STABILITY_N:
        return None
    m = n // BLOCKS
    blocks = xw[: m * BLOCKS].reshape(BLOCKS, m)
    means = blocks.mean(axis=1)
    # Dependence is estimated within blocks, so a step between blocks cannot pass for it.
    within = (blocks - means[:, None]).ravel()
    var = float(within.var())
    if var <= 0.0:
        return None
    if serial:
        r = np.zeros(max_order + 1)
        r[0] = 1.0
        for k in range(1, max_order + 1):
            r[k] = float(np.mean([(b[k:] - b.mean()) @ (b[:-k] - b.mean()) for b in blocks])) / (m * var)
        phi, rel = yule_walker(r, n, max_order)
    else:
        phi, rel = (), 1.0
    long_run_sd = math.sqrt(var * rel) / max(1e-3, 1.0 - sum(phi))
    q = float(((means - means.mean()) ** 2).sum()) / (long_run_sd**2 / m)
    limit = _chi2_quantile(BLOCKS - 1, 1.0 - STABILITY_P)
    if q <= limit:
        return None
    practical = ""
    if min_spread > 1.0:
        units = [inverse(float(v)) for v in means]
        lo, hi = min(units), max(units)
        spread = hi / lo if lo > 0 else math.inf
        if spread < min_spread:
            return None
        practical = f" and {spread:.2f}x apart (at least {min_spread:.2f}x refuses)"
    keep_from = n - 2 * m
    levels = ", ".join(level(float(v)) for v in means)
    return Unstable(
        reason=(
            f"baseline not stable: its {BLOCKS} blocks have levels {levels}, further apart than"
            f" its own noise allows (chi-square {q:.1f} > {limit:.1f}){practical}; kept the last"
            f" {n - keep_from} points and collecting more"
        ),
        keep_from=keep_from,
    )


def _chi2_quantile(df: int, p: float) -> float:
    """Wilson-Hilferty approximation (within 1 % at df 4, p 0.999: 18.4 vs 18.47)."""
    z = NormalDist().inv_cdf(p)
    a = 2.0 / (9.0 * df)
    return float(df * (1.0 - a + z * math.sqrt(a)) ** 3)


def spike_limit(floor: float, rate: float, excess: float, worst: float, arl0: float) -> float:
    """The residual one in-control point passes once per ``arl0`` points by the baseline's tail
    model (``rate * exp(-(x - SPIKE_U) / excess)``), never below ``floor`` nor within
    SPIKE_MARGIN of the baseline's worst point: a single point pages only when nothing in the
    baseline made it plausible."""
    model = SPIKE_U + excess * max(0.0, math.log(rate * arl0)) if rate > 0 else floor
    return max(floor, model, worst + SPIKE_MARGIN)


def fit(
    values: Sequence[float] | Arr,
    *,
    estimator: SigmaEstimator = "sd",
    clip: float = 3.0,
    tail_k: float = 3.0,
    worse: float = 1.0,
    max_order: int = 5,
    serial: bool = True,
    stability: bool = True,
    winsor: float | None = None,
    level: Callable[[float], str] = "{:.3g}".format,
    min_spread: float = 1.0,
    inverse: Callable[[float], float] = float,
) -> Fit | Unstable:
    """Fit the in-control model to ``values`` (chart units, time order), or refuse them.

    ``worse`` is +1 when larger values are degradations (latency), -1 when smaller ones are
    (tokens/s). ``level`` formats a block's level (chart units in) for the refusal's reason;
    ``min_spread`` and ``inverse`` are the stability test's practical floor (:func:`_stability`).
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 2:
        raise ValueError("a baseline needs at least 2 points")
    center = float(np.median(x))
    scale = robust_scale(x)
    limit = winsor if winsor is not None else default_clean_limit(n)
    if scale > 0.0:
        xw = np.clip(x, center - limit * scale, center + limit * scale)
        n_excluded = int((np.abs(x - center) > limit * scale).sum())
    else:
        xw, n_excluded = x, 0
    if stability:
        unstable = _stability(xw, max_order, serial, level, min_spread, inverse)
        if unstable is not None:
            return unstable
    r = autocorr(xw, 3)
    if serial and scale > 0.0:
        ar, rel = yule_walker(autocorr(xw, max_order), n, max_order)
    else:
        ar, rel = (), 1.0
    sigma = float(xw.std(ddof=1)) if scale > 0.0 else 0.0
    sigma_e = math.sqrt(rel) * sigma
    if sigma_e <= 0.0:
        return Fit(
            center=center, sigma=0.0, ar=ar, sigma_e=0.0, w_mean=0.0, w_sd=1.0, tail_rate=0.0,
            max_residual=0.0, spike_rate=0.0, spike_excess=0.0, lag_corr=tuple(float(v) for v in r[1:]),
            n=n, n_excluded=n_excluded,
        )  # fmt: skip
    # Refit on the filtered series: outliers pulled in to a bound still bias phi towards zero
    # (2 % of slow answers took phi 0.5 to about 0.4), and a low phi leaves dependence in the
    # residuals. The filter's rejection depends on sigma_e, sigma_e on the filtered residuals.
    cleaned = np.empty(n)
    for _ in range(3):
        if serial:
            residuals(x, center, ar, sigma_e, clip, cleaned)
            ar, rel = yule_walker(autocorr(cleaned, max_order), n, max_order)
        sigma_e *= _scale_of(residuals(x, center, ar, sigma_e, clip), estimator) or 1.0
    res = residuals(x, center, ar, sigma_e, clip)
    body = res[len(ar) :]
    w = np.clip(body, -clip, clip)
    worse_res = worse * body
    tail_rate = (int((worse_res > tail_k).sum()) + 1) / (body.size + 2)
    # The spike's tail model starts lower than the tail rule (more points to learn it from):
    # residuals beyond SPIKE_U, their rate and an exponential mean excess with a prior worth two
    # points at a normal tail's.
    excess = worse_res[worse_res > SPIKE_U] - SPIKE_U
    beta = (float(excess.sum()) + 2 * PRIOR_EXCESS) / (excess.size + 2)
    u_rate = (excess.size + 1) / (body.size + 2)
    worst = float(worse_res.max()) if worse_res.size else 0.0
    # The marginal sigma of the model (not the raw sd, which the tail inflates).
    sigma = sigma_e / math.sqrt(rel) if rel > 0 else sigma_e
    return Fit(
        center=center,
        sigma=sigma,
        ar=ar,
        sigma_e=sigma_e,
        w_mean=float(w.mean()),
        w_sd=float(w.std(ddof=1)) if w.size > 1 else 1.0,
        tail_rate=tail_rate,
        spike_rate=u_rate,
        spike_excess=beta,
        max_residual=worst,
        lag_corr=tuple(float(v) for v in r[1:]),
        n=n,
        n_excluded=n_excluded,
    )
