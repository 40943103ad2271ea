"""MetricChart: baseline phase, frozen limits in metric units, episodes, snapshots, rotation."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from llmscope.spc_engine.chart import ChartState, MetricChart
from llmscope.spc_engine.config import ChartConfig, CusumConfig, EwmaConfig, default_config
from llmscope.spc_engine.rules import RulesConfig

SMALL = ChartConfig(baseline_n=50, cusum=CusumConfig(k=(0.5,), h=(5.0,)))


def test_collects_a_baseline_then_freezes_asymmetric_limits_in_ms() -> None:
    rng = np.random.default_rng(30)
    chart = MetricChart(SMALL, key="c")
    for i, v in enumerate(np.exp(6 + 0.3 * rng.standard_normal(49))):
        chart.update(float(v), point_id=str(i))
    assert not chart.armed
    assert chart.progress == (49, 50)
    assert chart.limits() is None
    chart.update(400.0, point_id="49")
    lim = chart.limits()
    b = chart.state.baseline
    assert lim is not None
    assert b is not None
    assert b.first_index == 0
    assert b.last_index == 49
    assert b.n + b.n_excluded == 50
    assert lim.center == pytest.approx(math.exp(b.center))
    assert lim.ucl == pytest.approx(math.exp(b.center + 3 * b.sigma))
    assert lim.ucl - lim.center > lim.center - lim.lcl > 0  # asymmetric, never below zero
    assert lim.zone_b_lower < lim.center < lim.zone_b_upper < lim.zone_a_upper < lim.ucl


def test_episode_opens_once_and_clears_after_quiet_points() -> None:
    chart = MetricChart(
        ChartConfig(
            center=100.0,
            sigma=0.1,
            rules=RulesConfig().only({1}),
            ewma=EwmaConfig(enabled=False),
            cusum=CusumConfig(enabled=False),
            clear_after=3,
        ),
        key="c",
    )
    values = [100.0, 150.0, 160.0, 100.0, 100.0, 150.0, 100.0, 100.0, 100.0, 100.0]
    got = [(s.rule, s.state, s.index) for i, v in enumerate(values) for s in chart.update(v, str(i))]
    # 150 ms is 4.05 sigma on the log scale: test 1 only; 160 is 4.7 sigma.
    assert got == [("R1", "open", 1), ("R1", "cleared", 8)]
    assert chart.state.baseline is not None
    assert chart.state.baseline.known


def test_open_signal_carries_the_points_that_formed_the_pattern() -> None:
    cfg = ChartConfig(
        transform="none",
        center=0.0,
        sigma=1.0,
        rules=RulesConfig().only({2}),
        ewma=EwmaConfig(enabled=False),
        cusum=CusumConfig(enabled=False),
    )
    chart = MetricChart(cfg)
    signals = []
    for i, v in enumerate([0.5] * 12):
        signals += chart.update(v, point_id=f"p{i}")
    (sig,) = signals
    assert sig.rule == "R2"
    assert sig.index == 8
    assert sig.severity == "info"
    assert [p.id for p in sig.points] == [f"p{i}" for i in range(9)]
    assert sig.episode_point_id == "p8"


def test_snapshot_at_every_prefix_continues_identically() -> None:
    rng = np.random.default_rng(31)
    x = np.exp(6 + 0.3 * rng.standard_normal(300))
    x[150:] *= 1.5
    reference = MetricChart(SMALL, key="c")
    expected = [reference.update(float(v), str(i)) for i, v in enumerate(x)]
    assert any(expected)
    chart = MetricChart(SMALL, key="c")
    for i, v in enumerate(x):
        blob = msgspec.json.encode(chart.state)
        state = msgspec.json.decode(blob, type=ChartState)
        assert state == chart.state
        chart = MetricChart(SMALL, key="c", state=state)
        assert chart.update(float(v), str(i)) == expected[i]


def test_failed_or_unchartable_values_are_not_points() -> None:
    chart = MetricChart(SMALL)
    assert chart.update(0.0) == []
    assert chart.update(math.nan) == []
    assert chart.state.n_points == 0
    assert chart.state.n_rejected == 2


def test_rebaseline_clears_open_episodes_and_records_who_and_why() -> None:
    chart = MetricChart(ChartConfig(baseline_n=20, rules=RulesConfig().only({1})), key="c")
    rng = np.random.default_rng(32)
    for v in np.exp(6 + 0.2 * rng.standard_normal(20)):
        chart.update(float(v))
    opened = chart.update(float(np.exp(9.0)))
    assert {s.rule for s in opened} >= {"SPIKE", "R1"}
    cleared = chart.rebaseline("alice", "new GPU")
    assert sorted(s.rule for s in cleared) == sorted(s.rule for s in opened)
    assert all(s.state == "cleared" for s in cleared)
    assert not chart.armed
    for v in np.exp(7 + 0.2 * rng.standard_normal(20)):
        chart.update(float(v))
    b = chart.state.baseline
    assert b is not None
    assert b.created_by == "alice"
    assert b.reason == "new GPU"
    assert b.number == 1
    assert b.center == pytest.approx(7.0, abs=0.15)


def test_rotating_prompts_on_separate_charts_neither_inflate_sigma_nor_trip_rules() -> None:
    """The prober rotates simple / medium / complex prompts with very different latencies."""
    rng = np.random.default_rng(33)
    levels = {"simple": 300.0, "medium": 1500.0, "complex": 6000.0}
    sigma_log = 0.3
    n = 3000
    cfg = default_config()
    stream = [
        (prompt, levels[prompt] * math.exp(sigma_log * rng.standard_normal()))
        for _ in range(n)
        for prompt in levels
    ]
    per_prompt = {p: MetricChart(cfg, key=p) for p in levels}
    alone = {p: MetricChart(cfg, key=p) for p in levels}
    pooled = MetricChart(cfg, key="pooled")
    got: dict[str, list[tuple[str, int]]] = {p: [] for p in levels}
    for prompt, v in stream:
        got[prompt] += [(s.rule, s.index) for s in per_prompt[prompt].update(v)]
        pooled.update(v)
    for prompt in levels:
        # Interleaving changes nothing: each prompt's chart sees exactly its own series.
        series = [v for p, v in stream if p == prompt]
        assert got[prompt] == [(s.rule, s.index) for v in series for s in alone[prompt].update(v)]
        b = per_prompt[prompt].state.baseline
        assert b is not None
        assert b.sigma == pytest.approx(sigma_log, rel=0.08)
        assert not [r for r, _ in got[prompt] if r in ("SPIKE", "CUSUM")]
    # Pooling prompts is what the separate charts avoid: sigma several times too large.
    pb = pooled.state.baseline
    assert pb is not None
    assert pb.sigma > 3 * sigma_log
