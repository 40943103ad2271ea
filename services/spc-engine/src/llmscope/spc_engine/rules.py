"""The eight Nelson tests for special causes, as Minitab defines them, evaluated point by point.

Conventions (they change results, so they are fixed here and tested):

- Every test is evaluated on the standardised value ``z = (y - center) / sigma`` of each point,
  and fires at every point where its pattern is complete *ending at that point* (so the 10th
  point in a row on one side fires test 2 again; the episode logic, not the test, decides what
  is published).
- "Beyond" is strict (``z > 2``), "within" is strict (``|z| < 1``). A point exactly on the
  centre line is on neither side: it breaks a test 2 run.
- Test 3 counts *changes* like Minitab, not points: K = 6 fires on the 6th consecutive increase
  (or decrease), i.e. on the 7th point of the run. Test 4 likewise: K = 14 fires when the last 14
  changes alternate in direction (15 points). JMP counts points instead (6 and 14).
- Ties break runs: two equal consecutive values are neither an increase nor a decrease, so they
  end a test 3 run and a test 4 alternation.
- Test 5 fires when K of the last K + 1 points are beyond 2 sigma on the same side; test 6 the
  same with 1 sigma. Test 8 counts points beyond 1 sigma on either side (Minitab does not ask
  for both sides to occur).
- Start-up: Baseline (Phase I) points never count towards a run: every counter starts empty
  when the chart is armed. A run test needs its K Phase II points (tests 3 and 4: K changes,
  so K + 1 points); tests 5 and 6 fire as soon as K points beyond the bound are among the last
  K + 1 (so the first K points can fire, as in Rspc).
"""

from __future__ import annotations

from typing import Literal

import msgspec

Severity = Literal["critical", "warning", "info"]

TEST_NAMES: dict[int, str] = {
    1: "1 point more than {k:g} sigma from center line",
    2: "{k:g} points in a row on the same side of center line",
    3: "{k:g} increases (or decreases) in a row",
    4: "{k:g} changes in a row alternating up and down",
    5: "{k:g} out of {k1:g} points more than 2 sigma from center line (same side)",
    6: "{k:g} out of {k1:g} points more than 1 sigma from center line (same side)",
    7: "{k:g} points in a row within 1 sigma of center line (either side)",
    8: "{k:g} points in a row more than 1 sigma from center line (either side)",
}
MINITAB_K: dict[int, float] = {1: 3.0, 2: 9, 3: 6, 4: 14, 5: 2, 6: 4, 7: 15, 8: 8}


class NelsonTestConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One Nelson test: on or off, its K, and the severity of its signals."""

    enabled: bool = True
    k: float
    severity: Severity = "info"


def _default(test: int, severity: Severity = "info") -> NelsonTestConfig:
    return NelsonTestConfig(k=MINITAB_K[test], severity=severity)


class RulesConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The eight tests. Defaults: Minitab's K; test 1 at warning, the run tests at info."""

    r1: NelsonTestConfig = msgspec.field(default_factory=lambda: _default(1, "warning"))
    r2: NelsonTestConfig = msgspec.field(default_factory=lambda: _default(2))
    r3: NelsonTestConfig = msgspec.field(default_factory=lambda: _default(3))
    r4: NelsonTestConfig = msgspec.field(default_factory=lambda: _default(4))
    r5: NelsonTestConfig = msgspec.field(default_factory=lambda: _default(5))
    r6: NelsonTestConfig = msgspec.field(default_factory=lambda: _default(6))
    r7: NelsonTestConfig = msgspec.field(default_factory=lambda: _default(7))
    r8: NelsonTestConfig = msgspec.field(default_factory=lambda: _default(8))

    def test(self, n: int) -> NelsonTestConfig:
        cfg = getattr(self, f"r{n}")
        assert isinstance(cfg, NelsonTestConfig)
        return cfg

    def __post_init__(self) -> None:
        for n in range(1, 9):
            k = self.test(n).k
            if n == 1:
                if not k > 0:
                    raise ValueError("test 1 needs K > 0")
            elif k < 1 or k != int(k):
                raise ValueError(f"test {n} needs a whole K >= 1, got {k}")

    def only(self, tests: set[int]) -> RulesConfig:
        """The same K and severities with only ``tests`` enabled."""
        changes = {f"r{n}": msgspec.structs.replace(self.test(n), enabled=n in tests) for n in range(1, 9)}
        return msgspec.structs.replace(self, **changes)

    def window(self, n: int) -> int:
        """How many points form test n's pattern (the points a violation reports)."""
        k = int(self.test(n).k) if n != 1 else 1
        return {1: 1, 2: k, 3: k + 1, 4: k + 1, 5: k + 1, 6: k + 1, 7: k, 8: k}[n]

    def name(self, n: int) -> str:
        k = self.test(n).k
        return TEST_NAMES[n].format(k=k, k1=k + 1)


class NelsonState(msgspec.Struct, kw_only=True):
    """Counters of the runs in progress and the recent standardised values."""

    prev_y: float | None = None
    prev_dir: int = 0
    side_run: int = 0
    side: int = 0
    trend_run: int = 0
    alt_run: int = 0
    within_run: int = 0
    beyond_run: int = 0
    recent: list[float] = msgspec.field(default_factory=list)


class NelsonRules:
    """Streaming evaluation of the enabled tests; ``update`` returns the tests that fire."""

    def __init__(self, config: RulesConfig, state: NelsonState | None = None) -> None:
        self.config = config
        self.state = state if state is not None else NelsonState()
        self._enabled = tuple(n for n in range(1, 9) if config.test(n).enabled)
        self._k = {n: config.test(n).k for n in range(1, 9)}
        self._keep = max(int(self._k[5]), int(self._k[6])) + 1
        self._only_1 = self._enabled == (1,)
        self._k1 = self._k[1]

    def update(self, y: float, z: float) -> list[int]:
        """Feed one Phase II point (value ``y`` in chart units, ``z`` standardised)."""
        s = self.state
        k = self._k
        side = 1 if z > 0 else (-1 if z < 0 else 0)
        s.side_run = s.side_run + 1 if side != 0 and side == s.side else (1 if side != 0 else 0)
        s.side = side
        direction = 0
        prev_y = s.prev_y
        if prev_y is not None:
            direction = 1 if y > prev_y else (-1 if y < prev_y else 0)
            if direction != 0:
                prev_dir = s.prev_dir
                s.trend_run = s.trend_run + 1 if direction == prev_dir else 1
                s.alt_run = s.alt_run + 1 if direction == -prev_dir else 1
            else:
                s.trend_run = s.alt_run = 0
        s.prev_y = y
        s.prev_dir = direction
        az = abs(z)
        s.within_run = s.within_run + 1 if az < 1.0 else 0
        s.beyond_run = s.beyond_run + 1 if az > 1.0 else 0
        recent = s.recent
        recent.append(z)
        if len(recent) > self._keep:
            del recent[0]

        if self._only_1:  # the default: skip the dispatch below
            return [1] if az > self._k1 else []
        fired: list[int] = []
        for n in self._enabled:
            if n == 1:
                hit = abs(z) > k[1]
            elif n == 2:
                hit = s.side_run >= k[2]
            elif n == 3:
                hit = s.trend_run >= k[3]
            elif n == 4:
                hit = s.alt_run >= k[4]
            elif n in (5, 6):
                hit = self._k_of_k1(int(k[n]), 2.0 if n == 5 else 1.0)
            elif n == 7:
                hit = s.within_run >= k[7]
            else:
                hit = s.beyond_run >= k[8]
            if hit:
                fired.append(n)
        return fired

    def _k_of_k1(self, kk: int, bound: float) -> bool:
        window = self.state.recent[-(kk + 1) :]
        up = sum(1 for v in window if v > bound)
        down = sum(1 for v in window if v < -bound)
        return up >= kk or down >= kk
