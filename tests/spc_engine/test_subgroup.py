"""Subgroup charts of traffic minutes (pure): baseline estimates against simulation, limits that
depend on n, the exact binomial tail, signals and clears, and state that survives a dump."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pytest

from llmscope.spc_engine.subgroup import (
    Point,
    SubgroupChart,
    SubgroupConfig,
    SubgroupState,
    binomial_upper,
    center_at,
    fit_baseline,
    score,
    variance,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def pt(i: int, v: float, n: int, a: float = 0.0) -> Point:
    return Point(id=f"m{i}", ts=T0 + timedelta(minutes=i), v=v, n=n, a=a)


@pytest.mark.parametrize(("x", "n", "p"), [(0, 10, 0.01), (2, 10, 0.01), (5, 40, 0.1), (30, 600, 0.02)])
def test_binomial_tail_matches_the_sum_of_the_pmf(x: int, n: int, p: float) -> None:
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    assert binomial_upper(x, n, p) == pytest.approx(sum(pmf[x + 1 :]) + pmf[x] / 2, rel=1e-9)


def test_components_recover_the_between_minute_variance() -> None:
    rng = np.random.default_rng(3)
    a, tau = 0.25, 0.05
    ns = rng.integers(10, 2000, 3000)
    v = 3.0 + rng.normal(0, tau, len(ns)) + rng.normal(0, np.sqrt(a / ns))
    cfg = SubgroupConfig(kind="quantile", baseline_minutes=len(ns))
    b = fit_baseline(cfg, [pt(i, float(x), int(n), a) for i, (x, n) in enumerate(zip(v, ns, strict=True))])
    assert b.center == pytest.approx(3.0, abs=0.01)
    assert b.tau2 == pytest.approx(tau**2, rel=0.15)
    # The limits narrow with n, but never below the minute-to-minute variation.
    assert variance(b, 10) > variance(b, 100) > variance(b, 10_000) > tau**2 * 0.8


def test_the_load_adjustment_removes_the_part_of_the_between_minute_variance_the_load_explains() -> None:
    rng = np.random.default_rng(5)
    a, tau, slope = 0.25, 0.04, 0.2
    ns = rng.integers(20, 2000, 3000)
    x = ns / ns.mean()
    v = 3.0 + slope * (x - 1.0) + rng.normal(0, tau, len(ns)) + rng.normal(0, np.sqrt(a / ns))
    points = [pt(i, float(y), int(n), a) for i, (y, n) in enumerate(zip(v, ns, strict=True))]
    plain = fit_baseline(SubgroupConfig(baseline_minutes=len(ns), load_adjust=False), points)
    b = fit_baseline(SubgroupConfig(baseline_minutes=len(ns)), points)
    assert plain.load_slope == 0.0
    assert plain.tau2 > 3 * tau**2  # the load's share is counted as noise without the adjustment
    assert b.load_slope == pytest.approx(slope, rel=0.1)
    assert b.tau2 == pytest.approx(tau**2, rel=0.15)
    assert center_at(b, int(ns.mean())) == pytest.approx(3.0, abs=0.01)
    # The center follows the load, but not beyond the loads the baseline saw.
    assert center_at(b, 1000 * int(ns.max())) == center_at(b, int(ns.max()))
    assert center_at(b, int(ns.max())) > center_at(b, int(ns.mean())) > center_at(b, int(ns.min()))
    # A quiet hour's slowdown, within the between-minute spread unadjusted, is a signal adjusted.
    busy, quiet = int(ns.max() * 0.9), 200
    shifted = center_at(b, quiet) + 0.3
    assert (
        score(SubgroupConfig(), b, shifted, quiet)[0]
        > 4.5
        > score(SubgroupConfig(), plain, shifted, quiet)[0]
    )
    assert score(SubgroupConfig(), b, center_at(b, busy), busy)[0] == pytest.approx(0.0, abs=1e-9)


def test_a_load_that_explains_little_is_not_adjusted_for() -> None:
    rng = np.random.default_rng(6)
    ns = rng.integers(20, 2000, 3000)
    v = 3.0 + 0.01 * (ns / ns.mean() - 1.0) + rng.normal(0, 0.05, len(ns))
    b = fit_baseline(
        SubgroupConfig(baseline_minutes=len(ns)),
        [pt(i, float(y), int(n), 0.25) for i, (y, n) in enumerate(zip(v, ns, strict=True))],
    )
    assert b.load_slope == 0.0
    assert center_at(b, 10_000) == b.center


def test_the_error_rate_is_not_load_adjusted() -> None:
    ns = np.arange(100, 1100)
    v = 0.01 + 0.01 * (ns / ns.mean() - 1.0)
    b = fit_baseline(
        SubgroupConfig(kind="p", baseline_minutes=len(ns)),
        [pt(i, float(y), int(n)) for i, (y, n) in enumerate(zip(v, ns, strict=True))],
    )
    assert b.load_slope == 0.0


def test_laney_scales_one_factor_that_does_not_depend_on_n() -> None:
    rng = np.random.default_rng(4)
    n = 400
    v = 0.02 + rng.normal(0, 0.01, 500) + rng.normal(0, math.sqrt(0.02 * 0.98 / n), 500)
    cfg = SubgroupConfig(kind="p", variance="laney", estimator="sd", baseline_minutes=500)
    b = fit_baseline(cfg, [pt(i, float(max(x, 0.0)), n) for i, x in enumerate(v)])
    assert b.tau2 == 0.0
    assert b.sigma_z > 1.5  # overdispersed: wider than the binomial
    assert variance(b, 4 * n) == pytest.approx(variance(b, n) / 4)


def test_two_errors_in_ten_requests_at_a_one_percent_rate_are_not_a_signal() -> None:
    cfg = SubgroupConfig(kind="p", baseline_minutes=5)
    b = fit_baseline(cfg, [pt(i, 0.01, 1000) for i in range(5)])
    z_small, _ = score(cfg, b, 0.2, 10)
    assert z_small < 3.0  # P(X >= 2 | 10, 1 %) = 0.4 %: rare, not a page
    z_big, _ = score(cfg, b, 0.2, 100)
    assert z_big > 8.0


def armed(cfg: SubgroupConfig, rng: np.random.Generator) -> SubgroupChart:
    chart = SubgroupChart(cfg)
    for i in range(cfg.baseline_minutes):
        assert chart.update(pt(i, float(rng.normal(0, 0.1)), 100, 1.0)) == []
    assert chart.armed
    return chart


def test_a_shift_opens_one_episode_that_clears_after_quiet_minutes() -> None:
    cfg = SubgroupConfig(kind="quantile", baseline_minutes=200, clear_after=3)
    rng = np.random.default_rng(5)
    chart = armed(cfg, rng)
    signals = []
    values = [0.0] * 5 + [1.0] * 10 + [0.0] * 5
    for i, v in enumerate(values, start=1000):
        signals += [(i, s.state) for s in chart.update(pt(i, v, 100, 1.0))]
    assert signals == [(1005, "open"), (1017, "cleared")]


def test_a_minute_below_the_minimum_is_not_a_point() -> None:
    cfg = SubgroupConfig(kind="quantile", baseline_minutes=200, min_requests=10)
    chart = armed(cfg, np.random.default_rng(6))
    assert chart.update(pt(999, 50.0, 9, 1.0)) == []
    assert chart.state.skipped == 1
    (sig,) = chart.update(pt(1000, 50.0, 10, 1.0))
    assert sig.state == "open"


def test_two_minutes_in_a_row_beyond_k_run_open_an_episode() -> None:
    cfg = SubgroupConfig(kind="quantile", baseline_minutes=200, k=4.5, k_run=3.5)
    chart = armed(cfg, np.random.default_rng(7))
    b = chart.state.baseline
    assert b is not None
    sd = math.sqrt(variance(b, 100))
    assert chart.update(pt(1000, b.center + 4.0 * sd, 100, 1.0)) == []
    (sig,) = chart.update(pt(1001, b.center + 4.0 * sd, 100, 1.0))
    assert sig.state == "open"
    assert "two minutes in a row" in sig.rule_name


def test_the_state_survives_a_dump_at_every_step() -> None:
    cfg = SubgroupConfig(kind="p", baseline_minutes=30)
    rng = np.random.default_rng(8)
    straight = SubgroupChart(cfg)
    restored = SubgroupChart(cfg)
    for i in range(120):
        n = int(rng.integers(5, 200))
        p = 0.01 if i < 80 else 0.2
        point = pt(i, float(rng.binomial(n, p)) / n, n)
        a = straight.update(point)
        state = msgspec.json.decode(msgspec.json.encode(restored.state), type=SubgroupState)
        restored = SubgroupChart(cfg, state)
        assert restored.update(point) == a
    assert straight.state == restored.state
    assert straight.state.episode is not None
