"""Phase I: centre and sigma from a baseline of in-control points, cleaned of its own outliers.

- sigma from the average moving range (``mr``: mean |x_i - x_{i-1}| / d2, d2 = 1.128) by
  default: it resists slow drift inside the baseline, which the sample standard deviation
  (``sd``) does not; ``sd`` is more efficient on clean data.
- Cleaning: points beyond ``clean_limit`` sigma of the centre are dropped and the estimate is
  recomputed until nothing more is dropped. Moving ranges that touch a dropped point are dropped
  too (a spike inflates two moving ranges). The default limit is Bonferroni-style,
  ``max(3, z_{1 - 0.025/n})`` (about 4.06 for n = 1000): an in-control baseline loses a point
  with probability about 5%, so cleaning does not bias sigma down (a biased-low sigma is what
  turns into false alarms later), while a real burst in the baseline is still removed.
- The result is frozen by the caller until an explicit re-baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt

SigmaEstimator = Literal["mr", "sd"]
D2 = 1.128
"""E|X_i - X_{i-1}| / sigma for normal data (d2 of a subgroup of 2)."""


class BaselineEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """Centre and sigma in chart units, with the points the cleaning excluded."""

    center: float
    sigma: float
    n: int
    excluded: tuple[int, ...] = ()


def default_clean_limit(n: int) -> float:
    return max(3.0, NormalDist().inv_cdf(1.0 - 0.025 / max(n, 1)))


def _estimate(
    x: npt.NDArray[np.float64], keep: npt.NDArray[np.bool_], estimator: SigmaEstimator
) -> tuple[float, float]:
    kept = x[keep]
    center = float(kept.mean())
    if estimator == "sd":
        sigma = float(kept.std(ddof=1)) if kept.size > 1 else 0.0
    else:
        pair_ok = keep[1:] & keep[:-1]
        mr = np.abs(np.diff(x))[pair_ok]
        sigma = float(mr.mean()) / D2 if mr.size else 0.0
    return center, sigma


def estimate(
    values: Sequence[float] | npt.NDArray[np.float64],
    estimator: SigmaEstimator = "mr",
    clean: bool = True,
    clean_limit: float | None = None,
) -> BaselineEstimate:
    """Estimate the in-control centre and sigma of ``values`` (chart units, time order)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        raise ValueError("a baseline needs at least 2 points")
    keep = np.ones(x.size, dtype=bool)
    center, sigma = _estimate(x, keep, estimator)
    if clean:
        limit = clean_limit if clean_limit is not None else default_clean_limit(x.size)
        for _ in range(50):
            if sigma <= 0.0 or not math.isfinite(sigma):
                break
            new_keep = keep & (np.abs(x - center) <= limit * sigma)
            if new_keep.sum() < 2 or (new_keep == keep).all():
                break
            keep = new_keep
            center, sigma = _estimate(x, keep, estimator)
    excluded = tuple(int(i) for i in np.flatnonzero(~keep))
    return BaselineEstimate(center=center, sigma=sigma, n=int(keep.sum()), excluded=excluded)
