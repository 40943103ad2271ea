"""Traffic charts benchmark: false alarms and detection delay of the per-minute subgroup charts on
simulated traffic, against charting every request (the engine's probe charts), in one run.

Not a test: it prints figures. The simulated traffic (``simulate``) has what real traffic has:

- arrivals: Poisson per minute around a rate with a diurnal cycle (x0.3 at night, x1.7 at the
  peak), an AR(1) load wander between minutes (rho 0.8) and 3 % quiet minutes (x0.05);
- lengths: prompt tokens lognormal (median 400, sigma 1.0), output tokens lognormal (median 150,
  sigma 0.9), 1 to 4,000;
- timings: TTFT = 40 ms + 0.08 ms per prompt token, x lognormal(0.25); time per output token
  18 ms x a load factor (+15 % at the peak rate) x an AR(1) between-minute drift (sigma 5 %,
  rho 0.7) x lognormal(0.15) per request; 1 % of requests are 4-10x slow;
- errors: 1 % x an AR(1) between-minute factor (lognormal sigma 0.3, rho 0.6).

Figures, per rate (requests per second at the daily mean):
(a) false alarms per 100,000 minutes (opened critical episodes over all four charts of a
    subgroup), for each variance model (components, Laney) and spread estimator (mr, mad), and
    the per-request baseline: the engine's own latency, TTFT and tokens/s charts fed every request
    (the behaviour before the minute charts), over a shorter stretch, scaled to 100,000 minutes;
(b) detection delay (minutes from the change to the first page) for a 1.5x and a 2x slowdown of
    time per output token and an error-rate step from 1 % to 3 % and to 5 %, with the default
    configuration; and the per-request charts' delay for the same slowdown.

Usage: ``python bench/traffic_bench.py [--quick] [--rates 1,10,100] [--minutes N] [--trials N]``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import numpy as np

from llmscope.spc_engine.chart import MetricChart
from llmscope.spc_engine.config import default_config
from llmscope.spc_engine.minutes import QUANTILES
from llmscope.spc_engine.subgroup import Point, SubgroupChart, SubgroupConfig
from llmscope.spc_engine.traffic import (
    ERROR_RATE,
    LPT_P50,
    LPT_P90,
    TRAFFIC_METRICS,
    TTFT_P50,
    default_configs,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import print_machine

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Shift:
    """A change from minute ``at`` on: time per output token x ``slow``, error rate to ``p``."""

    at: int = 10**12
    slow: float = 1.0
    p: float | None = None


@dataclass
class Traffic:
    """AR(1) state of one simulated subgroup."""

    rng: np.random.Generator
    rate: float
    load: float = 0.0
    drift: float = 0.0
    err: float = 0.0
    minute: int = 0
    shift: Shift = field(default_factory=Shift)
    provider_cycle: bool = False
    """The day's slowdown follows the provider's load (its peak 6 hours from this traffic's), not
    this traffic's rate: nothing in the minute's ``n`` explains it."""

    def next_minute(self) -> dict[str, np.ndarray | int]:
        rng, t = self.rng, self.minute
        self.minute += 1
        self.load = 0.8 * self.load + rng.normal(0, 0.2 * math.sqrt(1 - 0.8**2))
        self.drift = 0.7 * self.drift + rng.normal(0, 0.05 * math.sqrt(1 - 0.7**2))
        self.err = 0.6 * self.err + rng.normal(0, 0.3 * math.sqrt(1 - 0.6**2))
        diurnal = 1.0 + 0.7 * math.sin(2 * math.pi * t / 1440.0)
        lam = self.rate * 60.0 * diurnal * math.exp(self.load)
        if rng.random() < 0.03:
            lam *= 0.05
        n = int(rng.poisson(lam))
        prompt = np.clip(np.round(rng.lognormal(math.log(400), 1.0, n)), 1, 32_000)
        out = np.clip(np.round(rng.lognormal(math.log(150), 0.9, n)), 1, 4000)
        ttft = (40.0 + 0.08 * prompt) * rng.lognormal(0, 0.25, n)
        load_factor = 1.0 + 0.15 * (lam / (self.rate * 60.0) - 1.0) / 0.7
        if self.provider_cycle:
            load_factor = 1.0 + 0.15 * math.sin(2 * math.pi * (t - 360) / 1440.0)
        shifted = t >= self.shift.at
        tpot = 18.0 * load_factor * math.exp(self.drift) * rng.lognormal(0, 0.15, n)
        if shifted:
            tpot *= self.shift.slow
        slow = rng.random(n) < 0.01
        latency = (ttft + out * tpot) * np.where(slow, rng.uniform(4, 10, n), 1.0)
        p = 0.01 * math.exp(self.err - 0.045)
        if shifted and self.shift.p is not None:
            p = self.shift.p * math.exp(self.err - 0.045)
        failed = rng.random(n) < min(p, 1.0)
        ok = ~failed
        return {
            "n": n,
            "errors": int(failed.sum()),
            "lpt": latency[ok] / out[ok],
            "ttft": ttft[ok],
            "latency": latency[ok],
            "out": out[ok],
        }


def _q(xs: np.ndarray) -> np.ndarray:
    return np.asarray(np.quantile(xs, QUANTILES))


def minute_points(m: dict[str, np.ndarray | int], t: int) -> list[tuple[str, Point]]:
    """The same points ``traffic.points_of`` makes of a closed minute (quantiles as the aggregator
    computes them)."""
    ts = T0 + timedelta(minutes=t)
    pid = f"m{t}"
    n = int(m["n"])
    out = [(ERROR_RATE, Point(id=pid, ts=ts, v=int(m["errors"]) / n if n else 0.0, n=n))]
    lpt, ttft = m["lpt"], m["ttft"]
    assert isinstance(lpt, np.ndarray)
    assert isinstance(ttft, np.ndarray)
    if len(lpt):
        q = np.log(_q(lpt))
        out.append((LPT_P50, Point(id=pid, ts=ts, v=q[1], n=len(lpt), a=(q[2] - q[0]) ** 2)))
        out.append((LPT_P90, Point(id=pid, ts=ts, v=q[3], n=len(lpt), a=2.25 * (q[4] - q[2]) ** 2)))
        qt = np.log(_q(ttft))
        out.append((TTFT_P50, Point(id=pid, ts=ts, v=qt[1], n=len(ttft), a=(qt[2] - qt[0]) ** 2)))
    return out


def configs(
    variance: str = "components", estimator: str = "sd", baseline: int = 1440, load_adjust: bool = True
) -> dict[str, SubgroupConfig]:
    """The engine's default configurations, with another variance model, estimator or baseline, or
    without the load adjustment (the default before it)."""
    return {
        m: msgspec.structs.replace(c, variance=variance, estimator=estimator, load_adjust=load_adjust)
        for m, c in default_configs(baseline_minutes=baseline).items()
    }


Charts = dict[str, SubgroupChart]


def feed(charts: Charts, m: dict[str, np.ndarray | int], i: int) -> list[str]:
    """One minute into a subgroup's charts; the metrics whose chart opened an episode."""
    opened = []
    for metric, point in minute_points(m, i):
        for sig in charts[metric].update(point):
            if sig.state == "open":
                opened.append(metric)
    return opened


def run_minutes(
    rate: float, minutes: int, seed: int, variants: dict[str, dict[str, SubgroupConfig]]
) -> dict[str, list[tuple[int, str]]]:
    """In control: ``minutes`` simulated minutes into each variant's charts; (minute, metric) of
    each page after the variant's baseline."""
    tr = Traffic(np.random.default_rng(seed), rate)
    charts = {name: {m: SubgroupChart(c) for m, c in cfgs.items()} for name, cfgs in variants.items()}
    opens: dict[str, list[tuple[int, str]]] = {name: [] for name in variants}
    for i in range(minutes):
        m = tr.next_minute()
        for name in variants:
            opens[name] += [(i, metric) for metric in feed(charts[name], m, i)]
    return opens


PER_REQUEST_METRICS = ("latency_ms", "ttft_ms", "tokens_per_s")


def per_request(charts: dict[str, MetricChart], m: dict[str, np.ndarray | int], i: int) -> int:
    """One minute's requests into the engine's per-request charts; critical episodes opened."""
    lat, ttft, out = m["latency"], m["ttft"], m["out"]
    assert isinstance(lat, np.ndarray)
    assert isinstance(ttft, np.ndarray)
    assert isinstance(out, np.ndarray)
    ts = T0 + timedelta(minutes=i)
    gen = (lat - ttft) / 1000.0
    pages = 0
    for j in range(len(lat)):
        values = {
            "latency_ms": float(lat[j]),
            "ttft_ms": float(ttft[j]),
            "tokens_per_s": float(out[j] / gen[j]) if out[j] >= 2 and gen[j] > 0 else None,
        }
        for metric, chart in charts.items():
            v = values[metric]
            if v is None:
                continue
            for sig in chart.update(v, point_id=f"r{i}.{j}", ts=ts):
                pages += sig.state == "open" and sig.severity == "critical"
    return pages


def per_100k(count: int, minutes: int) -> float:
    return count / max(minutes, 1) * 100_000


@dataclass
class Delay:
    delays: list[int] = field(default_factory=list)
    missed: int = 0
    early: int = 0

    def line(self) -> str:
        total = len(self.delays) + self.missed
        if not self.delays:
            return f"detected 0/{total} within the horizon"
        d = np.array(self.delays)
        return (
            f"detected {len(d)}/{total}, delay median {np.median(d):.0f} min, "
            f"p90 {np.quantile(d, 0.9):.0f} min, within 5 min {np.mean(d <= 5) * 100:.0f} %"
        )


def baseline_charts(
    rate: float, seed: int, load_adjust: bool = True, provider_cycle: bool = False
) -> tuple[Charts, dict[str, MetricChart]]:
    """Both kinds of charts after one simulated day (the minute charts' default baseline)."""
    tr = Traffic(np.random.default_rng(seed), rate, provider_cycle=provider_cycle)
    charts = {m: SubgroupChart(c) for m, c in configs(load_adjust=load_adjust).items()}
    pr = {m: MetricChart(default_config(m)) for m in PER_REQUEST_METRICS}
    pr_done = 0
    i = 0
    # A p90 needs minutes of 50 requests: at a low rate only the day's busy hours have them.
    while not all(c.armed for c in charts.values()) and i < 5 * 1440:
        m = tr.next_minute()
        feed(charts, m, i)
        if pr_done < 2000:  # the per-request charts need 1000 requests
            per_request(pr, m, i)
            pr_done += int(m["n"])
        i += 1
    return charts, pr


def delay_trials(
    rate: float,
    base: tuple[Charts, dict[str, MetricChart]],
    trials: int,
    shift: Shift,
    horizon: int,
    with_per_request: int,
    provider_cycle: bool = False,
) -> tuple[Delay, Delay]:
    """From the armed charts: 30 minutes in control at a random time of day, then the change;
    minutes from the change to the first page (minute charts; per-request charts, the first
    ``with_per_request`` trials)."""
    minute, request = Delay(), Delay()
    for trial in range(trials):
        rng = np.random.default_rng(10_000 + trial)
        start = 1440 + int(rng.integers(0, 1440))
        tr = Traffic(
            rng,
            rate,
            minute=start,
            shift=Shift(at=start + 30, slow=shift.slow, p=shift.p),
            provider_cycle=provider_cycle,
        )
        charts = copy.deepcopy(base[0])
        pr = copy.deepcopy(base[1]) if trial < with_per_request else None
        first_m = first_r = None
        early_m = early_r = False
        for i in range(30 + horizon):
            m = tr.next_minute()
            if feed(charts, m, start + i):
                if i < 30:
                    early_m = True
                elif first_m is None:
                    first_m = i - 30
            if pr is not None and first_r is None and per_request(pr, m, start + i):
                if i < 30:
                    early_r = True
                else:
                    first_r = i - 30
            if first_m is not None and (pr is None or first_r is not None):
                break
        for d, first, early, used in (
            (minute, first_m, early_m, True),
            (request, first_r, early_r, pr is not None),
        ):
            if not used:
                continue
            d.early += early
            if first is None:
                d.missed += 1
            else:
                d.delays.append(first)
    return minute, request


def limit_lines(rate: float, charts: Charts, shift: float = 1.5) -> list[str]:
    """How each quantile chart's limit is built after its baseline: the sampling part at the mean
    minute size, the between-minute part (tau) without and with the load adjustment, and where a
    ``shift``x slowdown of the statistic lands in sigmas of one minute."""
    out = []
    for metric in (LPT_P50, LPT_P90, TTFT_P50):
        c = charts[metric]
        b = c.state.baseline
        if b is None:
            out.append(f"  {metric}: no baseline")
            continue
        samp = math.sqrt(b.a / b.mean_n)
        sd = math.sqrt(b.a / b.mean_n + b.tau2)
        out.append(
            f"  rate {rate:g}/s {metric.removeprefix('traffic_'):26s} n {b.mean_n:6.0f}  sampling sd "
            f"{samp:.3f}  between-minute sd (tau) {math.sqrt(b.tau2):.3f}  load slope "
            f"{b.load_slope:+.3f} (x {b.load_lo:.2f}..{b.load_hi:.2f})  limit center x "
            f"{math.exp(c.config.k * sd):.2f} (k {c.config.k:g}), run x {math.exp(c.config.k_run * sd):.2f}; "
            f"a {shift:g}x shift = {math.log(shift) / sd:.1f} sd"
        )
    return out


DURATION_BOUNDS_MS = 1000.0 * np.array(
    [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
)
"""The bucket bounds the GenAI conventions advise for ``gen_ai.client.operation.duration``."""


def bucket_median(x: np.ndarray) -> float:
    """The median as a histogram of :data:`DURATION_BOUNDS_MS` gives it (linear in its bucket, as
    Prometheus' ``histogram_quantile``)."""
    counts = np.bincount(
        np.searchsorted(DURATION_BOUNDS_MS, x, side="left"), minlength=len(DURATION_BOUNDS_MS) + 1
    )
    cum = np.cumsum(counts)
    half = cum[-1] / 2
    i = int(np.searchsorted(cum, half))
    lo = DURATION_BOUNDS_MS[i - 1] if i > 0 else 0.0
    hi = DURATION_BOUNDS_MS[i] if i < len(DURATION_BOUNDS_MS) else 2 * DURATION_BOUNDS_MS[-1]
    below = cum[i - 1] if i > 0 else 0
    return float(lo + (half - below) / counts[i] * (hi - lo))


def histogram_lines(rate: float, seed: int) -> list[str]:
    """One simulated day, in control and 1.5x slower: the minute's log median duration exact and
    from the advised buckets, and the log median latency per output token (the span charts')."""
    out = []
    for slow in (1.0, 1.5):
        tr = Traffic(np.random.default_rng(seed), rate, shift=Shift(at=0, slow=slow))
        rows = []
        for _ in range(1440):
            m = tr.next_minute()
            lat, lpt = m["latency"], m["lpt"]
            assert isinstance(lat, np.ndarray)
            assert isinstance(lpt, np.ndarray)
            if len(lat) >= 10:
                rows.append(
                    (math.log(np.median(lat)), math.log(bucket_median(lat)), math.log(np.median(lpt)))
                )
        a = np.array(rows)
        mean, sd = a.mean(axis=0), a.std(axis=0, ddof=1)
        out.append(
            f"  rate {rate:g}/s x{slow:g}: log median duration exact {mean[0]:.3f} (sd {sd[0]:.3f}), "
            f"from buckets {mean[1]:.3f} (sd {sd[1]:.3f}); log median latency per token {mean[2]:.3f} "
            f"(sd {sd[2]:.3f})"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test, not figures)")
    parser.add_argument("--rates", default="1,10,100", help="requests per second at the daily mean")
    parser.add_argument("--minutes", type=int, default=0, help="in-control minutes per rate")
    parser.add_argument("--trials", type=int, default=0, help="detection trials per change")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="independent runs per rate in (a), each with its own baseline; counts are summed",
    )
    parser.add_argument("--changes", default="", help="(b) only these changes, comma separated labels")
    parser.add_argument("--skip-a", action="store_true", help="(b) only")
    parser.add_argument(
        "--provider-cycle",
        action="store_true",
        help="(b) also with the day's slowdown following the provider's load, not this traffic's rate",
    )
    parser.add_argument(
        "--per-request",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(b) per-request delays too",
    )
    parser.add_argument("--histograms", action="store_true", help="(c): the duration histograms' medians")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    started = time.perf_counter()
    print_machine(("numpy",))

    variants = {
        "components/sd (default)": configs(),
        "no load adjustment (before)": configs(load_adjust=False),
        "components/mad": configs(estimator="mad"),
        "components/mr": configs(estimator="mr"),
        "laney/sd": configs(variance="laney"),
        "components/sd, 1 h baseline": configs(baseline=60),
    }
    default = "components/sd (default)"
    print(
        "\n== (a) false alarms per 100,000 minutes (one subgroup, four charts), in control after the baseline"
    )
    for rate in [] if args.skip_a else rates:
        # Enough minutes for a count per chart, on a shared machine; the figure is scaled to 100k.
        minutes = args.minutes or (
            3_000 if args.quick else int(min(40_000, 4_000 + 400_000 / max(rate, 1.0)))
        )
        # The baseline is most of the variation between runs: independent runs, counts summed.
        runs = [
            run_minutes(rate, minutes, seed=int(rate * 1000) + 7 + 100_003 * k, variants=variants)
            for k in range(args.seeds)
        ]
        opens = runs[0]
        print(f"rate {rate:g}/s over {minutes:,} minutes x {args.seeds} run(s), each with its own baseline:")
        for name in variants:
            baseline = variants[name][ERROR_RATE].baseline_minutes
            per_run = [[(i, m) for i, m in run[name] if i >= baseline] for run in runs]
            counted = [x for run in per_run for x in run]
            after = (minutes - baseline) * args.seeds
            by_metric = {m: sum(1 for _, mm in counted if mm == m) for m in TRAFFIC_METRICS}
            detail = " ".join(f"{m.removeprefix('traffic_')}={c}" for m, c in by_metric.items() if c)
            spread = f"; per run {', '.join(str(len(r)) for r in per_run)}" if args.seeds > 1 else ""
            print(
                f"  {name:28s} {per_100k(len(counted), after):8.1f}  "
                f"({len(counted)} in {after:,} minutes: {detail or 'none'}{spread})",
                flush=True,
            )
        # The per-request charts feed every request through Python: a shorter stretch, scaled.
        pr_minutes = max(10, int((200 if args.quick else 1_500) / max(rate, 1.0)))
        tr = Traffic(np.random.default_rng(int(rate * 1000) + 7), rate)
        pr = {m: MetricChart(default_config(m)) for m in PER_REQUEST_METRICS}
        pages = sum(per_request(pr, tr.next_minute(), i) for i in range(pr_minutes))
        mine = [i for i, _ in opens[default] if i >= 1440]
        pr_rate, own = per_100k(pages, pr_minutes), per_100k(len(mine), minutes - 1440)
        ratio = f"{pr_rate / own:,.0f}x the minute charts" if own else "the minute charts had none"
        print(f"  {'per-request (before)':28s} {pr_rate:8.1f}  (every request on the latency, TTFT and")
        print(f"  {'':28s} {'':8s}  tokens/s charts, {pages} in {pr_minutes:,} minutes; {ratio})", flush=True)

    print("\n== (b) detection delay after the default one-day baseline, changes at any time of day")
    changes = [
        ("slowdown 1.5x", Shift(slow=1.5)),
        ("slowdown 2x", Shift(slow=2.0)),
        ("errors 1% -> 3%", Shift(p=0.03)),
        ("errors 1% -> 5%", Shift(p=0.05)),
    ]
    trials = args.trials or (4 if args.quick else 30)
    if args.changes:
        changes = [c for c in changes if c[0] in args.changes.split(",")]
    for rate in rates:
        base = baseline_charts(rate, seed=int(rate * 1000) + 99)
        before = baseline_charts(rate, seed=int(rate * 1000) + 99, load_adjust=False)
        print("how the limits are built, before (no load adjustment) and now:")
        for line in limit_lines(rate, before[0]) + limit_lines(rate, base[0]):
            print(line)
        for label, shift in changes:
            with_pr = 0 if shift.p is not None else (2 if args.quick else max(3, int(10 / max(rate, 1.0))))
            with_pr = with_pr if args.per_request else 0
            d, r = delay_trials(rate, base, trials, shift, 60, with_pr)
            b, _ = delay_trials(rate, before, trials, shift, 60, 0)
            print(
                f"rate {rate:g}/s {label:16s} minute charts: {d.line()}; "
                f"paged in the 30 minutes before in {d.early}",
                flush=True,
            )
            print(
                f"{'':24s} before (no load adjustment): {b.line()}; paged before in {b.early}",
                flush=True,
            )
            if with_pr:
                print(f"{'':24s} per-request:   {r.line()}; paged before in {r.early}/{with_pr}")
        if args.provider_cycle:
            seed = int(rate * 1000) + 99
            pc_now = baseline_charts(rate, seed, provider_cycle=True)
            pc_before = baseline_charts(rate, seed, load_adjust=False, provider_cycle=True)
            print("the day's slowdown following the provider's load, not this traffic's rate:")
            for line in limit_lines(rate, pc_before[0]) + limit_lines(rate, pc_now[0]):
                print(line)
            for label, shift in changes:
                if shift.p is not None:
                    continue
                d, _ = delay_trials(rate, pc_now, trials, shift, 60, 0, provider_cycle=True)
                b, _ = delay_trials(rate, pc_before, trials, shift, 60, 0, provider_cycle=True)
                print(
                    f"rate {rate:g}/s {label:16s} provider cycle, now: {d.line()}; paged before in {d.early}"
                )
                print(
                    f"{'':24s} before (no load adjustment): {b.line()}; paged before in {b.early}", flush=True
                )
    if args.histograms:
        print("\n== (c) /v1/metrics histograms: the minute's median duration from the advised buckets")
        for rate in rates:
            for line in histogram_lines(rate, seed=int(rate * 1000) + 5):
                print(line, flush=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
