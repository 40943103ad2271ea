"""EWMA chart on standardised values, with asymptotic limits.

``E_t = (1 - lambda) E_{t-1} + lambda z_t``, ``E_0 = 0`` (the centre); signal when
``|E_t| > L sqrt(lambda / (2 - lambda))``. The limits are the asymptotic ones, not the narrower
time-varying limits of the first points: the published ARLs (e.g. lambda = 0.1, L = 2.814:
ARL0 = 500) and :mod:`arl` assume them, and after a baseline of hundreds of points a chart
is past its start-up anyway. Only this beyond-limits signal applies: EWMA points are
autocorrelated, so run rules on them mean nothing.
"""

from __future__ import annotations

import math

import msgspec


class EwmaState(msgspec.Struct, kw_only=True):
    value: float = 0.0
    n: int = 0


class EwmaChart:
    """Streaming EWMA; ``update(z)`` returns whether the statistic is beyond its limits."""

    def __init__(self, lam: float, limit: float, state: EwmaState | None = None) -> None:
        if not 0.0 < lam <= 1.0:
            raise ValueError("EWMA lambda must be in (0, 1]")
        self.lam = lam
        self.keep = 1.0 - lam
        """The weight of the previous value (``1 - lambda``)."""
        self.limit = limit
        self.bound = limit * math.sqrt(lam / (2.0 - lam))
        self.state = state if state is not None else EwmaState()

    @property
    def value(self) -> float:
        return self.state.value

    def update(self, z: float) -> bool:
        s = self.state
        s.value = self.keep * s.value + self.lam * z
        s.n += 1
        return abs(s.value) > self.bound

    def reset(self) -> None:
        self.state.value = 0.0
