"""Traffic charts: can a moving centre catch a slowdown that a provider-side day cycle hides?

Not a test: it prints figures, for the README's "what the load adjustment does not fix". When the
day's slowdown follows the *provider's* load (its peak 6 hours from this traffic's,
``traffic_bench.Traffic(provider_cycle=True)``), nothing in the minute's ``n`` explains it: it
stays in the between-minute sd ``tau`` and widens the limits, and a 1.5x slowdown in the fast
hours stays under them. Two cheap centres for the quantile charts are measured against the
engine's frozen one (``T=0``), on the same baselines and trials (the error-rate chart is the
engine's in all three):

- ``T=-1``, a time-of-day centre: the baseline day's residuals (after the load adjustment)
  averaged per hour, smoothed over neighbouring hours and interpolated; frozen with the rest of
  the baseline, ``tau`` from what it leaves;
- ``T>0``, an adaptive centre: an EWMA (time constant ``T`` minutes) of the in-control residuals,
  updated only while no episode is open and the minute is within ``k_run`` sigma, kept within the
  range the baseline's own EWMA covered (so a sustained change is never absorbed beyond the level
  the baseline day already saw); ``tau`` from the baseline's one-step-ahead errors.

For each rate: detection of a 1.5x and a 2x slowdown of time per output token (30 trials, the
change at a random time of day, paging within an hour; the chart runs on, in control, from the end
of its baseline to the trial's time of day) and false alarms per 100,000 minutes in control, with
and without the provider cycle.

Usage: ``python bench/traffic_centre.py RATE CENTRES [TRIALS] [FA_MINUTES] [SEEDS] [CYCLES]``,
e.g. ``python bench/traffic_centre.py 10 0,-1,120 30 12000 3 provider,own`` (``--help`` says what
each is).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import print_machine

from bench import traffic_bench as tb
from llmscope.spc_engine import subgroup as sg
from llmscope.spc_engine.subgroup import Point, SubgroupConfig, SubgroupSignal
from llmscope.spc_engine.traffic import LPT_P50

CYCLES = ("provider", "own")
"""Whose day cycle the latency follows: the provider's (its peak 6 hours from this traffic's) or
this traffic's own."""


class MovingCentre(sg.SubgroupChart):
    """The engine's subgroup chart with a time-of-day (``T < 0``) or EWMA (``T > 0``) centre on
    top of the frozen, load-adjusted one; ``T == 0`` is the engine's chart unchanged."""

    def __init__(self, config: SubgroupConfig, T: int) -> None:
        super().__init__(config)
        self.T = T
        self.level = 0.0
        self.lo = self.hi = 0.0
        self.tau2 = 0.0
        self.profile = np.zeros(24)
        self.pts: list[Point] = []

    def update(self, point: Point) -> list[SubgroupSignal]:
        cfg, st = self.config, self.state
        if cfg.kind == "p" or self.T == 0:
            return super().update(point)
        if point.n < cfg.min_requests:
            st.skipped += 1
            return []
        if st.baseline is None:
            self.pts.append(point)
            super().update(point)  # the baseline's minutes page nothing
            if self.armed:
                self._fit()
            return []
        b = st.baseline
        if self.T < 0:
            self.level = self._hourly(point)
        c = sg.center_at(b, point.n) + self.level
        sd = math.sqrt(b.sigma_z**2 * b.a / point.n + self.tau2)
        z = (point.v - c) / sd
        last, st.last_z = st.last_z, z
        out: list[SubgroupSignal] = []
        if st.episode is None:
            if z > cfg.k or (last is not None and z > cfg.k_run and last > cfg.k_run):
                st.episode, st.quiet = point.id, 0
                out.append(SubgroupSignal("open", "TRAFFIC", "", point, z, sd, b, point.id, ()))
        elif z < cfg.k_run:
            st.quiet += 1
            if st.quiet >= cfg.clear_after:
                st.episode, st.quiet = None, 0
                out.append(SubgroupSignal("cleared", "TRAFFIC", "", point, z, sd, b, point.id, ()))
        else:
            st.quiet = 0
        if self.T > 0 and st.episode is None and abs(z) < cfg.k_run:
            self.level = min(max(self.level + (point.v - c) / self.T, self.lo), self.hi)
        return out

    def _hourly(self, p: Point) -> float:
        x = (p.ts.hour * 60 + p.ts.minute) / 60.0 - 0.5
        i = math.floor(x)
        f = x - i
        return float((1 - f) * self.profile[i % 24] + f * self.profile[(i + 1) % 24])

    def _fit(self) -> None:
        b = self.state.baseline
        assert b is not None
        r = np.array([p.v - sg.center_at(b, p.n) for p in self.pts])
        n = np.array([p.n for p in self.pts], dtype=float)
        if self.T < 0:
            h = np.array([p.ts.hour for p in self.pts])
            prof = np.array([float(np.mean(r[h == k])) if np.any(h == k) else 0.0 for k in range(24)])
            self.profile = 0.25 * np.roll(prof, 1) + 0.5 * prof + 0.25 * np.roll(prof, -1)
            errors = np.array([x - self._hourly(p) for x, p in zip(r, self.pts, strict=True)])
            self.lo, self.hi = float(self.profile.min()), float(self.profile.max())
        else:
            level = float(np.mean(r[: self.T]))
            errs, levels = [], []
            for x in r:
                errs.append(x - level)
                level += (x - level) / self.T
                levels.append(level)
            errors = np.array(errs)
            self.level, self.lo, self.hi = level, float(min(levels)), float(max(levels))
        self.tau2 = max(0.0, float(np.var(errors, ddof=1)) - float(np.mean(b.sigma_z**2 * b.a / n)))
        self.pts = []


Charts = dict[str, sg.SubgroupChart]


def charts_of(T: int) -> Charts:
    return {m: MovingCentre(c, T) for m, c in tb.configs().items()}


def baseline(rate: float, seed: int, T: int, cycle: bool) -> Charts:
    tr = tb.Traffic(np.random.default_rng(seed), rate, provider_cycle=cycle)
    charts = charts_of(T)
    i = 0
    while not all(c.armed for c in charts.values()) and i < 5 * 1440:
        tb.feed(charts, tr.next_minute(), i)
        i += 1
    return charts


def delays(rate: float, base: Charts, trials: int, slow: float, cycle: bool) -> tb.Delay:
    d = tb.Delay()
    for trial in range(trials):
        rng = np.random.default_rng(10_000 + trial)
        start = 1440 + int(rng.integers(0, 1440))
        shift = tb.Shift(at=start + 30, slow=slow)
        tr = tb.Traffic(rng, rate, minute=1440, shift=shift, provider_cycle=cycle)
        charts = copy.deepcopy(base)
        for j in range(1440, start):  # runs on in control up to the trial's time of day
            tb.feed(charts, tr.next_minute(), j)
        first, early = None, False
        for i in range(30 + 60):
            if tb.feed(charts, tr.next_minute(), start + i):
                if i < 30:
                    early = True
                elif first is None:
                    first = i - 30
                    break
        d.early += early
        if first is None:
            d.missed += 1
        else:
            d.delays.append(first)
    return d


def false_alarms(rate: float, seed: int, T: int, cycle: bool, minutes: int) -> list[str]:
    tr = tb.Traffic(np.random.default_rng(seed), rate, provider_cycle=cycle)
    charts = charts_of(T)
    opened: list[str] = []
    for i in range(minutes):
        got = tb.feed(charts, tr.next_minute(), i)
        if i >= 1440:
            opened += got
    return opened


def _centres(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: whole numbers separated by commas, e.g. 0,-1,120"
        ) from None


def _cycles(text: str) -> list[str]:
    cycles = text.split(",")
    if unknown := [c for c in cycles if c not in CYCLES]:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: each cycle is one of {', '.join(CYCLES)}")
    return cycles


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: positional, as the README's runs give it."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n", 1)[0],
        epilog="e.g. python bench/traffic_centre.py 10 0,-1,120 30 12000 3 provider,own",
    )
    parser.add_argument("rate", type=float, help="requests per second of the simulated traffic")
    parser.add_argument(
        "centres",
        type=_centres,
        help="the centres to measure, comma-separated: 0 the engine's frozen one, -1 time of day, "
        "T>0 an EWMA of T minutes",
    )
    parser.add_argument("trials", type=int, nargs="?", default=30, help="trials per slowdown (default 30)")
    parser.add_argument(
        "fa_minutes",
        type=int,
        nargs="?",
        default=0,
        help="minutes per false-alarm run, the baseline day's 1,440 included (default 0: none)",
    )
    parser.add_argument("seeds", type=int, nargs="?", default=1, help="false-alarm runs (default 1)")
    parser.add_argument(
        "cycles",
        type=_cycles,
        nargs="?",
        default=list(CYCLES),
        help="whose day cycle the latency follows, comma-separated (default provider,own)",
    )
    args = parser.parse_args(argv)
    if 0 < args.fa_minutes <= 1440:  # the first day is the baseline's: nothing would be counted
        parser.error(f"argument fa_minutes: {args.fa_minutes}: 0 (none) or more than 1440")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rate, centres, trials = args.rate, args.centres, args.trials
    fa_minutes, seeds, cycles = args.fa_minutes, args.seeds, args.cycles
    print_machine(("numpy",))
    for cycle in cycles:
        for T in centres:
            base = baseline(rate, int(rate * 1000) + 99, T, cycle == "provider")
            lpt = base[LPT_P50]
            assert isinstance(lpt, MovingCentre)
            b = lpt.state.baseline
            assert b is not None
            tau = math.sqrt(lpt.tau2 if T else b.tau2)
            name = {0: "frozen (now)", -1: "time-of-day"}.get(T, f"EWMA T={T}")
            line = f"rate {rate:g}/s, {cycle} cycle, {name}: lpt tau {tau:.3f}"
            for slow in (1.5, 2.0):
                d = delays(rate, base, trials, slow, cycle == "provider")
                line += f" | {slow:g}x {d.line()}, paged in the 30 min before in {d.early}"
            print(line, flush=True)
            if fa_minutes:
                opened: list[str] = []
                per_run = []
                for k in range(seeds):
                    seed = int(rate * 1000) + 7 + 100_003 * k
                    got = false_alarms(rate, seed, T, cycle == "provider", fa_minutes)
                    opened += got
                    per_run.append(len(got))
                after = (fa_minutes - 1440) * seeds
                print(
                    f"    false alarms per 100,000 minutes {len(opened) / after * 1e5:.1f} "
                    f"({len(opened)} in {after:,}: {dict(Counter(opened))}; per run {per_run})",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
