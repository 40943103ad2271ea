"""The vectorised mirror the benchmark measures is the streaming chart: same data, same episodes."""

from __future__ import annotations

import numpy as np
import pytest

from llmscope.spc_engine import performance as perf
from llmscope.spc_engine.chart import MetricChart
from llmscope.spc_engine.config import default_config


def _streaming_critical(baseline: np.ndarray, after: np.ndarray) -> tuple[list[int], list[int]]:
    cfg = default_config("latency_ms")
    chart = MetricChart(cfg, key="mirror")
    opens: list[int] = []
    clears: list[int] = []
    for i, v in enumerate(np.exp(np.concatenate([baseline, after]))):
        for sig in chart.update(float(v), point_id=str(i)):
            if sig.severity == "critical" and not sig.better:
                (opens if sig.state == "open" else clears).append(i - baseline.size + 1)
    assert chart.armed
    return opens, clears


@pytest.mark.parametrize(
    ("process", "shifts"),
    [
        (perf.Process("iid", sigma_log=0.3), (0.0, 1.5, 0.0)),
        (perf.Process("ar", phi=0.5), (0.0, 0.75, 3.0, 0.0)),
        (perf.Process("outliers", sigma_log=0.2, outliers=0.08, slow=(4.0, 30.0)), (0.0, 0.0, 2.0)),
        (perf.Process("both", phi=0.3, outliers=0.03), (0.0, 5.0, 0.0, 1.0)),
    ],
)
def test_vectorised_mirror_gives_the_streaming_charts_episodes(
    process: perf.Process, shifts: tuple[float, ...]
) -> None:
    rng = np.random.default_rng(11)
    stream = perf.Stream(rng, process, 6)
    base = stream.take(default_config("latency_ms").baseline_n)
    after = np.concatenate([stream.take(300, s) for s in shifts], axis=1)
    charts = perf.charts_from(base)
    mirror = perf.run_critical(after, charts)
    total = 0
    for i in range(base.shape[0]):
        opens, clears = _streaming_critical(base[i], after[i])
        assert mirror.opens[i] == len(opens)
        assert mirror.clears[i] == len(clears)
        assert mirror.first[i] == (opens[0] if opens else after.shape[1] + 1)
        total += len(opens)
    assert total > 0  # the data do signal, so the comparison compares something
