"""Availability: runs of failed probes and an error rate far above baseline."""

from __future__ import annotations

import msgspec

from llmscope.spc_engine.availability import (
    AvailabilityChart,
    AvailabilityConfig,
    AvailabilityState,
    binomial_threshold,
)


def test_binomial_threshold() -> None:
    assert binomial_threshold(50, 0.01, 1e-6) == 7  # P(X >= 6) = 1.1e-5, P(X >= 7) = 6.9e-7
    assert binomial_threshold(10, 0.5, 1.0) == 0


def test_failure_run_opens_once_and_clears() -> None:
    chart = AvailabilityChart(AvailabilityConfig(baseline_n=10, clear_after=2))
    outcomes = [False] * 10 + [True] * 6 + [False] * 3
    got = [(i, s.rule, s.state) for i, f in enumerate(outcomes) for s in chart.update(f)]
    assert got == [(12, "AVAILABILITY", "open"), (17, "AVAILABILITY", "cleared")]


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
