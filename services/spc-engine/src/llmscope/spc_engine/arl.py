"""Expected run lengths of chart configurations, for normal observations.

- Individuals chart, test 1 only: exact (the run length is geometric).
- Tabular CUSUM: Brook & Evans (1972) Markov chain on the discretised statistic; the two-sided
  ARL combines the one-sided ones as ``1/ARL = 1/ARL+ + 1/ARL-`` (exact for k >= 0 and h not
  tiny, Lucas & Crosier 1982).
- EWMA with asymptotic limits: Lucas & Saccucci (1990) Markov chain.

Observations are standardised: ``shift`` is the mean in sigma units, ``scale`` the standard
deviation relative to the one the chart was built with (1 = correct sigma). These two numbers
also express an estimated baseline: with an estimated centre ``m`` and sigma ``s``, a process
N(mu, sd) looks like N((mu - m) / s, sd / s) to the chart.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

_SQRT2 = math.sqrt(2.0)
_erfc = np.frompyfunc(math.erfc, 1, 1)


def norm_cdf(x: FloatArray | float) -> FloatArray:
    """Standard normal CDF, elementwise (numpy has no erf; math.erfc keeps full precision)."""
    arr = np.asarray(x, dtype=np.float64)
    out: FloatArray = np.asarray(0.5 * _erfc(-arr / _SQRT2), dtype=np.float64)
    return out


def shewhart_arl(limit: float, shift: float = 0.0, scale: float = 1.0) -> float:
    """Exact ARL of an individuals chart signalling beyond +-``limit`` sigma (test 1 alone)."""
    p_out = 1.0 - float(norm_cdf((limit - shift) / scale)) + float(norm_cdf((-limit - shift) / scale))
    return math.inf if p_out <= 0.0 else 1.0 / p_out


def _cusum_matrix(k: float, h: float, shift: float, scale: float, m: int) -> FloatArray:
    """Transition matrix among the m in-control states of an upper CUSUM (Brook & Evans)."""
    w = 2.0 * h / (2 * m - 1)
    # Entry (i, j) depends on j - i only: precompute the CDF at every offset.
    offsets = np.arange(-(m - 1), m, dtype=np.float64)
    upper = norm_cdf(((offsets + 0.5) * w + k - shift) / scale)
    lower = norm_cdf(((offsets - 0.5) * w + k - shift) / scale)
    band = upper - lower
    i = np.arange(m)[:, None]
    j = np.arange(m)[None, :]
    q: FloatArray = band[(j - i) + (m - 1)]
    # State 0 is the atom at zero: everything that would fall below w/2.
    q[:, 0] = upper[(0 - np.arange(m)) + (m - 1)]
    return q


def cusum_arl_one_sided(k: float, h: float, shift: float = 0.0, scale: float = 1.0, m: int = 400) -> float:
    """ARL of ``C = max(0, C + z - k)`` signalling when ``C > h``, started at 0."""
    q = _cusum_matrix(k, h, shift, scale, m)
    return _first_passage(q, 0)


def cusum_arl(k: float, h: float, shift: float = 0.0, scale: float = 1.0, m: int = 400) -> float:
    """ARL of the two-sided tabular CUSUM (signal when either side exceeds h)."""
    up = cusum_arl_one_sided(k, h, shift, scale, m)
    down = cusum_arl_one_sided(k, h, -shift, scale, m)
    return combined_arl(up, down)


def cusum_run_length_quantile(
    k: float, h: float, shift: float, q: float = 0.5, scale: float = 1.0, m: int = 300, max_n: int = 100_000
) -> int:
    """The q-quantile of the run length of the upper CUSUM (for a shift up; median by default)."""
    mat = _cusum_matrix(k, h, shift, scale, m)
    p = np.zeros(m)
    p[0] = 1.0
    for n in range(1, max_n + 1):
        p = p @ mat
        if p.sum() <= 1.0 - q:
            return n
    return max_n


def _ewma_matrix(lam: float, limit: float, shift: float, scale: float, m: int) -> tuple[FloatArray, int]:
    ucl = limit * math.sqrt(lam / (2.0 - lam))
    w = 2.0 * ucl / m
    centres = -ucl + w * (np.arange(m) + 0.5)
    base = (1.0 - lam) * centres[:, None]
    hi = ((centres[None, :] + w / 2 - base) / lam - shift) / scale
    lo = ((centres[None, :] - w / 2 - base) / lam - shift) / scale
    return norm_cdf(hi) - norm_cdf(lo), m // 2


def ewma_arl(lam: float, limit: float, shift: float = 0.0, scale: float = 1.0, m: int = 301) -> float:
    """ARL of an EWMA chart with asymptotic limits +-limit*sigma_E, started at the centre."""
    if m % 2 == 0:
        m += 1
    q, start = _ewma_matrix(lam, limit, shift, scale, m)
    return _first_passage(q, start)


def ewma_run_length_quantile(
    lam: float,
    limit: float,
    shift: float,
    q: float = 0.5,
    scale: float = 1.0,
    m: int = 151,
    max_n: int = 100_000,
) -> int:
    """The q-quantile of the run length of an EWMA chart."""
    if m % 2 == 0:
        m += 1
    mat, start = _ewma_matrix(lam, limit, shift, scale, m)
    p = np.zeros(m)
    p[start] = 1.0
    for n in range(1, max_n + 1):
        p = p @ mat
        if p.sum() <= 1.0 - q:
            return n
    return max_n


def _first_passage(q: FloatArray, start: int) -> float:
    """Expected steps to leave the transient states of ``q``, from ``start``.

    Run lengths beyond ~1e13 are numerically infinite (I - Q is singular to double precision).
    """
    m = q.shape[0]
    with np.errstate(all="ignore"):
        arl = np.linalg.solve(np.eye(m) - q, np.ones(m))
    value = float(arl[start])
    return value if math.isfinite(value) and 1.0 <= value < 1e13 else math.inf


def _bisect(f: object, lo: float, hi: float, target: float, iters: int = 60) -> float:
    """Find x in [lo, hi] with increasing f(x) == target."""
    assert callable(f)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-6:
            break
    return 0.5 * (lo + hi)


def cusum_h_for_arl0(k: float, arl0: float, m: int = 300, sides: int = 2) -> float:
    """The decision interval h giving an in-control ARL of ``arl0`` (two-sided, or one side)."""
    run = cusum_arl if sides == 2 else cusum_arl_one_sided
    return _bisect(lambda h: run(k, h, 0.0, 1.0, m), 0.1, 60.0, arl0)


def ewma_limit_for_arl0(lam: float, arl0: float, m: int = 201) -> float:
    """The limit multiplier L giving an in-control ARL of ``arl0``."""
    return _bisect(lambda L: ewma_arl(lam, L, m=m), 0.5, 8.0, arl0)


def combined_arl(*arls: float) -> float:
    """ARL of several detectors run together, treating them as competing hazards.

    ``1 / sum(1 / ARL_i)``: exact for independent geometric run lengths and conservative (too
    short) for detectors that tend to fire together, which is the usual case in control.
    """
    rate = sum(0.0 if math.isinf(a) else 1.0 / a for a in arls)
    return math.inf if rate == 0.0 else 1.0 / rate
