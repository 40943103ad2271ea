"""The overview, the landing page: its open critical episodes say which chart each is on (a
model's prompts are separate charts, and a shift on all of them is several episodes of the same
rule and metric), and until the setup wizard is saved it says that nobody is told."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from llmscope.api.persister import store_telemetry, store_violations
from llmscope.api.settings import ApiSettings
from llmscope.proto.charts import ChartMeta, ChartRecord, ChartView, chart_key
from llmscope.web.badge import STATUS_COLOURS
from llmscope.web.data import SettingError
from tests.api.conftest import Api
from tests.api.factories import limits, telemetry, violation
from tests.web.test_pages import login


async def test_each_open_critical_episode_names_its_prompt(api: Api) -> None:
    start = datetime.now(UTC) - timedelta(seconds=90)  # still reporting: its last probe 12 s ago
    events = [
        telemetry(i, ts=start + timedelta(seconds=2 * i), prompt_id=("short-1", "long-1")[i % 2])
        for i in range(40)
    ]
    shifted = [
        violation(events[30], id="v-short", rule="CUSUM"),
        violation(events[31], id="v-long", rule="CUSUM"),
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, events)
        await store_violations(conn, shifted)
    client = await login(api)
    r = await client.get("/")
    assert r.status_code == 200
    named = re.findall(r'<span class="sev critical">CUSUM</span> ([^<]+)</a>', r.text)
    assert sorted(named) == ["latency_ms · long-1", "latency_ms · short-1"]


async def test_the_overview_points_to_the_setup_page_until_it_is_saved(api: Api) -> None:
    client = await login(api)
    first = await client.get("/")
    assert "First run: no alert channel has been set up" in first.text
    assert 'href="/setup">Set up alerts' in first.text
    # Stored, but not completed: still the first run.
    await api.store.put_setting("setup.completed", False, "test")
    assert "First run" in (await client.get("/", headers={"HX-Request": "true"})).text
    r = await client.post("/setup", data={"by": "ann", "alert.email.recipients": "ops@example.com"})
    assert r.status_code == 200, r.text
    for headers in ({}, {"HX-Request": "true", "HX-Target": "overview"}):
        after = await client.get("/", headers=headers)
        assert after.status_code == 200
        assert "First run" not in after.text


async def test_the_limits_under_the_latest_value_carry_its_unit(
    api: Api, settings: ApiSettings, nc: NATS
) -> None:
    start = datetime.now(UTC) - timedelta(seconds=90)  # still reporting: "Now" is shown
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [telemetry(i, ts=start + timedelta(seconds=2 * i)) for i in range(40)])
    key = chart_key("ollama", "llama3.1:8b", "local", "simple-1", "latency_ms")
    meta = ChartMeta(
        provider="ollama", model="llama3.1:8b", target="local", prompt_id="simple-1", metric="latency_ms"
    )
    view = ChartView(phase="armed", progress=200, baseline_n=200, limits=limits(center=1200.0, sigma=50.0))
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=settings.charts_bucket))
    await kv.put(key, msgspec.json.encode(ChartRecord(key=key, meta=meta, view=view)))
    client = await login(api)
    r = await client.get("/")
    assert '<div class="muted small">CL 1,200 · UCL 1,350 ms</div>' in r.text


async def test_a_chart_collecting_its_baseline_shows_its_progress(
    api: Api, settings: ApiSettings, nc: NATS
) -> None:
    """As the dashboard does ("collecting baseline n/N"), from the chart record read anyway; a
    model's sparkline is its probes', whatever its traffic's prompt sorts after."""
    start = datetime.now(UTC) - timedelta(seconds=90)
    probes = [telemetry(i, ts=start + timedelta(seconds=2 * i), prompt_id="zz-last") for i in range(40)]
    spans = [
        telemetry(
            100 + i,
            ts=start + timedelta(seconds=2 * i),
            source="traffic",
            prompt_id="traffic:chat",
            target="app-gateway",
            latency_ms=9999.0,
        )
        for i in range(5)
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [*probes, *spans])
    key = chart_key("ollama", "llama3.1:8b", "local", "zz-last", "latency_ms")
    meta = ChartMeta(
        provider="ollama", model="llama3.1:8b", target="local", prompt_id="zz-last", metric="latency_ms"
    )
    view = ChartView(phase="collecting", progress=37, baseline_n=200)
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=settings.charts_bucket))
    await kv.put(key, msgspec.json.encode(ChartRecord(key=key, meta=meta, view=view)))
    client = await login(api)
    r = await client.get("/")
    assert '<div class="muted small">baseline collecting 37/200</div>' in r.text
    assert "prompt zz-last: open the control chart" in r.text
    assert "9,999 ms" not in r.text


async def test_now_of_a_model_without_recent_probes_says_so(api: Api) -> None:
    # The factories' probes are 30 minutes old: beyond the status window, the model is unknown.
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [telemetry(i) for i in range(40)])
    client = await login(api)
    r = await client.get("/?hours=1")
    now = re.findall(r'<td class="num more" data-label="now">(.*?)</td>', r.text, re.S)[0]
    assert '<span class="muted">no recent probe</span>' in now
    assert re.search(r"last [\d,]+ ms", now)


async def test_a_model_whose_probes_stopped_says_so_within_a_minute_and_a_disabled_one_leaves(
    api: Api,
) -> None:
    # Three models probed every 2 s: "kept" still is; "removed" was taken out of the prober's
    # targets 2 minutes ago; "off" still has probes in the window but was disabled. With a
    # status window of 15 minutes, "removed" used to stay "operational" until it ran out, and
    # "off" stayed on the overview as long as its sparkline had points.
    now = datetime.now(UTC)
    stopped_at = now - timedelta(minutes=2)
    events = [telemetry(i, model="kept:1", ts=now - timedelta(seconds=80 - 2 * i)) for i in range(40)]
    events += [
        telemetry(100 + i, model="removed:1", target="gpu-old", ts=stopped_at - timedelta(seconds=78 - 2 * i))
        for i in range(40)
    ]
    events += [telemetry(200 + i, model="off:1", ts=now - timedelta(seconds=80 - 2 * i)) for i in range(40)]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, events)
    client = await login(api)
    assert (await api.client.put("/api/models/ollama/off:1", json={"enabled": False})).status_code == 200
    r = await client.get("/", headers={"HX-Request": "true", "HX-Target": "overview"})
    rows = re.findall(r'<tr class="row-(\w+)">.*?<b>([^<]+)</b>', r.text, re.S)
    assert rows == [("stopped", "removed:1"), ("operational", "kept:1")]
    removed = r.text[r.text.index('<tr class="row-stopped">') :]
    removed = removed[: removed.index("</tr>")]
    assert '<span class="status stopped" title="no recent probe">stopped reporting</span>' in removed
    assert "since 2m ago" in removed
    assert f"gpu-old stopped reporting: no probe since {stopped_at:%H:%M:%S} UTC" in removed
    # The summary: one of two models stopped reads as partial (degraded), never as if every
    # model had stopped; its count is in the row's words, not among the never-probed "unknown".
    summary = r.text[r.text.index('<section class="card summary">') : r.text.index("</dl>")]
    assert '<span class="status degraded">1 of 2 stopped reporting</span>' in summary
    assert '<dt>stopped reporting</dt><dd><span class="status stopped">1</span>' in summary
    assert "<dt>unknown</dt>" not in summary
    # The status page says the same, signed in or public, and so do the API and the badges.
    page = (await client.get("/status")).text
    assert '<p class="status-overall"><span class="status degraded">1 of 2 stopped reporting</span>' in page
    assert re.findall(r"<td>ollama / ([^<]+)</td>\s*<td><span class=\"status \w+\"[^>]*>([^<]+)<", page) == [
        ("kept:1", "operational"),
        ("removed:1", "stopped reporting"),
    ]
    status = (await api.client.get("/api/status")).json()
    assert status["status"] == "degraded"
    assert {m["model"]: m["status"] for m in status["models"]} == {
        "kept:1": "operational",
        "removed:1": "stopped",
    }
    badge = (await client.get("/badge/ollama/removed:1.svg")).text
    assert "stopped reporting" in badge
    assert STATUS_COLOURS["stopped"] in badge
    overall_badge = await client.get("/badge/status.svg")
    assert overall_badge.status_code == 200
    assert "1 of 2 stopped reporting" in overall_badge.text
    assert STATUS_COLOURS["degraded"] in overall_badge.text


async def test_a_target_of_a_model_that_stopped_long_ago_is_still_named(api: Api) -> None:
    # One target of the model carries on; the other stopped 40 minutes ago (outside the status
    # window, whose raw probes no longer name it): the row says so rather than forget it.
    now = datetime.now(UTC)
    events = [telemetry(i, target="gpu-new", ts=now - timedelta(seconds=80 - 2 * i)) for i in range(40)]
    gone = now - timedelta(minutes=40)
    events += [
        telemetry(100 + i, target="gpu-old", ts=gone - timedelta(seconds=78 - 2 * i)) for i in range(40)
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, events)
    client = await login(api)
    r = await client.get("/", headers={"HX-Request": "true", "HX-Target": "overview"})
    assert re.findall(r'<tr class="row-(\w+)">', r.text) == ["operational"]
    assert f"gpu-old stopped reporting: no probe since {gone:%H:%M:%S} UTC" in r.text


async def test_one_setting_is_read_alone_with_its_default_and_never_a_secret(api: Api) -> None:
    """What the landing page, polled every few seconds, reads instead of every setting."""
    assert await api.store.setting_value("setup.completed") is False  # the default, no row
    await api.store.put_setting("setup.completed", True, "test")
    assert await api.store.setting_value("setup.completed") is True
    await api.store.put_setting("alert.min_severity", "warning", "test")
    assert await api.store.setting_value("alert.min_severity") == "warning"
    await api.store.put_setting("alert.slack.webhook_url", "https://hooks.slack.test/x", "test")
    assert await api.store.setting_value("alert.slack.webhook_url") is None
    with pytest.raises(SettingError, match="unknown setting"):
        await api.store.setting_value("no.such.setting")


async def test_the_report_says_how_far_a_collecting_baseline_is(
    api: Api, settings: ApiSettings, nc: NATS
) -> None:
    """The report's control chart said "baseline collecting" without the n/N the overview and
    the dashboard show."""
    start = datetime.now(UTC) - timedelta(seconds=90)
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [telemetry(i, ts=start + timedelta(seconds=2 * i)) for i in range(40)])
    key = chart_key("ollama", "llama3.1:8b", "local", "simple-1", "latency_ms")
    meta = ChartMeta(
        provider="ollama", model="llama3.1:8b", target="local", prompt_id="simple-1", metric="latency_ms"
    )
    view = ChartView(phase="collecting", progress=37, baseline_n=200)
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=settings.charts_bucket))
    await kv.put(key, msgspec.json.encode(ChartRecord(key=key, meta=meta, view=view)))
    client = await login(api)
    r = await client.get("/report?hours=24")
    assert r.status_code == 200
    assert "· baseline collecting 37/200</span></h2>" in r.text
