"""Violations firing within seconds of each other on the comparison chart (the compare page and
the report): one mark with their count and a title naming each, never eight-pixel marks drawn
over each other into a blob nobody could read or click."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from itertools import combinations
from urllib.parse import urlencode

from llmscope.api.persister import store_violations
from llmscope.web.data import ChartPoint
from llmscope.web.trend_svg import render_comparison
from llmscope.web.trends import ChartEvent, ComparedLine, Comparison
from tests.api.conftest import Api
from tests.api.factories import telemetry, violation
from tests.web.test_pages import login
from tests.web.test_trends import seed

MARK = re.compile(r'<path d="M([\d.]+),(\d+) L([\d.]+),\d+ L[\d.]+,(\d+)" class="event ')


def overlapping(svg: str) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Pairs of violation marks whose boxes share some area."""
    boxes = [(float(a), float(b)) for a, _, b, _ in MARK.findall(svg)]
    return [(p, q) for p, q in combinations(boxes, 2) if min(p[1], q[1]) - max(p[0], q[0]) > 0]


def burst_comparison(*, at_start: bool = False) -> Comparison:
    """Five rules of two models firing within ten seconds, twenty minutes before the end (or, with
    ``at_start``, three more at the plot's left edge too), and one lone violation later."""
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(hours=1)
    fired = end - timedelta(minutes=20)
    points = [ChartPoint(ts=start + timedelta(minutes=m), value=100.0 + m % 5) for m in range(0, 60, 2)]
    lines = [ComparedLine(provider="ollama", model=m, points=points) for m in ("llama3.1:8b", "qwen2:7b")]
    burst = [
        ChartEvent(
            ts=fired + timedelta(seconds=2 * i),
            kind="violation",
            provider="ollama",
            model=("llama3.1:8b", "qwen2:7b")[i % 2],
            label=rule,
            severity="warning" if i else "info",
            id=f"v{i}",
        )
        for i, rule in enumerate(("R1", "CUSUM", "EWMA", "R5", "R2"))
    ]
    if at_start:
        burst += [
            ChartEvent(
                ts=start + timedelta(seconds=i),
                kind="violation",
                provider="ollama",
                model="llama3.1:8b",
                label="R1",
                severity="critical",
                id=f"s{i}",
            )
            for i in range(3)
        ]
    lone = ChartEvent(
        ts=fired + timedelta(minutes=15),
        kind="violation",
        provider="ollama",
        model="qwen2:7b",
        label="R1",
        severity="critical",
        id="v-lone",
    )
    return Comparison("latency_ms", 1.0, start, end, 60, lines, events=[*burst, lone])


def test_violations_seconds_apart_share_one_mark_that_counts_and_names_them() -> None:
    data = burst_comparison()
    for width in (960, 360):
        svg = str(render_comparison(data, width=width))
        assert overlapping(svg) == [], width
        assert len(MARK.findall(svg)) == 2, width
        count = re.search(
            r'<text x="[\d.]+" y="\d+" class="event-count"[^>]*>(\d+)</text><title>([^<]*)</title>', svg
        )
        assert count, svg
        assert count[1] == "5"
        listed = html.unescape(count[2])
        assert listed.startswith("5 violations (click for them all in the violation log)\n")
        assert all(f" {rule} " in listed for rule in ("R1", "CUSUM", "EWMA", "R5", "R2"))
        # The shared mark wears its worst's severity and links to the log over its span (two
        # models and two severities: neither filtered); a lone one to its page.
        burst = sorted(e.ts for e in data.events if e.id.startswith("v") and e.id != "v-lone")
        span = urlencode({"since": burst[0].isoformat(), "until": burst[-1].isoformat()})
        assert f'<a href="/violations?{html.escape(span)}"><g class="event-mark"><path' in svg
        assert 'class="event warning"' in svg
        assert 'href="/violations/v-lone"' in svg


async def test_a_shared_marks_link_lists_every_violation_it_counts(api: Api) -> None:
    """The seed's critical and warning violations share a mark: its link is the violation log of
    that model over their span, which lists both, not the info one 4 s later (unmarked) nor
    another model's at the same time. It linked to the critical one alone."""
    await seed(api)
    async with api.store.pool.acquire() as conn:
        crit_ts = await conn.fetchval("SELECT ts FROM violations WHERE id = 'v-crit'")
        await store_violations(
            conn, [violation(telemetry(0, ts=crit_ts, model="other:1"), id="v-elsewhere", rule="R1")]
        )
    client = await login(api)
    for path in ("/compare?hours=1", "/report?hours=1"):
        page = (await client.get(path)).text
        svg = page.split('<svg class="comparison-chart"')[1].split("</svg>")[0]
        hrefs = [html.unescape(h) for h in re.findall(r'<a href="([^"]*)"><g class="event-mark">', svg)]
        (href,) = hrefs
        assert href.startswith("/violations?"), (path, href)
        log = (await client.get(href)).text
        listed = set(re.findall(r'<a href="/violations/([^"]+)">', log))
        assert listed == {"v-crit", "v-warn"}, (path, listed)
        assert "all times</a>" in log


async def test_the_compare_page_and_report_draw_the_seconds_apart_violations_as_one_mark(api: Api) -> None:
    """The seed's critical and warning violations fired 4 s apart: one mark, counting 2."""
    await seed(api)
    client = await login(api)
    for path in ("/compare?hours=1", "/report?hours=1"):
        page = (await client.get(path)).text
        svg = page.split('<svg class="comparison-chart"')[1].split("</svg>")[0]
        assert overlapping(svg) == [], path
        assert len(MARK.findall(svg)) == 1, path
        assert 'class="event-count" text-anchor="middle">2</text>' in svg, path


async def test_the_logs_span_filter_refuses_a_bad_time_naming_it(api: Api) -> None:
    client = await login(api)
    r = await client.get("/violations", params={"until": "yesterday"})
    assert r.status_code == 422
    assert "until" in r.text
