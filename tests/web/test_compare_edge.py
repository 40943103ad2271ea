"""The comparison chart of a fresh install: the bucket still filling has its middle after now,
and its point, line and band must stay inside the plot instead of running past its right edge."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from llmscope.api.persister import store_telemetry
from llmscope.web.data import ChartPoint
from llmscope.web.trend_svg import PAD_L, PAD_R, render_comparison
from llmscope.web.trends import ComparedLine, Comparison
from tests.api.conftest import Api
from tests.api.factories import telemetry
from tests.web.test_pages import login

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


def test_a_phones_comparison_keeps_its_plot_wide() -> None:
    """Drawn for a phone (380 wide), the comparison takes the control chart's compact layout:
    with a laptop's 72 + 24 px of margins its plot was 75 % of it."""
    end = datetime(2026, 12, 6, 19, 55, 40, tzinfo=UTC)
    points = [
        ChartPoint(ts=end - timedelta(minutes=59 - i), value=1000.0 + 20 * i, n=30, p95=1900.0)
        for i in range(60)
    ]
    cmp = Comparison(
        metric="latency_ms",
        hours=1,
        start=end - timedelta(hours=1),
        end=end,
        bucket_s=60,
        lines=[ComparedLine("ollama", "m", points)],
    )
    svg = str(render_comparison(cmp, width=380))
    plot = re.search(r'<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)" height="[\d.]+" class="plot-bg"/>', svg)
    assert plot is not None
    left, width = float(plot[1]), float(plot[2])
    assert width / 380 >= 0.85, width
    xs = _xs(svg, "polyline")
    assert left <= min(xs)
    assert max(xs) <= left + width + 0.05
    values = re.findall(r'class="tick" text-anchor="end">([^<]+)<', svg)
    assert values
    assert all(v.endswith("k") for v in values if v != "0"), values  # "1.5k", not "1,500"
    assert "rotate(" not in svg  # the unit above the plot, not down its side
    wide = str(render_comparison(cmp, width=WIDTH))
    assert f'<rect x="{PAD_L}" y="28" width="{WIDTH - PAD_L - PAD_R}"' in wide  # a laptop's as before


async def test_the_legend_counts_one_bucket_in_the_singular(api: Api) -> None:
    """A fresh install's first minute: "1 bucket", not "1 buckets"."""
    now = datetime.now(UTC)
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [telemetry(0, ts=now - timedelta(seconds=30))])
    client = await login(api)
    r = await client.get("/compare?hours=1&series=ollama|llama3.1:8b")
    assert r.status_code == 200
    assert '<span class="muted">1 bucket</span>' in r.text
    assert "1 buckets" not in r.text
