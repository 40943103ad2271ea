"""Every dashboard route, as a full page and as the HTMX fragment it serves to ``HX-Request``."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest

from llmscope.api.persister import store_telemetry, store_violations
from llmscope.api.settings import ApiSettings
from llmscope.config.env import Secret
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.web.auth import CSRF_HEADER
from llmscope.web.live import point_event
from llmscope.web.routes import SESSION_COOKIE
from tests.api.conftest import API_KEY, Api, serve
from tests.api.factories import cleared, limits, telemetry, violation
from tests.web.engine_events import engine_violations, failed, store_seen

HX = {"HX-Request": "true"}


async def seed(api: Api) -> None:
    events = [telemetry(i) for i in range(40)] + [telemetry(40, model="org/other:1")]
    vs = [violation(events[25], id="v1"), violation(events[30], id="v2", rule="R5", severity="warning")]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, events)
        await store_violations(conn, [*vs, cleared(vs[0], events[28].ts)])


async def login(api: Api) -> httpx.AsyncClient:
    r = await api.anon.post("/login", data={"key": API_KEY, "next": "/models"})
    assert r.status_code == 303
    assert r.headers["location"] == "/models"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    # As htmx does from the page body's hx-headers: every change sends the session's CSRF token.
    api.anon.headers[CSRF_HEADER] = csrf_token(await api.anon.get("/settings"))
    return api.anon


def csrf_token(page: httpx.Response) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', page.text)
    assert found is not None, page.text[:500]
    assert f'hx-headers=\'{{"X-CSRF-Token": "{found.group(1)}"}}\'' in page.text
    return found.group(1)


def is_full_page(html: str) -> bool:
    return "<html" in html and '<script src="/static/htmx.min.js">' in html


async def test_pages_need_a_login(api: Api) -> None:
    r = await api.anon.get("/violations?state=open")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fviolations%3Fstate%3Dopen"
    r = await api.anon.get("/", headers=HX)
    assert r.status_code == 401
    assert r.headers["hx-redirect"].startswith("/login")
    r = await api.anon.get("/login?next=//evil.example")
    assert r.status_code == 200
    assert 'value="/"' in r.text  # no open redirect
    r = await api.anon.post("/login", data={"key": "wrong", "next": "/"})
    assert r.status_code == 401
    assert "not the API key" in r.text
    assert SESSION_COOKIE not in api.anon.cookies


async def test_key_in_the_url_once_becomes_a_cookie(api: Api) -> None:
    r = await api.anon.get(f"/models?key={API_KEY}&x=1")
    assert r.status_code == 303
    assert r.headers["location"] == "/models?x=1"
    assert (await api.anon.get("/models")).status_code == 200
    # Signed in, a link with a bad key opens its page (the session stays; the key is dropped).
    r = await api.anon.get("/models?key=bad")
    assert (r.status_code, r.headers["location"]) == (303, "/models")


async def test_a_link_with_a_wrong_key_leads_back_to_its_page_after_login(api: Api) -> None:
    """Found by hand: ``/?key=wrong`` sent to ``/login?next=/?key=wrong`` with no word of why, and
    logging in there with the right key led to ``/?key=wrong`` again, hence back to the login
    page, session or not. The key stays out of ``next`` (and out of the login page's URL)."""
    r = await api.anon.get("/models?key=wrong&x=1")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fmodels%3Fx%3D1&refused=key"
    r = await api.anon.get(r.headers["location"])
    assert "The key in that link was not accepted" in r.text
    assert "wrong" not in r.text
    r = await api.anon.post("/login", data={"key": API_KEY, "next": "/models?x=1"})
    assert (r.status_code, r.headers["location"]) == (303, "/models?x=1")
    assert (await api.anon.get("/models?x=1")).status_code == 200
    # A valid session and a stale link: the page, not the login form again.
    r = await api.anon.get("/models?key=stale")
    assert r.status_code == 303
    assert r.headers["location"] == "/models"


async def test_session_cookie_reads_the_api_but_never_writes(api: Api) -> None:
    client = await login(api)
    assert (await client.get("/api/violations")).status_code == 200
    r = await client.post("/api/violations/v1/acknowledge", json={"acknowledged_by": "x"})
    assert r.status_code == 401
    r = await client.post("/logout")
    assert r.status_code == 303
    assert (await client.get("/api/violations")).status_code == 401


async def test_static_htmx_is_served_locally(api: Api) -> None:
    r = await api.anon.get("/static/htmx.min.js")
    assert r.status_code == 200
    assert "htmx" in r.text[:200]
    assert (await api.anon.get("/static/htmx.LICENSE")).status_code == 200


async def test_dashboard_page_and_fragments(api: Api) -> None:
    await seed(api)
    client = await login(api)
    r = await client.get("/dashboard")
    assert r.status_code == 200
    assert is_full_page(r.text)
    assert "<svg" in r.text
    assert 'class="center"' not in r.text  # no SPC engine ran: no limits, whatever violations say
    assert "waiting for the SPC engine" in r.text
    assert 'class="violation critical"' in r.text
    # The chart panel re-reads on its model's stored probes, polling slowly as the fallback.
    name = point_event("ollama", "llama3.1:8b")
    assert f'hx-trigger="sse:{name} throttle:2s, live-resumed from:body, every 30s [!llmscopeLive]"' in r.text
    assert "org/other:1" in r.text  # the model selector

    r = await client.get(
        "/dashboard?provider=ollama&model=llama3.1:8b&hours=1", headers={**HX, "HX-Target": "chart-panel"}
    )
    assert not is_full_page(r.text)
    assert r.text.lstrip().startswith('<div id="chart-panel"')
    assert "<svg" in r.text
    assert r.headers["vary"] == "HX-Request, HX-Target, Cookie, Accept-Encoding"

    r = await client.get("/dashboard?series=ollama|org/other:1", headers={**HX, "HX-Target": "panel"})
    assert r.text.lstrip().startswith('<section id="panel"')
    assert "waiting for the SPC engine" in r.text
    assert 'id="rebaseline"' in r.text
    assert "Re-baseline this chart" not in r.text  # nothing to re-baseline before the engine has it

    r = await client.get("/dashboard?hours=24", headers={**HX, "HX-Target": "violation-log"})
    assert r.text.lstrip().startswith('<section id="violation-log"')
    assert "v1" in r.text
    # The log's poll answers from its own query and keeps the page's selection for the next poll.
    poll = "/dashboard?provider=ollama&model=m&prompt_id=p&target=t&metric=ttft_ms&hours=6&severity=critical"
    r = await client.get(poll, headers={**HX, "HX-Target": "violation-log"})
    assert r.text.lstrip().startswith('<section id="violation-log"')
    # Signed in: re-read on the live events of the chosen severities, a slow poll as fallback.
    assert (
        'hx-trigger="sse:violation-critical delay:1s, live-resumed from:body, every 30s [!llmscopeLive]"'
        in r.text
    )
    assert (
        'hx-get="/dashboard?provider=ollama&amp;model=m&amp;prompt_id=p&amp;target=t&amp;metric=ttft_ms'
        in r.text
    )
    assert "Latest critical violations" in r.text

    r = await client.get("/dashboard", headers=HX)  # no known target: the page's content block
    assert not is_full_page(r.text)
    assert 'id="panel"' in r.text
    assert 'id="violation-log"' in r.text


async def test_old_dashboard_links_lead_to_the_chart(api: Api) -> None:
    client = await login(api)
    for headers in ({}, HX):
        r = await client.get("/?series=ollama|llama3.1:8b&metric=ttft_ms&hours=6", headers=headers)
        assert r.status_code == 303
        assert r.headers["location"] == "/dashboard?series=ollama%7Cllama3.1:8b&metric=ttft_ms&hours=6"


async def test_a_link_to_a_model_or_prompt_nobody_probes_says_so(api: Api) -> None:
    # The chart shown instead is another model's: the page says which was asked and which is shown.
    await seed(api)
    client = await login(api)
    for headers in ({}, HX):
        r = await client.get("/dashboard", params={"series": "ollama|gone:1"}, headers=headers)
        assert r.status_code == 200
        assert "No probes of ollama / gone:1 are stored: this is ollama / llama3.1:8b · simple-1." in r.text
        r = await client.get(
            "/dashboard", params={"series": "ollama|llama3.1:8b", "prompt_id": "nope"}, headers=headers
        )
        assert "No probes of prompt nope of ollama / llama3.1:8b are stored" in r.text
        r = await client.get("/dashboard", params={"series": "ollama|llama3.1:8b"}, headers=headers)
        assert "unknown-series" not in r.text
        r = await client.get("/dashboard", headers=headers)  # no model asked: the first, no notice
        assert "unknown-series" not in r.text


async def test_overview_shows_every_model_worst_first(api: Api) -> None:
    # "other" is down: its last three probes failed, and it has an open critical AVAILABILITY
    # episode; llama only has a warning (which changes no status).
    # Probes up to now, taken now: the suite may reach this test long after the factories' T0
    # was set at import, and a model whose probes stopped a minute ago is "stopped reporting".
    start = datetime.now(UTC) - timedelta(seconds=80)

    def at(i: int) -> datetime:
        return start + timedelta(seconds=2 * (i - 600))

    events = [telemetry(700 + i, ts=at(600 + i)) for i in range(40)]
    events += [telemetry(600 + i, model="org/other:1", ts=at(600 + i)) for i in range(30)]
    events += [
        telemetry(
            630 + i, model="org/other:1", status="timeout", error="no answer", latency_ms=None, ts=at(630 + i)
        )
        for i in range(3)
    ]
    outage = violation(
        events[-1],
        id="v-down",
        prompt_id="",
        metric="availability",
        chart="availability",
        rule="AVAILABILITY",
    )
    vs = [outage, violation(events[30], id="v-warn", rule="R5", severity="warning")]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, events)
        await store_violations(conn, vs)
    client = await login(api)
    for headers in ({}, HX, {**HX, "HX-Target": "overview"}):
        r = await client.get("/", headers=headers)
        assert r.status_code == 200
        assert is_full_page(r.text) is not bool(headers)
        # The page's content is the polled block: its fragment, whatever the HX-Target.
        assert r.text.lstrip().startswith('<div id="overview"') is bool(headers)
        rows = re.findall(r'<tr class="row-(\w+)">.*?<b>([^<]+)</b>', r.text, re.S)
        assert rows == [("outage", "org/other:1"), ("operational", "llama3.1:8b")]
        assert r.text.count('<svg class="sparkline"') == 2
        assert '/violations/v-down"' in r.text  # the open critical episode, linked
        assert "/violations/v-warn" not in r.text  # warnings are not on the overview
        assert "1 of 2 down" in r.text  # the overall rule's words (status.overall)
        assert "3 failed probes in a row" in r.text
        # "Now" is not the latency of the last answer while the model answers nothing.
        now_cells = re.findall(r'<td class="num more" data-label="[^"]*">(.*?)</td>', r.text, re.S)
        assert '<span class="now-failing">no answers</span>' in now_cells[0]
        assert "last answered in" in now_cells[0]
        assert "no answers" not in now_cells[2]  # llama's row (each row has two num cells)
        assert 'href="/dashboard?provider=ollama&amp;model=org%2Fother%3A1&amp;prompt_id=simple-1' in r.text
    r = await client.get("/?hours=168", headers={**HX, "HX-Target": "overview"})
    assert "Latency over 7 days" in r.text
    assert r.text.count('<svg class="sparkline"') == 2


async def test_dashboard_shows_info_violations_only_when_asked(api: Api) -> None:
    events = [telemetry(i) for i in range(40)]
    vs = [
        violation(events[10], id="v-crit"),
        violation(events[20], id="v-warn", rule="R5", severity="warning"),
        violation(events[30], id="v-info", rule="R2", severity="info"),
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, events)
        await store_violations(conn, vs)
    client = await login(api)
    for headers in ({}, HX):
        r = await client.get("/dashboard", headers=headers)
        assert "/violations/v-crit" in r.text
        assert "/violations/v-warn" in r.text
        assert "/violations/v-info" not in r.text  # neither on the chart nor in the list
        assert 'class="violation info"' not in r.text
        r = await client.get("/dashboard?severity=info", headers=headers)
        assert 'class="violation info"' in r.text
        assert r.text.count("/violations/v-info") == 2  # its mark and its row
        r = await client.get("/dashboard?severity=critical", headers=headers)
        assert "/violations/v-warn" not in r.text
        assert "/violations/v-crit" in r.text


async def test_dashboard_without_telemetry(api: Api) -> None:
    client = await login(api)
    for headers in ({}, HX):
        r = await client.get("/dashboard", headers=headers)
        assert r.status_code == 200
        assert "No telemetry yet" in r.text
        r = await client.get("/", headers=headers)
        assert r.status_code == 200
        assert "No models yet" in r.text


async def test_violations_page_and_table_fragment(api: Api) -> None:
    await seed(api)
    client = await login(api)
    r = await client.get("/violations")
    assert is_full_page(r.text)
    assert "/violations/v1" in r.text
    assert "/violations/v2" in r.text
    # Each value carries its metric's unit: the log mixes latencies, TTFTs and failure counts.
    values = re.findall(r'<td class="value">([^<]*)</td>', r.text)
    assert values
    assert all(v.endswith(" ms") for v in values), values
    r = await client.get("/violations?state=open", headers={**HX, "HX-Target": "violation-table"})
    assert not is_full_page(r.text)
    assert "/violations/v2" in r.text
    assert "/violations/v1" not in r.text
    r = await client.get("/violations?series=ollama|llama3.1:8b&severity=warning", headers=HX)
    assert "/violations/v2" in r.text
    assert "/violations/v1" not in r.text


async def test_violation_detail_and_actions(api: Api) -> None:
    await seed(api)
    client = await login(api)
    r = await client.get("/violations/v2")
    assert is_full_page(r.text)
    assert "Frozen statistics" in r.text
    assert "Context (±10 probes)" in r.text
    assert "the prober host, not the target's" in r.text
    assert len(re.findall(r'<tr class="trigger">', r.text)) == 1
    # The frozen limits are latencies: each says so, as the value does.
    for row in ("Value", "Center", "Sigma", "UCL / LCL", "Zone A (±2σ)", "Zone B (±1σ)"):
        assert re.search(rf"<tr><th>{re.escape(row)}</th><td>[^<]* ms</td></tr>", r.text), row
    # So are the values of the points that formed the pattern.
    points = r.text.split('<table class="points">')[1].split("</table>")[0]
    assert re.search(r"<td>[\d,.]+ ms</td></tr>", points), points
    r = await client.get("/violations/v2", headers=HX)
    assert not is_full_page(r.text)
    assert "Frozen statistics" in r.text

    r = await client.post(
        "/violations/v2/acknowledge",
        data={"by": "ana", "note": "on it"},
        headers={**HX, "HX-Target": "actions"},
    )
    assert r.status_code == 200
    assert r.text.lstrip().startswith('<div id="actions"')
    assert "Acknowledged by <b>ana</b>" in r.text
    # A blank name is refused naming the field, never recorded as "dashboard" (nobody).
    r = await client.post("/violations/v2/resolve", data={"by": " "}, headers={**HX, "HX-Target": "actions"})
    assert r.status_code == 200  # htmx swaps only 2xx; the fragment says why
    assert '<p class="error">by: required: the name recorded as who resolved it</p>' in r.text
    assert "Resolved by" not in r.text
    r = await client.post("/violations/v2/acknowledge", data={})
    assert r.status_code == 422
    assert "by: required: the name recorded as who acknowledged it" in r.text
    r = await client.post("/violations/v2/resolve", data={"by": "bo"}, headers={**HX, "HX-Target": "actions"})
    assert "Resolved by <b>bo</b>" in r.text
    assert "<button" not in r.text
    # The answer brings the state cell along (it said "open" beside "Resolved by" until a reload).
    assert '<span id="violation-state" hx-swap-oob="true">open · resolved</span>' in r.text
    # The engine's episode is still open (the chart has not recovered); the page says both, as
    # the violations list does, rather than "open" beside "Resolved by".
    r = await client.get("/violations/v2")
    assert '<td class="state"><span id="violation-state">open · resolved</span></td>' in r.text
    assert "hx-swap-oob" not in r.text
    r = await client.post("/violations/v2/resolve", data={}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    r = await client.get("/violations/missing")
    assert r.status_code == 404
    assert (await client.post("/violations/missing/acknowledge", data={}, headers=HX)).status_code == 404


async def test_violation_page_names_the_metric_once_and_unknown_gpu_plainly(api: Api) -> None:
    await seed(api)
    client = await login(api)
    for headers in ({}, HX):
        r = await client.get("/violations/v2", headers=headers)
        assert r.status_code == 200
        assert "latency_ms</th>" not in r.text  # one column per metric, the violation's marked
        assert r.text.count('<th class="this-metric"') == 1
        assert "– %" not in r.text  # no system metrics in this event: "–", not "– %"
        assert "<th>GPU</th><td>–</td>" in r.text


async def test_a_log_charts_sigma_reads_as_the_factor_it_is(api: Api) -> None:
    # On a log chart sigma is in natural-log units: the page says so and what it means in the
    # metric (x1.22 per sigma), never a bare "0.2000 (log scale)" or "(none scale)".
    point = telemetry(3)
    logged = msgspec.structs.replace(limits(center=800.0, sigma=0.2), transform="log")
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [point])
        await store_violations(conn, [violation(point, id="v-log", limits=logged)])
    client = await login(api)
    r = await client.get("/violations/v-log")
    assert r.status_code == 200
    assert "<tr><th>Sigma</th><td>0.2000 in log units: one σ is ×1.22</td></tr>" in r.text
    assert " scale)" not in r.text


async def outage_as_the_engine_writes_it() -> tuple[list[TelemetryEvent], ViolationEvent]:
    """Fifty probes of two prompts, then five timeouts in a row: the real engine's AVAILABILITY
    violation of them, as ``v-out``. (Built by hand it carried a latency chart's limits, center
    100, and its page read "failure rate 10,000.00 %".)"""
    events = [telemetry(i, prompt_id=f"p{i % 2}") for i in range(50)]
    events += [failed(telemetry(i, prompt_id=f"p{i % 2}"), f"no answer in 30 s #{i}") for i in range(50, 55)]
    found = [
        v
        for v in await engine_violations(events, baseline_n=40)
        if v.rule == "AVAILABILITY" and v.state == "open"
    ]
    assert found, "the engine signalled no outage"
    return events, msgspec.structs.replace(found[0], id="v-out", episode_id="v-out")


async def test_availability_violation_lists_the_failed_probes_around_it(api: Api) -> None:
    # Every prompt of the target: the availability chart has none of its own.
    events, outage = await outage_as_the_engine_writes_it()
    # Its baseline's rate (1 / 42) makes a run of four the outage: the fifth timeout is after it.
    assert (outage.metric, outage.prompt_id, outage.value) == ("availability", "", 4.0)
    assert 0 < outage.limits.center < 0.05  # a failure rate, not milliseconds
    trigger = next(i for i, e in enumerate(events) if e.id == outage.point_ids[0])
    async with api.store.pool.acquire() as conn:
        await store_seen(conn, events, outage)
    client = await login(api)
    for headers in ({}, HX):
        r = await client.get("/violations/v-out", headers=headers)
        assert r.status_code == 200
        assert "No stored probes around this violation" not in r.text
        assert f"no answer in 30 s #{trigger}" in r.text
        assert r.text.count('class="trigger failed"') == 1
        assert r.text.count(' failed"') == 5  # all five failed probes, before and after it
        assert "timeout" in r.text
        assert "<tr><th>Value</th><td>4 failed probes in a row</td>" in r.text  # a count, a run
        # In words, no escaped chart key as its id; a rate under 100 %.
        rate = re.search(r'<td class="failure-rate">([\d.]+) %</td>', r.text)
        assert rate, r.text
        assert 0 < float(rate[1]) < 5, rate[0]
        assert re.search(
            r'<tr><th>Baseline</th><td class="baseline">baseline of \d+ probes, failure rate [\d.]+ %', r.text
        )
        # The pattern's one point is the trigger: its time and status, not "–" twice.
        points = r.text.split('<table class="points">')[1].split("</table>")[0]
        assert "<td>–</td>" not in points
        assert "<td>timeout</td>" in points


async def test_an_availability_violation_with_a_latency_charts_limits_prints_no_rate(api: Api) -> None:
    """An availability violation whose stored limits are a latency chart's (center 100: one
    built by hand, or by an engine that mixed them up) printed "failure rate 10,000.00 %". A rate
    over 100 % is no rate: "–", with a title saying why, in both rows that printed it."""
    events = [telemetry(i) for i in range(10)]
    events += [failed(telemetry(i)) for i in range(10, 14)]
    mixed = violation(
        events[12],
        id="v-mixed",
        prompt_id="",
        metric="availability",
        chart="availability",
        chart_key="ollama/llama3.1:8b/local/*/availability",
        rule="ERROR_RATE",
        rule_name="4 failed probes in the last 20",
        value=4.0,
        point_values=(),
        point_ts=(),
    )
    assert mixed.limits.center == 100.0
    async with api.store.pool.acquire() as conn:
        await store_seen(conn, events, mixed)
    client = await login(api)
    for headers in ({}, HX):
        r = await client.get("/violations/v-mixed", headers=headers)
        assert r.status_code == 200
        assert "10,000" not in r.text
        assert "10000" not in r.text
        cell = re.search(r'<td class="failure-rate">(.*?)</td>', r.text)
        assert cell, r.text
        assert re.fullmatch(
            r'<span class="not-a-rate" title="[^"]*not a failure rate[^"]*">–</span>', cell[1]
        ), cell[0]
        assert re.search(
            r'<td class="alarm-threshold"><span class="not-a-rate" title="[^"]+">–</span></td>', r.text
        )
        baseline = re.search(r'<td class="baseline">(.*?)</td>', r.text)
        assert baseline, r.text
        assert baseline[1] == "baseline of 100 probes", baseline[0]


async def test_login_page_has_no_navigation(api: Api) -> None:
    for headers in ({}, HX):
        r = await api.anon.get("/login", headers=headers)
        assert r.status_code == 200
        assert 'href="/violations"' not in r.text
        assert 'name="key"' in r.text


async def test_violation_names_the_target_host_when_the_target_runs_beside_the_prober(api: Api) -> None:
    point = telemetry(0, system_scope="target")
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [point])
        await store_violations(conn, [violation(point, id="v-local", system=point.system)])
    client = await login(api)
    r = await client.get("/violations/v-local")
    assert "the target host (it runs on the prober's host)" in r.text
    assert "not the target" not in r.text


async def test_models_page_toggles(api: Api) -> None:
    await seed(api)
    client = await login(api)
    r = await client.get("/models")
    assert is_full_page(r.text)
    assert "org/other:1" in r.text
    r = await client.post(
        "/models/toggle",
        data={"provider": "ollama", "model": "org/other:1", "enabled": "false"},
        headers={**HX, "HX-Target": "models"},
    )
    assert r.text.lstrip().startswith('<table id="models"')
    assert '<tr class="disabled">' in r.text
    r = await client.get("/models", headers=HX)
    assert not is_full_page(r.text)
    models = {m.model: m.enabled for m in await api.store.models()}
    assert models == {"llama3.1:8b": True, "org/other:1": False}


async def test_settings_page_saves_and_hides_secrets(api: Api) -> None:
    client = await login(api)
    r = await client.get("/settings")
    assert is_full_page(r.text)
    assert 'name="alert.email.smtp_password"' in r.text
    for group in ("Detection", "Alerting channels", "Retention", "Authentication"):
        assert f">{group}</h2>" in r.text
    assert "LLMSCOPE_RETENTION_TELEMETRY_DAYS" in r.text
    assert 'id="rule-CUSUM"' in r.text
    # The key-by-key route stays for scripts: its outcome is a toast.
    r = await client.post(
        "/settings/alert.email.smtp_password", data={"by": "ann", "value": "hunter2-secret"}, headers=HX
    )
    assert r.status_code == 200
    assert "saved" in r.headers["hx-trigger"]
    assert "hunter2-secret" not in r.text
    r = await client.post("/settings/alert.email.smtp_port", data={"by": "ann", "value": "nope"}, headers=HX)
    assert r.status_code == 422
    assert "alert.email.smtp_port" in r.headers["hx-trigger"]
    r = await client.post(
        "/settings/alert.email.recipients", data={"by": "ann", "value": "a@x.io, b@x.io"}, headers=HX
    )
    assert r.status_code == 200
    assert not is_full_page(r.text)
    r = await client.post(
        "/settings/alert.email.enabled", data={"by": "ann", "value": ["false", "true"]}, headers=HX
    )
    values = {s.key: s.value for s in await api.store.settings()}
    assert values["alert.email.recipients"] == ["a@x.io", "b@x.io"]
    assert values["alert.email.enabled"] is True
    assert values["alert.email.smtp_password"] is None  # never read back


async def test_settings_page_names_the_three_key_scopes_and_which_are_set(settings: ApiSettings) -> None:
    read_key = "read-key-0123456789abcdef"
    with_read = dataclasses.replace(settings, read_key=Secret(read_key))
    async with serve(with_read) as api:
        client = await login(api)
        r = await client.get("/settings")
        auth = r.text[r.text.index(">Authentication</h2>") :]
        # Not "the one credential": three keys, each with its scope, and whether it is set.
        assert "one credential" not in r.text
        for env in ("LLMSCOPE_API_KEY", "LLMSCOPE_READ_KEY", "LLMSCOPE_INGEST_KEY"):
            assert env in auth
        rows = dict(re.findall(r"<dt>([^<]+)</dt>\s*<dd><b>([^<]+)</b>", auth))
        assert rows["Admin key"] == "set (never shown)"
        assert rows["Read key"] == "set (never shown)"
        assert rows["Ingest key"] == "not set (off)"
        assert read_key not in r.text
        assert API_KEY not in r.text


async def test_settings_section_saves_whole_or_names_the_bad_field(api: Api) -> None:
    client = await login(api)
    form = {
        "by": "ann",
        "alert.email.enabled": ["false", "true"],
        "alert.email.recipients": "ops@x.io",
        "alert.email.smtp_host": "mail.x.io",
        "alert.email.smtp_port": "70000",
        "alert.email.tls": "ssl",
        "alert.email.smtp_user": "",
        "alert.email.smtp_password": "",
        "alert.email.from_addr": "llmscope@x.io",
    }
    headers = {**HX, "HX-Target": "section-email"}
    r = await client.post("/settings/section/email", data=form, headers=headers)
    assert r.status_code == 200  # htmx swaps only 2xx: the fragment carries the errors
    assert r.text.lstrip().startswith('<section class="card settings-section" id="section-email"')
    assert '<p class="field-error" id="f-alert-email-smtp_port-error">SMTP port:' in r.text
    assert 'value="70000"' in r.text  # what was typed stays, to be corrected
    assert "not saved" in r.headers["hx-trigger"]
    values = {s.key: s.value for s in await api.store.settings()}
    assert values["alert.email.smtp_host"] == ""  # nothing of the section was stored
    r = await client.post("/settings/section/email", data={"by": "ann", **form, "alert.email.smtp_port": "x"})
    assert r.status_code == 422
    assert is_full_page(r.text)
    assert "SMTP port: expected a whole number" in r.text

    r = await client.post(
        "/settings/section/email", data={**form, "alert.email.smtp_port": "465"}, headers=headers
    )
    assert r.status_code == 200
    assert "field-error" not in r.text
    assert "Email settings saved." in r.headers["hx-trigger"]
    values = {s.key: s.value for s in await api.store.settings()}
    assert values["alert.email.smtp_port"] == 465
    assert values["alert.email.enabled"] is True
    assert values["alert.email.tls"] == "ssl"
    assert values["alert.email.smtp_password"] is None
    r = await client.post("/settings/section/nope", data={}, headers=HX)
    assert r.status_code == 404


REFUSED = {False: 422, True: 200}
"""A refused wizard Save: 422, or 200 to htmx, which swaps only a 2xx answer into the page."""


@pytest.mark.parametrize("hx", [False, True])
async def test_setup_wizard(api: Api, hx: bool) -> None:
    client = await login(api)
    headers = {**HX, "HX-Target": "wizard"} if hx else {}
    r = await client.get("/setup", headers=headers)
    assert r.status_code == 200
    assert is_full_page(r.text) is not hx
    assert "Slack incoming webhook URL" in r.text
    r = await client.post(
        "/setup",
        data={"by": "ann", "alert.email.recipients": "not-an-address", "alert.slack.webhook_url": ""},
        headers=headers,
    )
    assert r.status_code == REFUSED[hx]
    assert "alert.email.recipients" in r.text
    r = await client.post(
        "/setup",
        data={
            "by": "ann",
            "alert.email.recipients": "ops@example.com",
            "alert.email.smtp_host": "smtp.example.com",
            "alert.email.tls": "none",
            "alert.email.smtp_port": "25",
            "alert.slack.webhook_url": "https://hooks.slack.test/x",
            "alert.webhook.url": "http://hooks.internal:8080/llmscope",
            "alert.webhook.signing_secret": "s3cret",
            "alert.pagerduty.routing_key": "R0UTING",
            "alert.alertmanager.url": "http://alertmanager.internal:9093",
            "alert.teams.webhook_url": "https://teams.example/workflows/x",
            "alert.min_severity": "warning",
        },
        headers=headers,
    )
    assert r.status_code == 200
    assert "Saved" in r.text
    # After Save the form is still there and shows what is stored (secrets only as "set").
    assert 'value="smtp.example.com"' in r.text
    assert 'value="25"' in r.text
    assert "<option selected>none</option>" in r.text
    assert "Channels on: email, slack, webhook, pagerduty, alertmanager, teams" in r.text
    assert "s3cret" not in r.text
    assert "R0UTING" not in r.text
    assert r.text.count("(set)") >= 3
    values = {s.key: (s.value, s.is_set) for s in await api.store.settings()}
    assert values["alert.email.recipients"] == (["ops@example.com"], True)
    assert values["alert.email.enabled"] == (True, True)
    assert values["alert.slack.enabled"] == (True, True)
    assert values["alert.slack.webhook_url"] == (None, True)
    assert values["alert.min_severity"] == ("warning", True)
    assert values["setup.completed"] == (True, True)
    assert values["alert.email.tls"] == ("none", True)
    assert values["alert.webhook.enabled"] == (True, True)
    assert values["alert.pagerduty.enabled"] == (True, True)
    assert values["alert.alertmanager.enabled"] == (True, True)
    assert values["alert.alertmanager.url"] == (None, True)  # a secret: it may carry a password
    assert values["alert.teams.enabled"] == (True, True)

    # Tickets, as the settings page's Tickets section: a tracker without its token is refused
    # whole (the checks that span settings apply), naming the setting at fault.
    assert 'name="alert.tickets.tracker"' in r.text
    assert '<input type="password" name="alert.tickets.token"' in r.text
    r = await client.post(
        "/setup",
        data={
            "by": "ann",
            "alert.tickets.tracker": "github",
            "alert.tickets.project": "acme/llm",
            "alert.min_severity": "info",
        },
        headers=headers,
    )
    assert r.status_code == REFUSED[hx]
    assert "alert.tickets.token" in r.text
    assert 'name="alert.tickets.project"' in r.text  # the form is still there to correct
    values = {s.key: (s.value, s.is_set) for s in await api.store.settings()}
    assert values["alert.tickets.tracker"][0] == "none"
    assert values["alert.min_severity"] == ("warning", True)  # nothing of the refused form saved
    r = await client.post(
        "/setup",
        data={
            "by": "ann",
            "alert.tickets.tracker": "github",
            "alert.tickets.project": "acme/llm",
            "alert.tickets.token": "ghp_T0KEN",
            "alert.tickets.labels": "llmscope, oncall",
        },
        headers=headers,
    )
    assert r.status_code == 200, r.text
    assert "ghp_T0KEN" not in r.text
    assert "<option selected>github</option>" in r.text
    assert 'value="acme/llm"' in r.text
    values = {s.key: (s.value, s.is_set) for s in await api.store.settings()}
    assert values["alert.tickets.tracker"] == ("github", True)
    assert values["alert.tickets.token"] == (None, True)
    assert values["alert.tickets.labels"] == (["llmscope", "oncall"], True)
    r = await client.post("/setup", data={"by": "ann", "alert.tickets.project": "no-slash"}, headers=headers)
    assert r.status_code == REFUSED[hx]
    assert "expected owner/repo for github" in r.text


@pytest.mark.parametrize("hx", [False, True])
async def test_setup_wizard_refused_save_shows_what_was_typed_never_a_secret(api: Api, hx: bool) -> None:
    client = await login(api)
    headers = {**HX, "HX-Target": "wizard"} if hx else {}
    r = await client.post(
        "/setup",
        data={"by": "ann", "alert.email.smtp_host": "stored.example.com", "alert.email.tls": "ssl"},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/setup",
        data={
            "by": "ann",
            "alert.email.smtp_host": "typed.example.com",
            "alert.email.smtp_port": "not-a-port",
            "alert.email.tls": "none",
            "alert.email.recipients": "ops@example.com, oncall@example.com",
            "alert.email.smtp_password": "pa55word",
            "alert.pagerduty.routing_key": "R0UTING",
            "alert.min_severity": "warning",
        },
        headers=headers,
    )
    assert r.status_code == REFUSED[hx]
    assert is_full_page(r.text) is not hx
    # the refusal names the setting, beside its field too
    assert "Not saved: alert.email.smtp_port (SMTP server port)" in r.text
    assert '-error">alert.email.smtp_port: expected a whole number' in r.text
    # what was typed, not what is stored
    assert 'value="typed.example.com"' in r.text
    assert "stored.example.com" not in r.text
    assert 'value="not-a-port"' in r.text
    assert 'value="ops@example.com, oncall@example.com"' in r.text
    assert "<option selected>none</option>" in r.text
    assert "<option selected>warning</option>" in r.text
    # secrets are never sent back
    assert "pa55word" not in r.text
    assert "R0UTING" not in r.text
    # nothing of it was stored
    values = {s.key: s.value for s in await api.store.settings()}
    assert (values["alert.email.smtp_host"], values["alert.email.tls"]) == ("stored.example.com", "ssl")
    assert values["alert.email.smtp_password"] is None
    assert not (await client.get("/setup")).text.count("typed.example.com")


async def test_setup_wizard_makes_a_webhook_signing_secret_and_shows_it_once(api: Api) -> None:
    client = await login(api)
    r = await client.post(
        "/setup", data={"by": "ann", "alert.webhook.url": "http://hooks.internal:8080/llmscope"}
    )
    assert r.status_code == 200, r.text
    shown = re.search(r'<code id="webhook-secret">([^<]+)</code>', r.text)
    assert shown is not None, r.text
    secret = shown.group(1)
    assert len(secret) >= 40
    assert (
        await api.store.pool.fetchval("SELECT value FROM settings WHERE key = 'alert.webhook.signing_secret'")
        == secret
    )
    assert secret not in (await client.get("/setup")).text  # once
    # a later save (the secret now set) keeps it and shows nothing
    r = await client.post(
        "/setup", data={"by": "ann", "alert.webhook.url": "http://hooks.internal:8080/other"}
    )
    assert "webhook-secret" not in r.text
    assert (
        await api.store.pool.fetchval("SELECT value FROM settings WHERE key = 'alert.webhook.signing_secret'")
        == secret
    )


async def test_api_docs_load_nothing_from_another_host(api: Api) -> None:
    r = await api.anon.get("/docs")
    assert r.status_code == 200
    assets = re.findall(r'(?:src|href)=["\']([^"\']+)["\']', r.text) + re.findall(r"url:\s*'([^']+)'", r.text)
    assert assets, r.text
    assert all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    assert "://" not in r.text
    for asset in assets:
        reply = await api.anon.get(asset)
        assert reply.status_code == 200, asset
    js = await api.anon.get("/static/swagger-ui/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in js.text
