"""The comparison chart of a fresh install: the bucket still filling has its middle after now,
and its point, line and band must stay inside the plot instead of running past its right edge."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from llmscope.web.data import ChartPoint
from llmscope.web.trend_svg import PAD_L, PAD_R, render_comparison
from llmscope.web.trends import ComparedLine, Comparison

WIDTH = 960


def _xs(svg: str, element: str) -> list[float]:
    xs: list[float] = []
    for points in re.findall(rf'<{element} points="([^"]+)"', svg):
        xs += [float(pair.split(",")[0]) for pair in points.split()]
    return xs


def test_the_bucket_still_filling_is_drawn_at_now_not_past_the_plot() -> None:
    end = datetime(2026, 12, 6, 19, 55, 40, tzinfo=UTC)
    bucket_s = 360  # 24 h: six-minute buckets
    # Seven minutes of history: the axis starts at the first point, so the six-minute bucket
    # that began at 19:54 (middle at 19:57, after now) would land far right of the plot.
    first = datetime(2026, 12, 6, 19, 48, tzinfo=UTC)
    points = [
        ChartPoint(
            ts=first + timedelta(seconds=bucket_s * i + bucket_s / 2), value=400.0 + i, n=30, p95=900.0
        )
        for i in range(2)
    ]
    cmp = Comparison(
        metric="latency_ms",
        hours=24,
        start=end - timedelta(hours=24),
        end=end,
        bucket_s=bucket_s,
        lines=[ComparedLine("ollama", "m", points)],
    )
    svg = str(render_comparison(cmp, width=WIDTH))
    right = WIDTH - PAD_R
    xs = _xs(svg, "polyline") + _xs(svg, "polygon")
    assert xs, svg
    assert all(PAD_L <= x <= right + 0.05 for x in xs), (xs, right)
    assert max(_xs(svg, "polyline")) == round(right, 1)  # the partial bucket is drawn at now
