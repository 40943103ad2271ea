"""The overview, the landing page: its open critical episodes say which chart each is on (a
model's prompts are separate charts, and a shift on all of them is several episodes of the same
rule and metric), and until the setup wizard is saved it says that nobody is told."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from llmscope.api.persister import store_telemetry, store_violations
from llmscope.api.settings import ApiSettings
from llmscope.proto.charts import ChartMeta, ChartRecord, ChartView, chart_key
from tests.api.conftest import Api
from tests.api.factories import limits, telemetry, violation
from tests.web.test_pages import login


async def test_each_open_critical_episode_names_its_prompt(api: Api) -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)  # within the status window
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
    r = await client.post("/setup", data={"alert.email.recipients": "ops@example.com"})
    assert r.status_code == 200, r.text
    for headers in ({}, {"HX-Request": "true", "HX-Target": "overview"}):
        after = await client.get("/", headers=headers)
        assert after.status_code == 200
        assert "First run" not in after.text


async def test_the_limits_under_the_latest_value_carry_its_unit(
    api: Api, settings: ApiSettings, nc: NATS
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)  # within the status window: "Now" is shown
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


async def test_now_of_a_model_without_recent_probes_says_so(api: Api) -> None:
    # The factories' probes are 30 minutes old: beyond the status window, the model is unknown.
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [telemetry(i) for i in range(40)])
    client = await login(api)
    r = await client.get("/?hours=1")
    now = re.findall(r'<td class="num">(.*?)</td>', r.text, re.S)[0]
    assert '<span class="muted">no recent probe</span>' in now
    assert re.search(r"last [\d,]+ ms", now)
