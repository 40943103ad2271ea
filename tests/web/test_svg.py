"""The server-side control chart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from llmscope.web.data import ChartData, ChartPhase, ChartPoint, ChartQuery, Limits, ViolationMark
from llmscope.web.svg import render_chart

END = datetime(2026, 1, 1, 12, tzinfo=UTC)


def chart(limits: Limits | None, bucket_s: int = 0, phase: ChartPhase = "armed") -> ChartData:
    points = [ChartPoint(ts=END - timedelta(seconds=2 * i), value=100 + i % 5) for i in range(50)]
    if bucket_s:
        points = [ChartPoint(ts=p.ts, value=p.value, n=4, lo=p.value - 3, hi=p.value + 3) for p in points]
    return ChartData(
        query=ChartQuery("ollama", "llama3.1:8b", "p<1>"),
        start=END - timedelta(hours=1),
        end=END,
        bucket_s=bucket_s,
        points=points,
        limits=limits,
        phase=phase if limits is not None else "collecting",
        progress=7,
        baseline_n=100,
        violations=[ViolationMark("v&1", END - timedelta(seconds=10), 130.0, "R1", "critical", "open")],
    )


LIMITS = Limits(
    center=102,
    ucl=110,
    lcl=95,
    zone_a_upper=107,
    zone_a_lower=97,
    zone_b_upper=104,
    zone_b_lower=99,
    sigma=0.02,
    transform="log",
)


def test_armed_chart_draws_limits_zones_points_and_violations() -> None:
    svg = str(render_chart(chart(LIMITS)))
    assert svg.startswith("<svg")
    assert svg.endswith("</svg>")
    assert "UCL 110" in svg
    assert "LCL 95.0" in svg
    assert "CL 102" in svg
    assert svg.count('class="zone"') == 4
    assert svg.count('class="point') == 50
    assert 'class="violation critical"' in svg
    assert 'href="/violations/v&amp;1"' in svg  # ids and labels are escaped
    assert "p&lt;1&gt;" in svg
    assert "collecting baseline" not in svg


def test_chart_without_limits_says_it_is_collecting() -> None:
    svg = str(render_chart(chart(None)))
    assert "collecting baseline 7/100" in svg
    assert "UCL" not in svg
    data = chart(None)
    unknown = ChartData(**{**{f: getattr(data, f) for f in data.__dataclass_fields__}, "phase": "unknown"})
    svg = str(render_chart(unknown))
    assert "waiting for the SPC engine" in svg
    assert "collecting baseline" not in svg


def test_bucketed_chart_draws_a_min_max_band() -> None:
    svg = str(render_chart(chart(LIMITS, bucket_s=60)))
    assert 'class="band"' in svg


def test_empty_chart() -> None:
    data = chart(None)
    empty = ChartData(**{**{f: getattr(data, f) for f in data.__dataclass_fields__}, "points": []})
    assert "no successful probes" in str(render_chart(empty))
