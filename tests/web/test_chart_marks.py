"""Several rules firing at one probe of the control chart: one mark in the worst one's style, their
count beside it, a title naming each and a link to all of them. They drew identical circles over
each other, so only the top one could be seen, hovered or clicked."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from llmscope.api.persister import store_telemetry, store_violations
from llmscope.web.data import ChartData, ChartPoint, ChartQuery, ViolationMark
from llmscope.web.svg import render_chart
from tests.api.conftest import Api
from tests.api.factories import telemetry, violation
from tests.web.test_pages import HX, login
from tests.web.test_svg import LIMITS

END = datetime(2026, 1, 1, 12, tzinfo=UTC)
RING = re.compile(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="5" class="violation (\w+)"')


def three_rules_at_one_probe() -> ChartData:
    at = END - timedelta(seconds=20)
    points = [ChartPoint(ts=END - timedelta(seconds=2 * i), value=100.0 + i % 5) for i in range(50)]
    marks = [
        ViolationMark("v-r1", at, 130.0, "R1", "warning", "open"),
        ViolationMark("v-cusum", at, 130.0, "CUSUM", "critical", "open"),
        ViolationMark("v-ewma", at, 130.0, "EWMA", "warning", "open"),
        ViolationMark("v-lone", END - timedelta(seconds=60), 125.0, "SPIKE", "critical", "open"),
    ]
    return ChartData(
        query=ChartQuery("ollama", "llama3.1:8b", "simple-1"),
        start=END - timedelta(minutes=5),
        end=END,
        bucket_s=0,
        points=points,
        limits=LIMITS,
        violations=marks,
    )


def test_rules_at_one_probe_are_one_mark_that_counts_and_names_them() -> None:
    data = three_rules_at_one_probe()
    for width in (960, 360):
        svg = str(render_chart(data, width=width))
        rings = RING.findall(svg)
        assert len(rings) == 2, (width, rings)  # one per probe, not one per rule
        assert len({(x, y) for x, y, _ in rings}) == 2
        group = re.search(r'<a href="([^"]*)"><g class="violation-mark">(.*?)</g></a>', svg, re.S)
        assert group, svg
        assert 'class="violation critical"' in group[2]  # the worst one's style
        assert re.search(r'class="violation-count">3</text>', group[2])
        title = html.unescape(re.search(r"<title>(.*?)</title>", group[2], re.S)[1])  # type: ignore[index]
        assert title.startswith("3 violations at this probe (130.0)")
        assert [line.split()[0] for line in title.splitlines()[1:]] == ["CUSUM", "EWMA", "R1"]
        assert "CUSUM (Sustained shift) critical" in title
        at = (END - timedelta(seconds=20)).isoformat()
        assert html.unescape(group[1]) == "/violations?" + urlencode(
            {"series": "ollama|llama3.1:8b", "since": at, "until": at}
        )
        assert 'href="/violations/v-lone"><circle' in svg


async def seed_rules_at_one_probe(api: Api) -> None:
    """Three rules of the latency chart at one probe (and TTFT's R1 there, another chart), one
    more ten probes before."""
    now = datetime.now(UTC).replace(microsecond=0)
    probes = [telemetry(i, id=f"p{i:03d}", ts=now - timedelta(seconds=20 * (60 - i))) for i in range(60)]
    hit = probes[50]
    fired = [
        violation(hit, id=f"v-{rule.lower()}", rule=rule, severity=sev, value=190.0)
        for rule, sev in (("R1", "warning"), ("CUSUM", "critical"), ("SPIKE", "critical"))
    ]
    ttft = violation(hit, id="v-ttft", metric="ttft_ms", rule="R1", severity="warning", value=90.0)
    other = violation(probes[40], id="v-earlier", rule="R1", severity="warning", value=180.0)
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, probes)
        await store_violations(conn, [*fired, ttft, other])


async def test_the_dashboard_charts_mark_links_to_every_rule_at_its_probe(api: Api) -> None:
    await seed_rules_at_one_probe(api)
    client = await login(api)
    params = {"provider": "ollama", "model": "llama3.1:8b", "prompt_id": "simple-1", "hours": "1"}
    r = await client.get("/dashboard", params=params, headers={**HX, "HX-Target": "chart-panel"})
    assert r.status_code == 200, r.text
    svg = r.text.split('<svg class="control-chart"')[1].split("</svg>")[0]
    assert len(RING.findall(svg)) == 2
    (href,) = re.findall(r'<a href="([^"]*)"><g class="violation-mark">', svg)
    log = (await client.get(html.unescape(href))).text
    # The log at that probe: the model's violations then, the other chart's among them.
    listed = set(re.findall(r'<a href="/violations/([^"]+)">', log))
    assert listed == {"v-r1", "v-cusum", "v-spike", "v-ttft"}


async def test_the_violation_pages_minichart_names_every_rule_at_its_probes(api: Api) -> None:
    """The mini-chart ringed the page's violation and showed nothing of the two other rules that
    fired at the same probe, nor of the chart's violation ten probes before."""
    await seed_rules_at_one_probe(api)
    client = await login(api)
    page = (await client.get("/violations/v-r1")).text
    svg = page.split('<svg class="mini-chart"')[1].split("</svg>")[0]
    (group,) = re.findall(r'<g class="violation-mark">(.*?)</g>', svg, re.S)
    assert 'class="violation critical"' in group
    assert 'class="violation-count">3</text>' in group
    title = html.unescape(re.search(r"<title>(.*?)</title>", group, re.S)[1])  # type: ignore[index]
    assert [line.split()[0] for line in title.splitlines()[1:]] == ["CUSUM", "SPIKE", "R1"]
    assert 'href="/violations/v-earlier"><circle' in svg
    assert "v-ttft" not in svg
    assert 'class="trigger-ring"' in svg
