"""The dashboard's day chart does work in proportion to what it shows (issue 13): a budget of
violation marks (the most severe, then the newest), circles only where they have room,
availability blips as one band per run, and live re-reads paced to its buckets."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from llmscope.api.persister import store_telemetry, store_violations
from llmscope.proto.violation import ViolationEvent
from llmscope.web.data import ChartData, ChartPoint, ChartQuery, Limits
from llmscope.web.live import chart_pace_s
from llmscope.web.svg import MARKS_DRAWN, render_chart
from llmscope.web.trend_svg import render_availability
from llmscope.web.trends import AvailabilityBucket, AvailabilityHistory, AvailabilityLine
from tests.api.conftest import Api
from tests.api.factories import telemetry, violation
from tests.web.test_pages import HX, login

DAY = {"provider": "ollama", "model": "llama3.1:8b", "prompt_id": "simple-1", "hours": "24"}


def drawn(html: str) -> list[str]:
    return re.findall(r'<a href="/violations/([^"]+)"><circle', html)


async def seed_over_budget(api: Api, extra: int = 60) -> list[ViolationEvent]:
    """A day of probes, one every 10 minutes (the chart reads the minute rollups), and marks over
    the budget: 40 critical, the day's oldest; ``MARKS_DRAWN + extra - 40`` warnings after them,
    every 40 s over the last hours; 5 info marks, the newest of all (not shown by default).
    Returns the critical and warning marks, oldest first."""
    now = datetime.now(UTC)
    probes = [telemetry(i, id=f"p{i:03d}", ts=now - timedelta(minutes=10 * (144 - i))) for i in range(144)]
    n = MARKS_DRAWN + extra
    marks = [
        violation(
            probes[0],
            id=f"m{i:04d}",
            ts=now - timedelta(hours=23) + timedelta(seconds=i)
            if i < 40
            else now - timedelta(seconds=40 * (n - i)),
            severity="critical" if i < 40 else "warning",
        )
        for i in range(n)
    ]
    info = [
        violation(probes[0], id=f"i{i}", ts=now - timedelta(seconds=5 + i), severity="info") for i in range(5)
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, probes)
        await store_violations(conn, [*marks, *info])
    return marks


async def test_the_day_chart_marks_the_most_severe_then_the_newest_within_its_budget(api: Api) -> None:
    extra = 60
    n = MARKS_DRAWN + extra
    await seed_over_budget(api, extra)
    client = await login(api)
    r = await client.get("/dashboard", params=DAY, headers={**HX, "HX-Target": "chart-panel"})
    assert r.status_code == 200, r.text
    ids = drawn(r.text)
    assert len(ids) == MARKS_DRAWN
    # Every critical (however old), then the newest warnings; never the oldest warnings or info.
    assert set(ids) == {f"m{i:04d}" for i in [*range(40), *range(40 + extra, n)]}
    assert "m0040" not in ids
    assert f"{n} critical and warning violations" in r.text
    assert f"(the {MARKS_DRAWN} most severe and newest marked)" in r.text
    # The panel's own re-read renders neither the log nor the model selector.
    assert 'id="violation-log"' not in r.text
    assert "<select" not in r.text
    # A day of 4-minute buckets re-reads at most once a minute on its model's probes.
    assert chart_pace_s(240) == 60
    assert "throttle:60s" in r.text

    # Under the budget (criticals only), every mark is drawn and nothing is said of a budget.
    r = await client.get(
        "/dashboard", params={**DAY, "severity": "critical"}, headers={**HX, "HX-Target": "chart-panel"}
    )
    assert sorted(drawn(r.text)) == [f"m{i:04d}" for i in range(40)]
    assert "most severe and newest marked" not in r.text

    # The printable report's control chart keeps the same budget, most severe and newest.
    r = await client.get("/report", params={"hours": "24"})
    assert r.status_code == 200, r.text
    ids = drawn(r.text)
    assert len(ids) == MARKS_DRAWN
    assert set(ids) == {f"m{i:04d}" for i in [*range(40), *range(40 + extra, n)]}


async def test_live_script_is_served_and_loaded_by_signed_in_pages(api: Api) -> None:
    client = await login(api)
    page = (await client.get("/dashboard")).text
    assert '<script src="/static/live.js"></script>' in page
    js = await client.get("/static/live.js")
    assert js.status_code == 200
    assert "llmscopeLive" in js.text
    assert "live-resumed" in js.text


END = datetime(2026, 1, 1, 12, tzinfo=UTC)
LIMITS = Limits(
    center=100,
    ucl=110,
    lcl=90,
    zone_a_upper=106,
    zone_a_lower=94,
    zone_b_upper=103,
    zone_b_lower=97,
    sigma=0.03,
)


def test_dense_buckets_get_circles_only_beyond_the_limits_and_the_latest() -> None:
    # 360 four-minute buckets (24 h) on a 792-px plot: too close for a circle each.
    points = [
        ChartPoint(
            ts=END - timedelta(minutes=4 * i), value=150.0 if i == 100 else 100.0, n=120, lo=95, hi=105
        )
        for i in range(360)
    ][::-1]
    data = ChartData(
        query=ChartQuery("ollama", "llama3.1:8b", "p1", hours=24),
        start=END - timedelta(hours=24),
        end=END,
        bucket_s=240,
        points=points,
        limits=LIMITS,
        violations=[],
        phase="armed",
    )
    svg = str(render_chart(data))
    assert svg.count('class="point out"') == 1  # the 150 ms bucket
    assert svg.count('class="point"') == 1  # the latest
    # Few buckets (a fresh chart): every one has its circle and tooltip.
    svg = str(render_chart(replace(data, points=points[-100:])))
    assert svg.count('class="point') == 100
    # Raw probes keep a circle each up to 400.
    raw = [ChartPoint(ts=END - timedelta(seconds=2 * i), value=100.0) for i in range(300)][::-1]
    svg = str(render_chart(replace(data, points=raw, bucket_s=0, start=END - timedelta(hours=1))))
    assert svg.count('class="point') == 300


def test_availability_blips_in_a_row_are_one_band_and_an_outage_stands_alone() -> None:
    step = 240
    start = END - timedelta(hours=24)

    def bucket(i: int, failed: int) -> AvailabilityBucket:
        return AvailabilityBucket(ts=start + timedelta(seconds=step * i), probes=240, ok=240 - failed)

    # Blips (1 of 240) in buckets 10-29, an outage at 30, blips again 31-40, one at 100.
    failed = {**dict.fromkeys(range(10, 30), 1), 30: 200, **dict.fromkeys(range(31, 41), 1), 100: 2}
    line = AvailabilityLine("gpu-a", [bucket(i, failed.get(i, 0)) for i in range(360)])
    history = AvailabilityHistory("ollama", "llama3.1:8b", 24, start, END, step, [line])
    svg = str(render_availability(history))
    bands = re.findall(r'<rect [^>]*class="(failure-band|outage-band)"[^>]*><title>([^<]*)</title>', svg)
    assert [cls for cls, _ in bands] == ["failure-band", "outage-band", "failure-band", "failure-band"]
    assert "20 of 4800 probes failed" in bands[0][1]
    assert "–" in bands[0][1]  # a run names its span
    assert "200 of 240 probes failed" in bands[1][1]
    assert "10 of 2400 probes failed" in bands[2][1]
    assert "2 of 240 probes failed" in bands[3][1]
    # A blip does not dip the line by a pixel: no circle; the outage does.
    assert svg.count('class="failed-point"') == 1


async def test_the_json_chart_chooses_its_marks_as_the_dashboard_draws_them(api: Api) -> None:
    marks = await seed_over_budget(api)
    n = len(marks)
    spc = {"provider": "ollama", "model": "llama3.1:8b", "prompt_id": "simple-1", "hours": "24"}
    r = await api.client.get("/api/stats/spc", params=spc)
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [v["id"] for v in body["violations"]]
    # The dashboard's budget and choice: every critical, then the newest warnings; no info.
    assert len(ids) == MARKS_DRAWN
    assert set(ids) == {f"m{i:04d}" for i in [*range(40), *range(n + 40 - MARKS_DRAWN, n)]}
    assert body["violations_total"] == n + 5
    # More on request, up to the store's ceiling: every mark of the window.
    r = await api.client.get("/api/stats/spc", params={**spc, "marks": "1000"})
    assert len(r.json()["violations"]) == n + 5
    r = await api.client.get("/api/stats/spc", params={**spc, "marks": "12"})
    assert len(r.json()["violations"]) == 12
    assert {v["severity"] for v in r.json()["violations"]} == {"critical"}
    # Out of range or not a number: a 422 that names the field.
    for bad in ("1001", "-1", "many"):
        r = await api.client.get("/api/stats/spc", params={**spc, "marks": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", "marks"]
    # Documented: the parameter, its default and its maximum are in the OpenAPI document.
    params = (await api.client.get("/openapi.json")).json()["paths"]["/api/stats/spc"]["get"]["parameters"]
    (documented,) = [p for p in params if p["name"] == "marks"]
    assert documented["schema"]["default"] == MARKS_DRAWN
    assert documented["schema"]["maximum"] == 1000
    assert "most severe, then the newest" in documented["description"]
