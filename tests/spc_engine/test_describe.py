"""A signal in words: every rule says "over"/"under" the baseline, as the alerter's own lines do."""

from __future__ import annotations

import numpy as np

from llmscope.spc_engine.chart import MetricChart
from llmscope.spc_engine.config import ChartConfig
from llmscope.spc_engine.describe import describe_signal
from llmscope.spc_engine.rules import RulesConfig


def opened_after(value: float, rules: set[str]) -> list[str]:
    chart = MetricChart(ChartConfig(baseline_n=20, rules=RulesConfig().only({1})), key="c")
    rng = np.random.default_rng(32)
    for v in np.exp(6 + 0.2 * rng.standard_normal(20)):
        chart.update(float(v))
    signals = chart.update(value)
    assert {s.rule for s in signals} >= rules
    return [describe_signal("latency_ms", s) for s in signals]


def test_a_rise_reads_over_the_baseline_for_spike_and_r1_alike() -> None:
    texts = opened_after(float(np.exp(7.5)), {"SPIKE", "R1"})
    assert all("% over the " in t and " ms baseline" in t for t in texts), texts
    assert not any("against" in t for t in texts), texts


def test_a_drop_reads_under_the_baseline() -> None:
    texts = opened_after(float(np.exp(4.5)), {"R1"})
    assert all("% under the " in t for t in texts), texts
