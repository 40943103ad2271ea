"""The server-side control chart."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from llmscope.web.data import ChartData, ChartPhase, ChartPoint, ChartQuery, Limits, Sparkline, ViolationMark
from llmscope.web.svg import LABEL_GAP, PAD_L, PAD_R, WIDTH, render_chart, render_sparkline, time_range
from llmscope.web.trend_svg import render_availability
from llmscope.web.trends import AvailabilityBucket, AvailabilityHistory, AvailabilityLine

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


def _xs(svg: str, cls: str) -> list[float]:
    return [float(x) for x in re.findall(rf'<circle cx="([\d.]+)" cy="[\d.]+" r="[\d.]+" class="{cls}"', svg)]


def test_a_fresh_chart_spans_the_plot_from_its_first_point() -> None:
    # 50 probes over the last 100 s of a 24 h window: before, they filled the right 0.1 %.
    data = replace(chart(LIMITS), start=END - timedelta(hours=24))
    xs = _xs(str(render_chart(data)), "point")
    assert len(xs) == 50
    assert min(xs) == PAD_L
    assert max(xs) == WIDTH - PAD_R
    # The axis starts at the first probe (11:58:22): round times from there, not from 24 h ago.
    assert ">11:58:30</text>" in str(render_chart(data))
    assert ">11:58:15</text>" not in str(render_chart(data))


def test_y_axis_names_the_metric_and_its_unit() -> None:
    assert ">latency (ms), log-scale limits</text>" in str(render_chart(chart(LIMITS)))
    tps = replace(chart(None), query=ChartQuery("ollama", "llama3.1:8b", "p1", "tokens_per_s"))
    assert ">tokens/s</text>" in str(render_chart(tps))


def test_line_labels_never_overprint_in_a_large_excursion() -> None:
    # A 50x spike squeezes the zones into a few pixels: the limits keep their labels.
    data = chart(LIMITS)
    spike = [*data.points, ChartPoint(ts=END - timedelta(seconds=1), value=5000.0)]
    svg = str(render_chart(replace(data, points=spike)))
    ys = sorted(float(y) for y in re.findall(r'<text x="[\d.]+" y="([\d.]+)" class="\w+-label"', svg))
    assert ys
    assert all(b - a >= LABEL_GAP for a, b in pairwise(ys))
    assert "UCL 110" in svg
    assert svg.count('class="zone"') == 4  # every line is still drawn
    # With room, every line has its label.
    roomy = str(render_chart(chart(LIMITS)))
    assert roomy.count('class="zone-label"') == 4


def test_sparkline_marks_points_beyond_the_limits() -> None:
    points = [
        ChartPoint(ts=END - timedelta(minutes=60 - i), value=100.0 + (50 if i == 40 else 0))
        for i in range(60)
    ]
    line = Sparkline("ollama", "llama3.1:8b", "p1", "local", "latency_ms", 60, points, LIMITS)
    svg = str(render_sparkline(line, END - timedelta(hours=1), END))
    assert svg.startswith('<svg class="sparkline"')
    assert svg.count('class="limit"') == 2
    assert svg.count('class="center"') == 1
    assert svg.count('class="point out"') == 1  # the 150 ms bucket, above the UCL of 110
    assert svg.count('class="point"') == 1  # and the latest bucket
    empty = str(render_sparkline(replace(line, points=[], limits=None), END - timedelta(hours=1), END))
    assert "no probes" in empty


def test_the_line_breaks_across_an_outage_instead_of_bridging_it() -> None:
    # Probes every 2 s, none for 90 s (an outage: failed probes have no value), then again.
    before = [ChartPoint(ts=END - timedelta(seconds=200 - 2 * i), value=100.0) for i in range(30)]
    after = [ChartPoint(ts=END - timedelta(seconds=50 - 2 * i), value=100.0) for i in range(25)]
    data = replace(chart(LIMITS), points=before + after)
    lines = re.findall(r'<polyline points="([^"]+)" class="series"/>', str(render_chart(data)))
    assert [len(line.split()) for line in lines] == [30, 25]
    # Jitter is no gap: one line.
    steady = replace(chart(LIMITS), points=sorted(before + after[:1], key=lambda p: p.ts)[:30])
    assert str(render_chart(steady)).count('class="series"') == 1


def test_the_availability_chart_under_a_control_chart_shares_its_time_axis() -> None:
    # Probes over the last 3 minutes of an hour; availability buckets from the minute before.
    points = [ChartPoint(ts=END - timedelta(seconds=180 - 2 * i), value=100.0) for i in range(90)]
    data = replace(chart(LIMITS), points=points, violations=[])
    minute = (END - timedelta(seconds=180)).replace(second=0)
    buckets = [AvailabilityBucket(minute + timedelta(minutes=m), 30, 30) for m in range(4)]
    history = AvailabilityHistory(
        "ollama", "llama3.1:8b", 1.0, END - timedelta(hours=1), END, 60, [AvailabilityLine("local", buckets)]
    )

    def ticks(svg: str) -> list[tuple[str, str]]:
        bottom = max(int(y) for y in re.findall(r'<text x="[\d.]+" y="(\d+)" class="tick"', svg))
        return re.findall(rf'<text x="([\d.]+)" y="{bottom}" class="tick"[^>]*>([^<]+)<', svg)

    above = ticks(str(render_chart(data)))
    assert len(above) >= 3
    assert ticks(str(render_availability(history, x_range=time_range(data), pad_r=PAD_R))) == above
    # On a phone too, where both take the compact layout's margins.
    phone = str(render_chart(data, width=380))
    under = str(render_availability(history, width=380, x_range=time_range(data), pad_r=PAD_R))
    assert ticks(under) == ticks(phone)
    assert _plot(under) == _plot(phone)


def _plot(svg: str) -> tuple[float, float]:
    found = re.search(
        r'<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)" height="[\d.]+" class="plot-bg"/>', svg
    )
    assert found is not None
    return float(found[1]), float(found[2])


def test_a_phones_chart_keeps_its_plot_wide_and_its_line_labels_inside() -> None:
    # A laptop's 72 + 96 px of margins left a 380-wide chart a 212-wide plot (190 px on screen).
    svg = str(render_chart(chart(LIMITS), width=380))
    left, width = _plot(svg)
    assert width / 380 >= 0.85
    labels = re.findall(r'<text x="([\d.]+)" y="[\d.]+" class="(\w+)-label inside">(\w+) ', svg)
    assert {(cls, name) for _, cls, name in labels} == {("limit", "UCL"), ("limit", "LCL"), ("center", "CL")}
    assert all(left < float(x) < left + width for x, _, _ in labels)
    assert ">latency (ms), log-scale limits</text>" in svg  # above the plot, not down its side
    assert "rotate(" not in svg
    # The laptop's chart is drawn as before.
    wide = str(render_chart(chart(LIMITS)))
    assert _plot(wide) == (PAD_L, WIDTH - PAD_L - PAD_R)
    assert "inside" not in wide


def test_thousands_read_short_on_a_phones_value_axis() -> None:
    data = replace(chart(LIMITS, bucket_s=60), limits=None)
    data = replace(
        data, points=[replace(p, value=1000 + 100 * i, lo=None, hi=None) for i, p in enumerate(data.points)]
    )
    ticks = re.findall(r'class="tick" text-anchor="end">([^<]+)<', str(render_chart(data, width=380)))
    assert ticks
    assert all(t.endswith("k") or t == "0" for t in ticks if ":" not in t), ticks
    assert "2,000" in re.findall(r'class="tick" text-anchor="end">([^<]+)<', str(render_chart(data)))
