"""Two-sided tabular CUSUM on standardised values, with one or more reference values k.

For each (k, h): ``C+ = max(0, C+ + z - k)``, ``C- = max(0, C- - z - k)``; a component signals
while ``C > h``. Several k run side by side (small k finds small shifts, large k large ones);
the chart signals when any component does, so it is one detector with one episode.

After a component crosses h it is capped at ``cap * h`` instead of being reset: a sustained
shift keeps the chart out of control (one episode, no re-signal every ARL1 points), and when
the process returns the statistic falls back below h within ``(cap - 1) h / k`` points. The
owner resets the chart when the episode clears, so a recovered chart starts afresh.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec


class CusumState(msgspec.Struct, kw_only=True):
    upper: list[float]
    lower: list[float]
    run_up: list[int]
    run_down: list[int]


class CusumPoint(msgspec.Struct, frozen=True, kw_only=True):
    """The result of one update: the most extreme component relative to its h."""

    fired: bool
    statistic: float
    """Signed sum of that component (+ for the upper side, - for the lower)."""
    component: int
    run: int
    """Points since that component last sat at zero: the points that formed the signal."""


class CusumChart:
    """Streaming two-sided CUSUM over one or more (k, h) pairs."""

    def __init__(
        self, k: Sequence[float], h: Sequence[float], cap: float = 1.25, state: CusumState | None = None
    ) -> None:
        if len(k) != len(h) or not k:
            raise ValueError("CUSUM needs as many h as k, at least one")
        if any(v < 0 for v in k) or any(v <= 0 for v in h):
            raise ValueError("CUSUM needs k >= 0 and h > 0")
        self.k = tuple(k)
        self.h = tuple(h)
        self.cap = cap
        m = len(self.k)
        self.state = (
            state
            if state is not None
            else CusumState(upper=[0.0] * m, lower=[0.0] * m, run_up=[0] * m, run_down=[0] * m)
        )

    def update(self, z: float) -> CusumPoint:
        s = self.state
        upper, lower, run_up, run_down = s.upper, s.lower, s.run_up, s.run_down
        capped = self.cap != math.inf
        best = -math.inf
        best_value, best_run, best_sign, best_i, best_h = 0.0, 0, 1.0, 0, 1.0
        for i, (k, h) in enumerate(zip(self.k, self.h, strict=True)):
            up = upper[i] + z - k
            down = lower[i] - z - k
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
                limit = self.cap * h
                up = min(up, limit)
                down = min(down, limit)
            upper[i] = up
            lower[i] = down
            # The most extreme component relative to its h; the upper side wins a tie.
            if up / h > best:
                best, best_value, best_run, best_sign, best_i, best_h = up / h, up, run_up[i], 1.0, i, h
            if down / h > best:
                best, best_value, best_run, best_sign, best_i, best_h = (
                    down / h,
                    down,
                    run_down[i],
                    -1.0,
                    i,
                    h,
                )
        return CusumPoint(
            fired=best_value > best_h, statistic=best_sign * best_value, component=best_i, run=best_run
        )

    def reset(self) -> None:
        m = len(self.k)
        self.state.upper = [0.0] * m
        self.state.lower = [0.0] * m
        self.state.run_up = [0] * m
        self.state.run_down = [0] * m
