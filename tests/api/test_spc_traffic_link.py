"""``GET /api/stats/spc`` (a model's per-request chart) points at the model's traffic charts
(charted per minute, under ``/api/charts``) with a ``Link`` header and counts them in
``X-Traffic-Charts``; a model without traffic charts gets neither header."""

from __future__ import annotations

import msgspec
import pytest
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig

from llmscope.api.persister import store_telemetry
from llmscope.proto import subjects
from llmscope.proto.charts import ChartMeta, ChartRecord, TrafficView, chart_key
from tests.api.conftest import Api
from tests.api.factories import telemetry

pytestmark = pytest.mark.usefixtures("js")

SPC = {"provider": "ollama", "model": "llama3.1:8b", "prompt_id": "simple-1"}


def record(key: str, *, traffic: bool) -> bytes:
    """A chart record as the SPC engine writes it (only what the routes read is filled in)."""
    provider, model, target, prompt_id, metric = subjects.parse_kv_key(key, 5)
    meta = ChartMeta(provider=provider, model=model, target=target, prompt_id=prompt_id, metric=metric)
    view = TrafficView(service_name=target, operation="chat", kind="p", min_requests=10) if traffic else None
    return msgspec.json.encode(ChartRecord(key=key, meta=meta, traffic=view))


async def test_probe_chart_links_the_models_traffic_charts(api: Api, js: JetStreamContext) -> None:
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [telemetry(i, id=f"p-{i}") for i in range(5)])
    r = await api.client.get("/api/stats/spc", params=SPC)
    assert r.status_code == 200, r.text
    assert "link" not in r.headers
    assert "x-traffic-charts" not in r.headers

    # The engine's bucket, as the engine creates it; its records seeded as tests seed Postgres.
    kv = await js.create_key_value(KeyValueConfig(bucket=subjects.SPC_CHARTS_BUCKET))
    ours = [
        chart_key("ollama", "llama3.1:8b", "checkout", "traffic:chat", "traffic_error_rate"),
        chart_key("ollama", "llama3.1:8b", "checkout", "traffic:chat", "traffic_latency_per_token_p50"),
        chart_key("ollama", "llama3.1:8b", "search", "traffic:embeddings", "traffic_error_rate"),
    ]
    probe = chart_key("ollama", "llama3.1:8b", "local", "simple-1", "latency_ms")
    elsewhere = chart_key("ollama", "qwen2.5:7b", "checkout", "traffic:chat", "traffic_error_rate")
    for key in ours:
        await kv.put(key, record(key, traffic=True))
    await kv.put(elsewhere, record(elsewhere, traffic=True))
    await kv.put(probe, record(probe, traffic=False))

    r = await api.client.get("/api/stats/spc", params=SPC)
    assert r.status_code == 200, r.text
    assert r.headers["x-traffic-charts"] == "3"  # this model's traffic charts only
    link = r.headers["link"]
    assert link == '</api/charts?provider=ollama&model=llama3.1%3A8b>; rel="related"; title="traffic charts"'
    # The link leads to them (with the model's probe chart, which that listing also has).
    target = link[1 : link.index(">")]
    listed = await api.client.get(target)
    assert listed.status_code == 200, listed.text
    assert sorted(c["key"] for c in listed.json()) == sorted([*ours, probe])
    assert [c["key"] for c in listed.json() if c["traffic"]] == sorted(ours)
