"""Metric transforms: charts run on a scale where in-control data are close to normal.

LLM latency is right-skewed, close to lognormal: on raw milliseconds 3-sigma limits fire far
more often than 1 in 370, the lower limit falls below zero and the median sits below the mean.
On the log scale the same data are close to normal; the limits are mapped back to milliseconds
(``exp``), so they are asymmetric around the centre there.
"""

from __future__ import annotations

import math
from typing import Literal

TransformName = Literal["none", "log"]


def forward(name: TransformName, x: float) -> float | None:
    """The chart-scale value of ``x``, or None when ``x`` cannot be charted (log of x <= 0)."""
    if not math.isfinite(x):
        return None
    if name == "log":
        return math.log(x) if x > 0 else None
    return x


def inverse(name: TransformName, y: float) -> float:
    """Back from chart scale to the metric's own units."""
    if name == "log":
        # exp overflows past ~709; a limit that far out is as good as infinite.
        return math.exp(y) if y < 709.0 else math.inf
    return y
