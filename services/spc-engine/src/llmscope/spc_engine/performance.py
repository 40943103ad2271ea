"""Measured false alarms and detection delays of a chart configuration's ``critical`` signals.

Issue 3's targets for the default configuration, on in-control lognormal latency (sigma of log
latency 0.2 to 0.6) with parameters estimated from the default baseline: at most one critical
signal per 100,000 probes on average; a sustained shift of 0.5 / 1 / 2 sigma (log scale)
signalled within a median of 100 / 25 / 8 probes; a single point beyond ~5 sigma at once.

Baselines go through the engine's own estimator (``baseline.estimate``) on log latency; the
critical detectors (the CUSUMs and the spike) then run vectorised over many charts at once with
the same recursion as ``charts.cusum`` (whose equality with the streaming chart the chart tests
check). Shared by ``tests/spc_engine/test_defaults.py`` and ``bench/spc_bench.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from llmscope.spc_engine import arl
from llmscope.spc_engine.baseline import estimate
from llmscope.spc_engine.chart import MetricChart
from llmscope.spc_engine.config import ChartConfig, default_config

Arr = npt.NDArray[np.float64]

FALSE_ALARMS_PER_100K_TARGET = 1.0
"""At most one critical signal per 100,000 in-control probes."""
DETECTION_TARGETS: tuple[tuple[float, int], ...] = ((0.5, 100), (1.0, 25), (2.0, 8))
"""(sustained shift in sigma of log latency, target median delay in probes)."""
DETECTION_SHIFTS = tuple(shift for shift, _ in DETECTION_TARGETS)
SPIKE_SIGMA = 5.3
"""A single point "beyond about 5 sigma" of the chart's own baseline: signalled at once."""

_MU = float(np.log(800.0))


def estimated_baselines(
    rng: np.random.Generator, reps: int, sigma_log: float, config: ChartConfig | None = None
) -> tuple[Arr, Arr]:
    """(centre, sigma) per chart, in units of the true sigma, each estimated from a baseline.

    Each baseline is ``config.baseline_n`` lognormal latencies (median 800 ms, sigma of log
    ``sigma_log``) through the engine's estimator, cleaning and sigma floor.
    """
    cfg = config or default_config("latency_ms")
    centers = np.empty(reps)
    sigmas = np.empty(reps)
    for r in range(reps):
        latency = np.exp(_MU + sigma_log * rng.standard_normal(cfg.baseline_n))
        est = estimate(np.log(latency), cfg.sigma_estimator, cfg.clean_baseline, cfg.clean_limit)
        centers[r] = (est.center - _MU) / sigma_log
        sigmas[r] = max(est.sigma, cfg.min_sigma) / sigma_log
    return centers, sigmas


def run_critical(
    rng: np.random.Generator,
    centers: Arr,
    sigmas: Arr,
    shift: float,
    n: int,
    config: ChartConfig | None = None,
) -> tuple[Arr, int]:
    """Run ``n`` probes shifted by ``shift`` true sigma through each chart's critical detectors.

    Returns the first critical signal per chart (``n + 1`` if none) and the total count of
    signals. A signal restarts that chart's CUSUMs, as a cleared episode does.
    """
    cfg = config or default_config("latency_ms")
    reps = centers.size
    ks = np.array(cfg.cusum.k)[:, None]
    hs = np.array(cfg.cusum.h)[:, None]
    up = np.zeros((ks.size, reps))
    dn = np.zeros((ks.size, reps))
    first = np.full(reps, float(n + 1))
    total = 0
    for t in range(1, n + 1):
        z = (rng.standard_normal(reps) + shift - centers) / sigmas
        up = np.maximum(0.0, up + z - ks)
        dn = np.maximum(0.0, dn - z - ks)
        sig = (up > hs).any(axis=0) | (dn > hs).any(axis=0) | (np.abs(z) > cfg.spike.k)
        if sig.any():
            total += int(sig.sum())
            first[sig & (first > n)] = t
            up[:, sig] = 0.0
            dn[:, sig] = 0.0
    return first, total


@dataclass(frozen=True, slots=True)
class FalseAlarms:
    """Critical signals on in-control data, charts with estimated parameters."""

    sigma_log: float
    charts: int
    probes: int
    signals: int
    per_100k_markov: float
    """The exact (Markov chain) rate of each estimated chart, averaged over charts."""

    @property
    def per_100k(self) -> float:
        return 100_000 * self.signals / self.probes


def markov_rate(centers: Arr, sigmas: Arr, config: ChartConfig | None = None, m: int = 100) -> float:
    """Critical signals per probe, averaged over estimated charts, by Brook-Evans per chart."""
    cfg = config or default_config("latency_ms")
    rates = []
    for c, s in zip(centers, sigmas, strict=True):
        arls = [
            arl.cusum_arl(k, h, -c / s, 1 / s, m=m) for k, h in zip(cfg.cusum.k, cfg.cusum.h, strict=True)
        ]
        rates.append(1.0 / arl.combined_arl(*arls, arl.shewhart_arl(cfg.spike.k, -c / s, 1 / s)))
    return float(np.mean(rates))


def false_alarms(
    rng: np.random.Generator,
    sigma_log: float,
    *,
    charts: int = 2000,
    probes_per_chart: int = 5000,
    markov_charts: int = 200,
    config: ChartConfig | None = None,
) -> FalseAlarms:
    """Count critical signals in ``charts * probes_per_chart`` in-control probes (direct)."""
    c, s = estimated_baselines(rng, markov_charts, sigma_log, config)
    per_100k_markov = 100_000 * markov_rate(c, s, config) if markov_charts else float("nan")
    centers, sigmas = estimated_baselines(rng, charts, sigma_log, config)
    _, total = run_critical(rng, centers, sigmas, 0.0, probes_per_chart, config)
    return FalseAlarms(sigma_log, charts, charts * probes_per_chart, total, per_100k_markov)


def detection_medians(
    rng: np.random.Generator,
    *,
    sigma_log: float = 0.3,
    charts: int = 2000,
    horizon: int = 400,
    shifts: tuple[float, ...] = DETECTION_SHIFTS,
    config: ChartConfig | None = None,
) -> dict[float, float]:
    """Median probes from the start of a sustained shift to the first critical signal."""
    centers, sigmas = estimated_baselines(rng, charts, sigma_log, config)
    return {
        shift: float(np.median(run_critical(rng, centers, sigmas, shift, horizon, config)[0]))
        for shift in shifts
    }


def armed_chart(rng: np.random.Generator, sigma_log: float, config: ChartConfig | None = None) -> MetricChart:
    """A streaming chart armed on its own baseline of in-control lognormal latency."""
    cfg = config or default_config("latency_ms")
    chart = MetricChart(cfg, key="perf")
    for v in np.exp(6.0 + sigma_log * rng.standard_normal(cfg.baseline_n)):
        if chart.update(float(v)):
            raise RuntimeError("a chart signalled while collecting its baseline")
    if not chart.armed:
        raise RuntimeError("chart did not arm on its baseline")
    return chart


def spike_caught_at_once(
    rng: np.random.Generator, *, charts: int, sigma_log: float = 0.3, k: float = SPIKE_SIGMA
) -> int:
    """How many armed streaming charts signal a single point ``k`` baseline sigmas high as critical."""
    caught = 0
    for _ in range(charts):
        chart = armed_chart(rng, sigma_log)
        b = chart.state.baseline
        assert b is not None
        signals = chart.update(float(np.exp(b.center + k * b.sigma)), point_id="spike")
        caught += any(s.severity == "critical" and s.rule == "SPIKE" for s in signals)
    return caught
