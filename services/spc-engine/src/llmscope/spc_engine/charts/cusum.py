"""Two-sided tabular CUSUM on standardised values, with one or more reference values k.

For each (k, h): ``C+ = max(0, C+ + z - k)``, ``C- = max(0, C- - z - k)``; a side signals while
any of its components is above its h. Several k run side by side (small k finds small shifts,
large k large ones). The two sides are reported apart: a shift up and a later shift down are
two different findings.

After a component crosses h it is capped at ``cap * h`` instead of being reset: a sustained
shift keeps the side out of control (one episode, no re-signal every ARL1 points), and when the
process returns the statistic falls back below h within ``(cap - 1) h / k`` points. The owner
resets a side when its episode clears, so a recovered chart starts afresh.
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


class CusumSide(msgspec.Struct, frozen=True, kw_only=True):
    """One side after an update: its most extreme component relative to its h."""

    fired: bool
    statistic: float
    """That component's sum (>= 0)."""
    component: int
    run: int
    """Points since that component last sat at zero: the points that formed the signal."""
    shift: float
    """That component's estimate of the shift since the run began: ``k + C / run``."""


class CusumPoint(msgspec.Struct, frozen=True, kw_only=True):
    up: CusumSide
    down: CusumSide

    @property
    def fired(self) -> bool:
        return self.up.fired or self.down.fired

    @property
    def statistic(self) -> float:
        """Signed sum of the more extreme side (+ upper, - lower; the upper side wins a tie)."""
        return self.up.statistic if not self.down.fired or self.up.fired else -self.down.statistic


def _side(sums: list[float], runs: list[int], ks: tuple[float, ...], hs: tuple[float, ...]) -> CusumSide:
    best = max(range(len(sums)), key=lambda i: sums[i] / hs[i])
    run = runs[best]
    return CusumSide(
        fired=any(c > h for c, h in zip(sums, hs, strict=True)),
        statistic=sums[best],
        component=best,
        run=run,
        shift=ks[best] + sums[best] / run if run else 0.0,
    )


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
        # Per component (index, k, h, the cap's limit): the per-point loop unpacks one tuple.
        pairs = enumerate(zip(self.k, self.h, strict=True))
        self.steps = tuple((i, kk, hh, cap * hh) for i, (kk, hh) in pairs)
        self.capped = cap != math.inf

    def update(self, z: float) -> CusumPoint:
        self.step(z)
        return CusumPoint(up=self.side("up"), down=self.side("down"))

    def step(self, z: float) -> tuple[bool, bool]:
        """Feed one point; whether the upper and the lower side signal (:meth:`side` has the
        details). The chart's per-point path: no objects built unless a side signals."""
        s = self.state
        upper, lower, run_up, run_down = s.upper, s.lower, s.run_up, s.run_down
        capped = self.capped
        fired_up = fired_down = False
        for i, k, h, limit in self.steps:
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
                if limit < up:  # min(up, limit), without the call
                    up = limit
                if limit < down:
                    down = limit
            upper[i] = up
            lower[i] = down
            if up > h:
                fired_up = True
            if down > h:
                fired_down = True
        return fired_up, fired_down

    def side(self, which: str) -> CusumSide:
        """One side (``"up"`` or ``"down"``) as it stands."""
        s = self.state
        if which == "up":
            return _side(s.upper, s.run_up, self.k, self.h)
        return _side(s.lower, s.run_down, self.k, self.h)

    def reset(self, side: str | None = None) -> None:
        """Restart one side (``"up"`` or ``"down"``) or both."""
        m = len(self.k)
        if side in (None, "up"):
            self.state.upper = [0.0] * m
            self.state.run_up = [0] * m
        if side in (None, "down"):
            self.state.lower = [0.0] * m
            self.state.run_down = [0] * m
