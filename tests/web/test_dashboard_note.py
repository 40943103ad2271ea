"""The engine's note on a chart still collecting (why it threw a baseline away) comes after the
chart's counts: before them, it left their line starting with a stray "·"."""

from __future__ import annotations

import re

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from llmscope.api.persister import store_telemetry
from llmscope.api.settings import ApiSettings
from llmscope.proto.charts import ChartMeta, ChartRecord, ChartView, chart_key
from tests.api.conftest import Api
from tests.api.factories import telemetry
from tests.web.test_pages import login

NOTE = "baseline not stable: its 5 blocks have levels 134.2, 257.6; kept the last 80 points"


async def test_the_baseline_note_follows_the_counts(api: Api, settings: ApiSettings, nc: NATS) -> None:
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [telemetry(i) for i in range(20)])
    key = chart_key("ollama", "llama3.1:8b", "local", "simple-1", "latency_ms")
    meta = ChartMeta(
        provider="ollama", model="llama3.1:8b", target="local", prompt_id="simple-1", metric="latency_ms"
    )
    view = ChartView(phase="collecting", progress=80, baseline_n=200, note=NOTE)
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=settings.charts_bucket))
    await kv.put(key, msgspec.json.encode(ChartRecord(key=key, meta=meta, view=view)))
    client = await login(api)
    r = await client.get("/dashboard?series=ollama|llama3.1:8b&prompt_id=simple-1&metric=latency_ms")
    assert r.status_code == 200
    assert f'<p class="baseline-note">{NOTE}</p>' in r.text
    assert "collecting baseline 80/200" in r.text
    assert not re.search(r"</p>\s*·", r.text)  # no line of counts starts with a separator
    assert re.search(r"</progress>\s*· 20 probes", r.text)
