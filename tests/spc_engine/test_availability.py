"""Availability: runs of failed probes and an error rate far above baseline."""

from __future__ import annotations

import msgspec
import pytest

from llmscope.spc_engine.availability import (
    AvailabilityChart,
    AvailabilityConfig,
    AvailabilityState,
    binomial_threshold,
    run_needed,
    run_wait,
)


def test_binomial_threshold() -> None:
    assert binomial_threshold(50, 0.01, 1e-6) == 7  # P(X >= 6) = 1.1e-5, P(X >= 7) = 6.9e-7
    assert binomial_threshold(10, 0.5, 1.0) == 0


def test_failure_run_opens_once_and_clears() -> None:
    chart = AvailabilityChart(AvailabilityConfig(baseline_n=200, clear_after=2))
    outcomes = [False] * 200 + [True] * 6 + [False] * 3
    got = [(i, s.rule, s.state) for i, f in enumerate(outcomes) for s in chart.update(f)]
    assert got == [(202, "AVAILABILITY", "open"), (207, "AVAILABILITY", "cleared")]


def test_error_rate_above_baseline() -> None:
    cfg = AvailabilityConfig(baseline_n=100, window=50, fail_run=100)
    chart = AvailabilityChart(cfg)
    signals = []
    for i in range(400):
        failed = (i % 20 == 0) if i < 300 else (i % 3 == 0)  # 5% then 33%
        signals += [(i, s.rule, s.state) for s in chart.update(failed)]
    assert signals
    assert signals[0][1:] == ("ERROR_RATE", "open")
    assert signals[0][0] > 300
    state = msgspec.json.decode(msgspec.json.encode(chart.state), type=AvailabilityState)
    assert state == chart.state


def test_the_failure_run_that_pages_grows_with_a_flaky_baseline() -> None:
    # Expected probes until r failures in a row at failure rate p: (1 - p^r) / ((1 - p) p^r).
    assert run_wait(0.01, 3) == pytest.approx((1 - 1e-6) / (0.99 * 1e-6))
    assert [run_needed(p, 1e6, 3) for p in (0.001, 0.01, 0.02, 0.05, 0.2)] == [3, 3, 4, 5, 9]
    for p in (0.01, 0.02, 0.05, 0.2):
        r = run_needed(p, 1e6, 3)
        assert run_wait(p, r) >= 1e6
        assert r == 3 or run_wait(p, r - 1) < 1e6

    # 5 % of the baseline probes fail: three in a row no longer pages, five do.
    chart = AvailabilityChart(AvailabilityConfig(baseline_n=100, clear_after=2))
    baseline = [i % 20 == 0 for i in range(100)]
    assert [s for f in baseline for s in chart.update(f)] == []
    assert chart.state.rate == pytest.approx(6 / 102)  # estimated as (failures + 1) / (n + 2)
    assert chart.fail_run == run_needed(6 / 102, 1e6, 3) == 5
    got = [(i, s.rule, s.rule_name) for i, f in enumerate([True] * 6) for s in chart.update(f)]
    assert got == [(4, "AVAILABILITY", "5 failed probes in a row")]
