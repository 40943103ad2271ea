"""The default configuration meets issue 3's targets for ``critical`` signals.

On in-control lognormal latency (sigma of log latency 0.2 to 0.6) with parameters estimated
from the default baseline: at most one critical signal per 100,000 probes on average; a
sustained shift of 0.5 / 1 / 2 sigma (log scale) signalled within a median of 100 / 25 / 8
probes; a single point beyond ~5 sigma at once. The simulation lives in
``llmscope.spc_engine.performance``, which ``bench/spc_bench.py`` runs too.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmscope.spc_engine import performance
from llmscope.spc_engine.config import default_config
from llmscope.spc_engine.engine import critical_arl0
from llmscope.spc_engine.performance import DETECTION_TARGETS, armed_chart


@pytest.mark.parametrize("sigma_log", [0.2, 0.6])
def test_in_control_false_alarm_rate_with_estimated_parameters(sigma_log: float) -> None:
    rng = np.random.default_rng(int(sigma_log * 10))
    # Semi-analytic: the exact (Markov chain) rate of 200 estimated charts, averaged; then
    # direct: 2,000 estimated charts x 5,000 probes = 1e7 in-control probes.
    got = performance.false_alarms(rng, sigma_log, charts=2000, probes_per_chart=5000, markov_charts=200)
    assert 100_000 / got.per_100k_markov > 110_000
    assert got.signals <= 100, f"{got.signals} critical signals in {got.probes} in-control probes"


def test_detection_medians_with_estimated_parameters() -> None:
    medians = performance.detection_medians(np.random.default_rng(21), sigma_log=0.3, charts=2000)
    for shift, bound in DETECTION_TARGETS:
        assert medians[shift] <= bound, medians
    assert medians[0.5] > medians[1.0] > medians[2.0]


def test_a_single_five_sigma_point_is_critical_at_once() -> None:
    chart = armed_chart(np.random.default_rng(22), 0.3)
    b = chart.state.baseline
    assert b is not None
    spike = float(np.exp(b.center + 5.3 * b.sigma))
    signals = chart.update(spike, point_id="spike")
    critical = [s for s in signals if s.severity == "critical"]
    assert [s.rule for s in critical] == ["SPIKE"]
    assert critical[0].point_id == "spike"
    assert critical[0].deviation_sigma == pytest.approx(5.3)


def test_spike_counting_agrees_with_the_streaming_chart() -> None:
    rng = np.random.default_rng(24)
    assert performance.spike_caught_at_once(rng, charts=3, k=5.3) == 3
    assert performance.spike_caught_at_once(rng, charts=3, k=4.5) == 0


def test_sigma_of_log_latency_does_not_change_what_is_signalled() -> None:
    seqs = []
    for sigma_log in (0.2, 0.4, 0.6):
        rng = np.random.default_rng(23)
        chart = armed_chart(rng, sigma_log)
        z = rng.standard_normal(3000)
        z[2000:] += 1.0
        out = []
        for i, v in enumerate(np.exp(6.0 + sigma_log * z)):
            out += [(s.rule, s.state, s.index) for s in chart.update(float(v), point_id=str(i))]
        seqs.append(out)
    assert seqs[0] == seqs[1] == seqs[2]
    assert ("CUSUM", "open") in {(r, st) for r, st, _ in seqs[0]}


def test_only_total_latency_pages_by_default() -> None:
    """One paging chart per probe: TTFT and tokens/s run the same detectors one step lower."""
    latency = default_config("latency_ms")
    assert (latency.cusum.severity, latency.spike.severity) == ("critical", "critical")
    assert critical_arl0(latency) is not None
    for metric in ("ttft_ms", "tokens_per_s"):
        config = default_config(metric)
        assert (config.cusum.severity, config.spike.severity) == ("warning", "warning")
        assert (config.cusum.k, config.cusum.h, config.spike.k) == (
            latency.cusum.k,
            latency.cusum.h,
            latency.spike.k,
        )
        assert critical_arl0(config) is None
