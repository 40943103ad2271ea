"""The comparison page, the availability chart, the report and its CSV, from the rollups."""

from __future__ import annotations

import csv
import io
import math
import re
from datetime import UTC, datetime, timedelta
from importlib.resources import files

import pytest

from llmscope.api.incidents_store import store_incidents
from llmscope.api.persister import fold_hours, store_telemetry, store_violations
from llmscope.api.trends import TrendQueries, lognormal_p95
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.web.data import ChartPoint
from llmscope.web.trend_svg import render_comparison
from llmscope.web.trends import ComparedLine, Comparison, compare_bucket_s, span_bucket_s
from tests.api.alerting_harness import incident_event
from tests.api.conftest import Api
from tests.api.factories import telemetry, violation
from tests.web.test_pages import HX, is_full_page, login


def _t0() -> datetime:
    """Ten minutes ago, when a test seeds (not at import: a long test run would age the data
    out of the one-hour window the tests read)."""
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)


def _probes(t0: datetime) -> list[TelemetryEvent]:
    """Four minutes of probes of two models; the first fails for the whole third minute."""
    events = []
    for i in range(120):
        ts = t0 + timedelta(seconds=2 * i)
        failed = 60 <= i < 90
        events.append(
            telemetry(
                i,
                id=f"a{i}",
                ts=ts,
                latency_ms=None if failed else 100.0 + i % 5,
                status="timeout" if failed else "ok",
                error="no answer in 30 s" if failed else None,
            )
        )
        events.append(telemetry(i, id=f"b{i}", ts=ts, model="org/other:1", latency_ms=400.0))
    return events


async def seed(api: Api) -> None:
    t0 = _t0()
    events = _probes(t0)
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, events)
        await store_violations(
            conn,
            [
                violation(events[100], id="v-crit", rule="CUSUM"),
                violation(events[102], id="v-warn", rule="EWMA", severity="warning"),
                violation(events[104], id="v-info", rule="R2", severity="info"),
            ],
        )
        await store_incidents(
            conn,
            [
                incident_event(
                    "inc-1",
                    2,
                    opened_at=t0 + timedelta(minutes=2),
                    state="acknowledged",
                    change="acknowledged",
                )
            ],
        )


async def test_comparison_reads_each_model_from_the_rollups(api: Api) -> None:
    await seed(api)
    trends = TrendQueries(api.store)
    models = [("ollama", "llama3.1:8b"), ("ollama", "org/other:1")]
    cmp = await trends.comparison(models, "latency_ms", 1)
    assert cmp.bucket_s == compare_bucket_s(1) == 60
    lines = {line.model: line for line in cmp.lines}
    assert len(lines["org/other:1"].points) == 4
    assert all(abs(p.value - 400.0) < 1e-6 for p in lines["org/other:1"].points)
    assert len(lines["llama3.1:8b"].points) == 3  # the minute of failures has no latency
    assert {e.id for e in cmp.events} == {"v-crit", "v-warn"}  # info is not marked
    assert compare_bucket_s(720) == 180 * 60  # 30 days in 240 buckets


@pytest.mark.parametrize(
    ("hours", "data_min", "bucket_min"),
    [
        (24, 10, 1),  # 10 minutes in a 24 h window: a point a minute, not 3 of 6 minutes
        (24, None, 6),  # no data: the window's
        (24, 24 * 60, 6),  # the whole window: the window's
        (24, 48 * 60, 6),  # data before the window: the window's, never coarser
        (24, 2 * 60, 1),  # 2 hours: 120 one-minute points
        (24, 12 * 60, 3),  # half a day: 240 three-minute points
        (168, 3 * 60, 1),  # 3 hours in a week: minutes, not 3 hourly points
        (168, 6 * 24 * 60, 60),  # 6 days: whole hours (the hourly rollups)
        (720, 5, 1),  # never finer than a minute (the rollups)
        (720, 0, 1),  # data this very minute
    ],
)
def test_buckets_follow_the_datas_span_within_bounds(
    hours: float, data_min: int | None, bucket_min: int
) -> None:
    end = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    start = end - timedelta(hours=hours)
    first = None if data_min is None else end - timedelta(minutes=data_min)
    got = span_bucket_s(hours, start, end, first)
    assert got == bucket_min * 60
    assert 60 <= got <= compare_bucket_s(hours)


async def test_a_short_history_draws_a_useful_report_chart(api: Api) -> None:
    """The report over 24 h of a model probed for the last 10 minutes: a point a minute (it drew
    3 buckets of 6 minutes)."""
    now = datetime.now(UTC)
    events = [telemetry(i, id=f"s{i}", ts=now - timedelta(seconds=600 - 5 * i)) for i in range(119)]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, events)
    cmp = await TrendQueries(api.store).comparison([("ollama", "llama3.1:8b")], "latency_ms", 24, now)
    assert cmp.bucket_s == 60
    (line,) = cmp.lines
    assert len(line.points) >= 10
    client = await login(api)
    body = (await client.get("/report.json?hours=24")).json()
    (latency,) = body["latency"]
    assert len(latency["points"]) >= 10
    # The dashboard's availability chart under it, the same.
    hist = await TrendQueries(api.store).availability("ollama", "llama3.1:8b", 24, now)
    assert hist.bucket_s == 60
    (avail,) = hist.lines
    assert len(avail.buckets) >= 10


async def test_availability_counts_failures_per_bucket(api: Api) -> None:
    await seed(api)
    hist = await TrendQueries(api.store).availability("ollama", "llama3.1:8b", 1)
    (line,) = hist.lines
    assert line.target == "local"
    assert [(b.probes, b.failed) for b in line.buckets] == [(30, 0), (30, 0), (30, 30), (30, 0)]
    assert [b.outage for b in line.buckets] == [False, False, True, False]


async def test_compare_page_and_fragment(api: Api) -> None:
    await seed(api)
    client = await login(api)
    r = await client.get("/compare?hours=1")
    assert r.status_code == 200
    assert is_full_page(r.text)
    assert r.text.count('class="compare-line"') == 2  # every model when none is chosen
    r = await client.get(
        "/compare?hours=1&metric=ttft_ms&series=ollama|org/other:1",
        headers={**HX, "HX-Target": "compare-card"},
    )
    assert r.text.lstrip().startswith('<section class="card" id="compare-card"')
    assert r.text.count('class="compare-line"') == 1
    assert 'value="ollama|org/other:1" checked' in r.text
    assert (await client.get("/compare?hours=745")).status_code == 422


async def test_one_models_prompts_and_targets_compared(api: Api) -> None:
    """By prompt or target: one line each, of the first model only, over any window up to 30 days
    (minute rollups, or each series' hourly rollups)."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    events = [
        telemetry(
            i,
            id=f"split-{i}",
            ts=now - timedelta(minutes=50 - i),
            prompt_id=f"prompt-{i % 2}",
            target=f"gpu-{i % 3}",
            latency_ms=100.0 * (1 + i % 2) + 10 * (i % 3),
        )
        for i in range(48)
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, events)
    trends = TrendQueries(api.store)
    models = [("ollama", "llama3.1:8b"), ("ollama", "org/other:1")]
    for hours in (1, 168, 720):
        by_prompt = await trends.comparison(models, "latency_ms", hours, by="prompt")
        assert [(line.model, line.part) for line in by_prompt.lines] == [
            ("llama3.1:8b", "prompt-0"),
            ("llama3.1:8b", "prompt-1"),
        ]
        for line in by_prompt.lines:
            mine = [e.latency_ms for e in events if e.prompt_id == line.part and e.latency_ms]
            assert sum(p.n for p in line.points) == len(mine)
            assert min(p.lo for p in line.points if p.lo is not None) == min(mine)
        by_target = await trends.comparison(models, "latency_ms", hours, by="target")
        assert [line.part for line in by_target.lines] == ["gpu-0", "gpu-1", "gpu-2"]
    client = await login(api)
    r = await client.get("/compare?hours=1&lines=target&series=ollama|llama3.1:8b")
    assert r.status_code == 200
    assert r.text.count('class="compare-line"') == 3
    assert "ollama/llama3.1:8b · gpu-2" in r.text
    assert '<select name="lines"><option value="model" >' in r.text
    assert '<option value="target" selected>' in r.text
    assert "each target of the model apart" in r.text
    assert (await client.get("/compare?lines=host")).status_code == 422
    # Its old name, ``by`` (every "who did this" field's), in a bookmark: still read, second.
    for old in ("by=target", "by=prompt&lines=target"):
        r = await client.get(f"/compare?hours=1&{old}&series=ollama|llama3.1:8b")
        assert r.status_code == 200
        assert r.text.count('class="compare-line"') == 3
        assert '<option value="target" selected>' in r.text
    assert (await client.get("/compare?by=host")).status_code == 422
    # 30 days of one model's prompts: no longer cut to 7 days.
    r = await client.get("/compare?hours=720&lines=prompt&series=ollama|llama3.1:8b")
    assert r.status_code == 200
    assert '<input type="radio" name="hours" value="720" checked>' in r.text
    # 50 minutes in 3-hour buckets: each prompt a point or two, drawn.
    for prompt in ("prompt-0", "prompt-1"):
        assert f"ollama/llama3.1:8b · {prompt}</title>" in r.text
    assert "over 7 days at most" not in r.text


def _series_probes() -> list[TelemetryEvent]:
    """One model's 2 prompts on 2 targets, an hour and a half of probes 25, 10 and 1 days ago."""
    hour0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    return [
        telemetry(
            i,
            id=f"s{days}-{i}",
            ts=hour0 - timedelta(days=days) + timedelta(minutes=7 * i),
            prompt_id=f"p-{i % 2}",
            target=f"g-{i // 2 % 2}",
            latency_ms=100.0 + 10 * (i % 4) + days + (i % 3),
        )
        for days in (25, 10, 1)
        for i in range(13)
    ]


async def test_one_models_prompts_over_30_days_read_each_series_hourly_rollups(api: Api) -> None:
    """30 days by prompt (or target) reads ``telemetry_series_hour``: each line's buckets hold
    exactly that prompt's probes, with its p95 band, and they stay when the minute rollups are
    gone (which a 30-day chart never reads); by model, the same rows summed (migration 0018)."""
    events = _series_probes()
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, events)
    # Folded into hours (the persister's fold does it once an hour is over), then the minute
    # rollups pruned: only the hourly ones can draw the chart now.
    assert await fold_hours(api.store.pool, before=datetime(2100, 1, 1, tzinfo=UTC)) > 0
    async with api.store.pool.acquire() as conn:
        await conn.execute("DELETE FROM telemetry_minute")
    trends = TrendQueries(api.store)
    bucket_s = compare_bucket_s(720)
    assert bucket_s == 3 * 3600
    parts = {"model": [""], "prompt": ["p-0", "p-1"], "target": ["g-0", "g-1"]}
    for by in ("model", "prompt", "target"):
        cmp = await trends.comparison([("ollama", "llama3.1:8b")], "latency_ms", 720, by=by)
        assert cmp.bucket_s == bucket_s
        assert [line.part for line in cmp.lines] == parts[by]
        for line in cmp.lines:
            buckets: dict[datetime, list[float]] = {}
            for e in events:
                part = {"model": "", "prompt": e.prompt_id, "target": e.target}[by]
                if part == line.part and e.latency_ms:
                    start = datetime.fromtimestamp(e.ts.timestamp() // bucket_s * bucket_s, UTC)
                    buckets.setdefault(start, []).append(e.latency_ms)
            assert [p.ts - timedelta(seconds=bucket_s / 2) for p in line.points] == sorted(buckets)
            for p in line.points:
                values = buckets[p.ts - timedelta(seconds=bucket_s / 2)]
                logs = [math.log(v) for v in values]
                mean = sum(logs) / len(logs)
                sd = math.sqrt(sum((v - mean) ** 2 for v in logs) / (len(logs) - 1))
                assert p.n == len(values)
                assert (p.lo, p.hi) == (min(values), max(values))
                assert p.value == pytest.approx(math.exp(mean))
                assert p.p95 == pytest.approx(min(math.exp(mean + 1.6448536 * sd), max(values)))
    # Windows of minutes read the minute rollups, gone here: the same model draws nothing.
    assert (await trends.comparison([("ollama", "llama3.1:8b")], "latency_ms", 24, by="prompt")).lines == []
    client = await login(api)
    r = await client.get("/compare?hours=720&lines=target&series=ollama|llama3.1:8b")
    assert r.status_code == 200
    for target in ("g-0", "g-1"):
        assert f"ollama/llama3.1:8b · {target}</title>" in r.text
    assert "the geometric mean of the hourly rollups" in r.text


async def test_the_series_hour_backfill_folds_the_minute_rollups(api: Api) -> None:
    """Migration 0011 fills ``telemetry_series_hour`` from the minute rollups: the same rows the
    persister's fold writes (migration 0019), sums of squared logs included."""
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, _series_probes())
    await fold_hours(api.store.pool, before=datetime(2100, 1, 1, tzinfo=UTC))
    stored = await api.store.pool.fetch(
        "SELECT * FROM telemetry_series_hour ORDER BY provider, model, prompt_id, target, hour"
    )
    assert len(stored) >= 3 * 2 * 2 * 2  # 3 days, 2 prompts, 2 targets, 2 hours or more each
    sql = (files("llmscope.api") / "migrations" / "0011_series_hour.sql").read_text()
    backfill = sql[sql.index("INSERT INTO telemetry_series_hour") :]
    async with api.store.pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM telemetry_series_hour")
        await conn.execute(backfill)
        rebuilt = await conn.fetch(
            "SELECT * FROM telemetry_series_hour ORDER BY provider, model, prompt_id, target, hour"
        )
        # Run again (a retried migration): nothing is counted twice.
        await conn.execute(backfill)
        assert await conn.fetchval("SELECT sum(n) FROM telemetry_series_hour") == sum(r["n"] for r in stored)
    key = ("provider", "model", "prompt_id", "target", "hour", "n", "n_ok", "latency_n", "ttft_n", "tps_n")
    assert [tuple(r[k] for k in key) for r in rebuilt] == [tuple(r[k] for k in key) for r in stored]
    for again, kept in zip(rebuilt, stored, strict=True):
        numbers = {k: v for k, v in dict(kept).items() if isinstance(v, float)}
        assert any(k.endswith("_logsq") and v > 0 for k, v in numbers.items())
        assert {k: again[k] for k in numbers} == pytest.approx(numbers)  # sums in another order


async def test_dashboard_shows_the_outage_as_a_band(api: Api) -> None:
    await seed(api)
    client = await login(api)
    for headers in ({}, {**HX, "HX-Target": "chart-panel"}):
        r = await client.get("/dashboard?series=ollama|llama3.1:8b&hours=1", headers=headers)
        assert r.status_code == 200
        assert len(re.findall(r'<rect [^>]*class="outage-band"', r.text)) == 1
        assert "30 failed" in r.text
    r = await client.get("/dashboard?series=ollama|org/other:1&hours=720")
    assert r.status_code == 200
    assert "outage-band" not in r.text
    assert "0 failed" in r.text


async def test_the_availability_legend_says_a_band_is_any_failure(api: Api) -> None:
    """Found by hand: one refused probe among 116 shaded its whole minute (faintly, as drawn on
    purpose) under a legend that said "red bands: most probes failed"."""
    await seed(api)
    client = await login(api)
    r = await client.get("/dashboard?series=ollama|llama3.1:8b&hours=1")
    assert "red bands: failed probes, the redder the more of them failed" in r.text
    assert "most probes failed" not in r.text


async def test_report_page_and_csv(api: Api) -> None:
    await seed(api)
    client = await login(api)
    r = await client.get("/report?hours=24")
    assert r.status_code == 200
    assert "/incidents/inc-1" in r.text
    assert r.text.count("<code>CUSUM</code>") >= 2  # counted by rule, and listed
    # Every rule code links to its line in the rules legend.
    codes = re.findall(r"<code>([A-Z0-9_]+)</code>", r.text)
    assert codes
    rule_link = r'<a class="rule-code" href="/settings#rule-(\w+)"[^>]*><code>(\w+)</code></a>'
    linked = re.findall(rule_link, r.text)
    assert [code for _, code in linked] == codes
    assert all(target == code for target, code in linked), linked
    assert "R2" in r.text  # in the counts, though info is not listed
    # A control chart per model (limits, violations) and each incident's analysis.
    assert r.text.count('<svg class="control-chart"') == 2
    assert "Control chart: ollama/llama3.1:8b" in r.text
    assert "<b>Analysis:</b> latency_ms rose 140% against the baseline (R1)" in r.text

    r = await client.get("/report.json?hours=24")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert 'filename="llmscope-report-all-24h.json"' in r.headers["content-disposition"]
    body = r.json()
    assert {row["model"] for row in body["status"]} == {"llama3.1:8b", "org/other:1"}
    assert {(c["rule"], c["severity"]) for c in body["violations_by_rule"]} >= {("CUSUM", "critical")}
    assert {v["id"] for v in body["violations"]} == {"v-crit", "v-warn"}
    (incident,) = body["incidents"]
    assert incident["id"] == "inc-1"
    assert incident["state"] == "acknowledged"
    assert {"seconds_to_acknowledge", "seconds_to_resolve"} <= incident.keys()
    assert incident["analysis"]["summary"].startswith("latency_ms rose 140%")
    assert {line["model"] for line in body["latency"]} == {"llama3.1:8b", "org/other:1"}
    assert "@media print" not in r.text  # print rules live in the stylesheet
    r = await client.get("/report?hours=24&series=ollama|org/other:1")
    assert "No critical or warning violations." in r.text
    assert "No incidents." in r.text

    r = await client.get("/report/incidents.csv?hours=24")
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["id"] for row in rows] == ["inc-1"]
    assert rows[0]["state"] == "acknowledged"
    r = await client.get("/report?hours=24")
    link = re.search(r'href="(/api/export/violations\.csv\?[^"]+)"', r.text)
    assert link is not None
    r = await client.get(link.group(1).replace("&amp;", "&"))
    ids = {row["id"] for row in csv.DictReader(io.StringIO(r.text))}
    assert ids == {"v-crit", "v-warn", "v-info"}
    css = (await client.get("/static/style.css")).text
    assert "@media print" in css


async def test_long_windows_read_the_hourly_rollups(api: Api) -> None:
    """A week's comparison reads the hourly rollups of the model's series, summed per hour (one
    model-hour row of its own until migration 0018), with the same figures as the probes."""
    hour0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    events = [
        telemetry(i, id=f"h{i}", ts=hour0 + timedelta(minutes=7 * i), latency_ms=100.0 + 10 * (i % 4))
        for i in range(26)  # 3 hours, 8 or 9 probes in each
    ]
    # And two 6 days before: the data spans most of the week, whose buckets are whole hours.
    events[:0] = [
        telemetry(90 + k, id=f"h-old{k}", ts=hour0 - timedelta(days=6, minutes=-k), latency_ms=150.0 + k)
        for k in range(2)
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, events)
    assert compare_bucket_s(168) == 3600
    by_hour: dict[datetime, list[float]] = {}
    for e in events:
        assert e.latency_ms is not None
        by_hour.setdefault(e.ts.replace(minute=0, second=0), []).append(e.latency_ms)
    # The same figures before the hours are folded from the minutes (read from the minutes) and
    # after (read from the hourly rows).
    for folded in (False, True):
        if folded:
            assert await fold_hours(api.store.pool) == 4
        hours = await api.store.pool.fetchval("SELECT count(DISTINCT hour) FROM telemetry_series_hour")
        assert hours == (4 if folded else 0)
        cmp = await TrendQueries(api.store).comparison([("ollama", "llama3.1:8b")], "latency_ms", 168)
        (line,) = cmp.lines
        assert [(p.ts - timedelta(minutes=30), p.n) for p in line.points] == [
            (h, len(v)) for h, v in by_hour.items()
        ]
        for p, values in zip(line.points, by_hour.values(), strict=True):
            assert p.value == pytest.approx(math.exp(sum(math.log(v) for v in values) / len(values)))
            assert (p.lo, p.hi) == (min(values), max(values))
            logs = [math.log(v) for v in values]
            mean = sum(logs) / len(logs)
            sd = math.sqrt(sum((v - mean) ** 2 for v in logs) / (len(logs) - 1))
            assert p.p95 == pytest.approx(min(math.exp(mean + 1.6448536 * sd), max(values)))


def test_the_p95_band_comes_from_the_rollups_and_is_left_out_where_they_cannot_tell() -> None:
    values = [100.0, 120.0, 90.0, 300.0, 110.0]
    logs = [math.log(v) for v in values]
    mean = sum(logs) / len(logs)
    p95 = lognormal_p95(mean, sum(v * v for v in logs), len(logs), max(values))
    sd = math.sqrt(sum((v - mean) ** 2 for v in logs) / (len(logs) - 1))
    assert p95 == pytest.approx(math.exp(mean + 1.6448536 * sd))
    assert lognormal_p95(mean, sum(v * v for v in logs), len(logs), 150.0) == 150.0  # never above the max
    assert lognormal_p95(mean, 0.0, len(logs), max(values)) is None  # rolled up before 0010
    assert lognormal_p95(mean, mean * mean, 1, values[0]) is None  # one value has no spread
    # Equal values: no spread, the band is the line.
    assert lognormal_p95(math.log(5.0), 3 * math.log(5.0) ** 2, 3, 5.0) == pytest.approx(5.0)

    start = datetime.now(UTC) - timedelta(hours=1)
    points = [
        ChartPoint(ts=start + timedelta(minutes=i), value=100.0, n=30, p95=None if i == 3 else 150.0)
        for i in range(6)
    ]
    cmp = Comparison(
        metric="latency_ms",
        hours=1,
        start=start,
        end=start + timedelta(hours=1),
        bucket_s=60,
        lines=[ComparedLine("ollama", "m", points)],
    )
    svg = str(render_comparison(cmp))
    # Buckets 0-2 and 4-5: two stretches; bucket 3 (no p95) breaks the band.
    assert svg.count('class="p95-band"') == 2
    assert "median to p95" in svg
