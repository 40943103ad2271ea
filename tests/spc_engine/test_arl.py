"""Average run lengths: Markov-chain values and seeded vectorised Monte Carlo vs published ARLs.

Published values (Montgomery, Introduction to SQC, tables 9.3 and 9.11; Lucas & Saccucci 1990):
Shewhart 3 sigma 370.4 / 43.9 at a 1 sigma shift; two-sided CUSUM k = 0.5, h = 5: 465 / 10.4;
EWMA lambda = 0.1, L = 2.814: 500 / 10.3.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
import pytest

from llmscope.spc_engine import arl
from llmscope.spc_engine.chart import MetricChart
from llmscope.spc_engine.config import (
    DEFAULT_CUSUM_H,
    DEFAULT_CUSUM_K,
    DEFAULT_EWMA_L,
    DEFAULT_EWMA_LAMBDA,
    ChartConfig,
    CusumConfig,
    EwmaConfig,
    SpikeConfig,
)
from llmscope.spc_engine.rules import RulesConfig

Arr = npt.NDArray[np.float64]
Step = Callable[[Arr, Arr], tuple[Arr, npt.NDArray[np.bool_]]]


def simulate(step: Step, n_stats: int, shift: float, reps: int, seed: int, max_n: int = 20_000) -> Arr:
    """Run lengths of ``reps`` independent charts, all advanced together one point at a time."""
    rng = np.random.default_rng(seed)
    state = np.zeros((n_stats, reps))
    rl = np.full(reps, float(max_n))
    alive = np.arange(reps)
    for t in range(1, max_n + 1):
        z = rng.standard_normal(alive.size) + shift
        state_alive, signal = step(state[:, alive], z)
        state[:, alive] = state_alive
        rl[alive[signal]] = t
        alive = alive[~signal]
        if alive.size == 0:
            break
    return rl


def cusum_step(k: float, h: float) -> Step:
    def step(s: Arr, z: Arr) -> tuple[Arr, npt.NDArray[np.bool_]]:
        up = np.maximum(0.0, s[0] + z - k)
        dn = np.maximum(0.0, s[1] - z - k)
        return np.vstack([up, dn]), (up > h) | (dn > h)

    return step


def ewma_step(lam: float, limit: float) -> Step:
    bound = limit * math.sqrt(lam / (2 - lam))

    def step(s: Arr, z: Arr) -> tuple[Arr, npt.NDArray[np.bool_]]:
        e = (1 - lam) * s[0] + lam * z
        return e[None, :], np.abs(e) > bound

    return step


def test_shewhart_exact_and_monte_carlo() -> None:
    assert arl.shewhart_arl(3.0) == pytest.approx(370.4, abs=0.1)
    assert arl.shewhart_arl(3.0, 1.0) == pytest.approx(43.9, abs=0.1)

    def step(s: Arr, z: Arr) -> tuple[Arr, npt.NDArray[np.bool_]]:
        return s, np.abs(z) > 3.0

    assert simulate(step, 1, 0.0, 20_000, 11).mean() == pytest.approx(370.4, rel=0.03)
    assert simulate(step, 1, 1.0, 20_000, 16).mean() == pytest.approx(43.9, rel=0.03)


def test_cusum_markov_chain_and_monte_carlo() -> None:
    assert arl.cusum_arl(0.5, 5.0) == pytest.approx(465, rel=0.002)
    assert arl.cusum_arl(0.5, 5.0, 1.0) == pytest.approx(10.4, abs=0.05)
    assert simulate(cusum_step(0.5, 5.0), 2, 0.0, 4000, 12).mean() == pytest.approx(465, rel=0.05)
    assert simulate(cusum_step(0.5, 5.0), 2, 1.0, 4000, 13).mean() == pytest.approx(10.4, rel=0.03)


def test_ewma_markov_chain_and_monte_carlo() -> None:
    assert arl.ewma_arl(0.1, 2.814) == pytest.approx(500, rel=0.005)
    assert arl.ewma_arl(0.1, 2.814, 1.0) == pytest.approx(10.3, abs=0.05)
    assert simulate(ewma_step(0.1, 2.814), 1, 0.0, 4000, 14).mean() == pytest.approx(500, rel=0.05)
    assert simulate(ewma_step(0.1, 2.814), 1, 1.0, 4000, 15).mean() == pytest.approx(10.3, rel=0.03)


def test_a_wrong_limit_is_caught() -> None:
    # The tolerances above can fail: h = 4.5 is 30% off the published 465.
    assert arl.cusum_arl(0.5, 4.5) != pytest.approx(465, rel=0.05)
    assert simulate(cusum_step(0.5, 4.5), 2, 0.0, 4000, 12).mean() != pytest.approx(465, rel=0.05)


def test_default_thresholds_come_from_their_target_run_lengths() -> None:
    for k, h in zip(DEFAULT_CUSUM_K, DEFAULT_CUSUM_H, strict=True):
        assert arl.cusum_arl_one_sided(k, h, m=200) == pytest.approx(1e6, rel=0.01)  # only one side pages
        assert arl.cusum_h_for_arl0(k, 1e6, sides=1) == pytest.approx(h, abs=0.01)
    assert arl.ewma_arl(DEFAULT_EWMA_LAMBDA, DEFAULT_EWMA_L, m=201) == pytest.approx(2e4, rel=0.01)
    assert arl.cusum_h_for_arl0(0.5, 465.4) == pytest.approx(5.0, abs=0.01)
    assert arl.ewma_limit_for_arl0(0.1, 500.0) == pytest.approx(2.814, abs=0.005)


def test_run_length_quantiles() -> None:
    # At a 3 sigma shift, k = 0.5, h = 5 signals on point 2 when z1 + z2 - 1 > 5.
    assert arl.cusum_run_length_quantile(0.5, 5.0, 3.0) == 2  # P(z1 + z2 > 6) = 1/2
    assert arl.ewma_run_length_quantile(0.1, 2.814, 1.0) == pytest.approx(9, abs=1)
    assert arl.combined_arl(100.0, 100.0) == 50.0
    assert arl.combined_arl(math.inf) == math.inf


def engine_run_lengths(config: ChartConfig, shift: float, runs: int, seed: int) -> Arr:
    """Points until the first signal of each of ``runs`` fresh MetricCharts fed N(shift, 1)."""
    rng = np.random.default_rng(seed)
    points: Iterator[float] = iter(())
    out = np.empty(runs)
    for i in range(runs):
        chart = MetricChart(config)
        n = 0
        while True:
            x = next(points, None)
            if x is None:
                points = iter((rng.standard_normal(100_000) + shift).tolist())
                continue
            n += 1
            if signals := chart.update(x):
                assert [(s.rule, s.state) for s in signals] == [("R1", "open")]
                break
        out[i] = n
    return out


def test_the_engine_individuals_chart_has_the_published_run_lengths() -> None:
    # The service's own streaming objects (MetricChart over IndividualsChart and the Nelson
    # rules), not a numpy model of them: known centre and sigma (no baseline), test 1 only.
    config = ChartConfig(
        transform="none",
        center=0.0,
        sigma=1.0,
        rules=RulesConfig().only({1}),
        spike=SpikeConfig(enabled=False),
        ewma=EwmaConfig(enabled=False),
        cusum=CusumConfig(enabled=False),
    )
    for shift, published, runs, seed in ((0.0, 370.4, 2000, 21), (1.0, 43.9, 2000, 22)):
        # Run lengths are geometric: sd = sqrt(1 - p) / p. Four standard errors of the mean of
        # `runs` of them (+-9% in control, +-9% at 1 sigma) fail a correct chart once in 15,000
        # seeds; a 2.9 or 3.1 sigma limit (ARL 268 or 517) is far outside.
        p = 1.0 / published
        tolerance = 4.0 * math.sqrt(1.0 - p) / p / math.sqrt(runs)
        assert engine_run_lengths(config, shift, runs, seed).mean() == pytest.approx(published, abs=tolerance)
