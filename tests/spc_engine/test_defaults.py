"""The default configuration meets issue 3's targets for ``critical`` signals.

On in-control lognormal latency (sigma of log latency 0.2 to 0.6) with parameters estimated
from the default baseline: at most one critical signal per 100,000 probes on average; a
sustained shift of 0.5 / 1 / 2 sigma (log scale) signalled within a median of 100 / 25 / 8
probes; a single point beyond ~5 sigma at once.

Baselines go through the engine's own estimator on log latency; the critical detectors (the
three CUSUMs and the 5-sigma spike) are run vectorised over many charts at once with the same
recursion as ``charts.cusum`` (whose equality with the streaming chart test_charts checks).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from llmscope.spc_engine import arl
from llmscope.spc_engine.baseline import estimate
from llmscope.spc_engine.chart import MetricChart
from llmscope.spc_engine.config import DEFAULT_BASELINE_N, default_config

Arr = npt.NDArray[np.float64]
CFG = default_config("latency_ms")


def estimated(rng: np.random.Generator, reps: int, sigma_log: float) -> tuple[Arr, Arr]:
    """(centre, sigma) per chart, estimated from a default-size lognormal baseline."""
    mu = np.log(800.0)
    centers = np.empty(reps)
    sigmas = np.empty(reps)
    for r in range(reps):
        latency = np.exp(mu + sigma_log * rng.standard_normal(DEFAULT_BASELINE_N))
        est = estimate(np.log(latency), CFG.sigma_estimator, CFG.clean_baseline, CFG.clean_limit)
        centers[r] = (est.center - mu) / sigma_log  # in units of the true sigma
        sigmas[r] = max(est.sigma, CFG.min_sigma) / sigma_log
    return centers, sigmas


def run_critical(
    rng: np.random.Generator, centers: Arr, sigmas: Arr, shift: float, n: int
) -> tuple[Arr, int]:
    """First critical signal per chart (n + 1 if none) and the total count of signals."""
    reps = centers.size
    ks = np.array(CFG.cusum.k)[:, None]
    hs = np.array(CFG.cusum.h)[:, None]
    up = np.zeros((ks.size, reps))
    dn = np.zeros((ks.size, reps))
    first = np.full(reps, float(n + 1))
    total = 0
    for t in range(1, n + 1):
        z = (rng.standard_normal(reps) + shift - centers) / sigmas
        up = np.maximum(0.0, up + z - ks)
        dn = np.maximum(0.0, dn - z - ks)
        sig = (up > hs).any(axis=0) | (dn > hs).any(axis=0) | (np.abs(z) > CFG.spike.k)
        if sig.any():
            total += int(sig.sum())
            first[sig & (first > n)] = t
            # A signal restarts that chart's CUSUMs, as a cleared episode does.
            up[:, sig] = 0.0
            dn[:, sig] = 0.0
    return first, total


@pytest.mark.parametrize("sigma_log", [0.2, 0.6])
def test_in_control_false_alarm_rate_with_estimated_parameters(sigma_log: float) -> None:
    rng = np.random.default_rng(int(sigma_log * 10))
    centers, sigmas = estimated(rng, 200, sigma_log)
    # Semi-analytic: the exact (Markov chain) false-alarm rate of each estimated chart, averaged.
    rates = []
    for c, s in zip(centers, sigmas, strict=True):
        arls = [
            arl.cusum_arl(k, h, -c / s, 1 / s, m=100) for k, h in zip(CFG.cusum.k, CFG.cusum.h, strict=True)
        ]
        rates.append(1.0 / arl.combined_arl(*arls, arl.shewhart_arl(CFG.spike.k, -c / s, 1 / s)))
    assert 1.0 / np.mean(rates) > 110_000
    # Direct: 2,000 estimated charts x 5,000 probes = 1e7 in-control probes.
    centers, sigmas = estimated(rng, 2000, sigma_log)
    _, total = run_critical(rng, centers, sigmas, 0.0, 5000)
    assert total <= 100, f"{total} critical signals in 1e7 in-control probes"


def test_detection_medians_with_estimated_parameters() -> None:
    rng = np.random.default_rng(21)
    centers, sigmas = estimated(rng, 2000, 0.3)
    medians = {}
    for shift, bound in ((0.5, 100), (1.0, 25), (2.0, 8)):
        first, _ = run_critical(rng, centers, sigmas, shift, 400)
        medians[shift] = float(np.median(first))
        assert medians[shift] <= bound, medians
    assert medians[0.5] > medians[1.0] > medians[2.0]


def _armed_chart(rng: np.random.Generator, sigma_log: float) -> MetricChart:
    chart = MetricChart(CFG, key="t")
    for v in np.exp(6.0 + sigma_log * rng.standard_normal(DEFAULT_BASELINE_N)):
        assert chart.update(float(v)) == []
    assert chart.armed
    return chart


def test_a_single_five_sigma_point_is_critical_at_once() -> None:
    chart = _armed_chart(np.random.default_rng(22), 0.3)
    b = chart.state.baseline
    assert b is not None
    spike = float(np.exp(b.center + 5.3 * b.sigma))
    signals = chart.update(spike, point_id="spike")
    critical = [s for s in signals if s.severity == "critical"]
    assert [s.rule for s in critical] == ["SPIKE"]
    assert critical[0].point_id == "spike"
    assert critical[0].deviation_sigma == pytest.approx(5.3)


def test_sigma_of_log_latency_does_not_change_what_is_signalled() -> None:
    seqs = []
    for sigma_log in (0.2, 0.4, 0.6):
        rng = np.random.default_rng(23)
        chart = _armed_chart(rng, sigma_log)
        z = rng.standard_normal(3000)
        z[2000:] += 1.0
        out = []
        for i, v in enumerate(np.exp(6.0 + sigma_log * z)):
            out += [(s.rule, s.state, s.index) for s in chart.update(float(v), point_id=str(i))]
        seqs.append(out)
    assert seqs[0] == seqs[1] == seqs[2]
    assert ("CUSUM", "open") in {(r, st) for r, st, _ in seqs[0]}
