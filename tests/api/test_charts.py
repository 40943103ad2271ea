"""The engine's charts through the API: KV views written by a real SPC engine, re-baseline over NATS."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from llmscope.api.persister import store_telemetry, store_violations
from llmscope.bus.connection import subscriptions_in_place
from llmscope.proto import subjects
from llmscope.proto.charts import chart_key
from llmscope.proto.telemetry import TelemetryEvent
from tests.api.conftest import Api
from tests.api.engine import BASELINE_N, eventually, feed, running_engine, wait_progress
from tests.api.factories import telemetry, violation

pytestmark = pytest.mark.usefixtures("js")


def probes(n: int, start: int = 0, seed: int = 1, **overrides: Any) -> list[TelemetryEvent]:
    """Lognormal latency (sigma of log 0.3) around 800 ms, one probe every 2 s."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        latency = 800.0 * math.exp(0.3 * rng.gauss(0, 1))
        fields: dict[str, Any] = {"id": f"p{seed}-{i:05d}", "latency_ms": latency, "ttft_ms": latency / 5}
        out.append(telemetry(i, **{**fields, **overrides}))
    return out


SPC = {"provider": "ollama", "model": "llama3.1:8b", "prompt_id": "simple-1"}


async def test_spc_chart_unknown_then_collecting_then_armed_with_the_engines_limits(
    api: Api, js: JetStreamContext, nats_url: str
) -> None:
    events = probes(BASELINE_N + 10)
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, events[:5])
    chart = (await api.client.get("/api/stats/spc", params=SPC)).json()
    assert (chart["phase"], chart["limits"], chart["baseline_n"]) == ("unknown", None, None)
    assert (await api.client.get("/api/charts")).json() == []  # no bucket yet: no charts, no error

    async with running_engine(nats_url):
        await feed(api, js, events[:10])
        await wait_progress(api, events[0], 10, "collecting")
        chart = (await api.client.get("/api/stats/spc", params=SPC)).json()
        assert (chart["phase"], chart["progress"], chart["baseline_n"]) == ("collecting", 10, BASELINE_N)
        assert chart["limits"] is None
        # The expected false-alarm rate is the configuration's: known before the chart is armed.
        assert chart["false_alarm_every_s"] == pytest.approx(chart["arl0_critical"] * 2.0)

        await feed(api, js, events[10:])
        record = await wait_progress(api, events[0], BASELINE_N, "armed")
    assert record.view is not None
    view_limits = record.view.limits
    assert view_limits is not None
    chart = (await api.client.get("/api/stats/spc", params=SPC)).json()
    assert chart["phase"] == "armed"
    assert chart["chart_key"] == record.key
    assert chart["query"]["target"] == "local"
    lim = chart["limits"]
    for name in ("center", "ucl", "lcl", "zone_a_upper", "zone_a_lower", "zone_b_upper", "zone_b_lower"):
        assert lim[name] == pytest.approx(getattr(view_limits, name)), name
    assert lim["transform"] == "log"
    assert lim["lcl"] > 0
    assert lim["ucl"] - lim["center"] > lim["center"] - lim["lcl"]  # asymmetric in ms on the log scale
    assert lim["baseline_id"] == chart["baseline"]["id"]
    assert chart["baseline"]["created_by"] == "engine"
    assert chart["arl0_critical"] == pytest.approx(record.view.arl0_critical)
    assert chart["probe_interval_s"] == pytest.approx(2.0)
    assert chart["false_alarm_every_s"] == pytest.approx(chart["arl0_critical"] * 2.0)
    assert len(chart["points"]) == len(events)


async def test_charts_list_and_one_chart_in_the_engines_format(
    api: Api, js: JetStreamContext, nats_url: str
) -> None:
    events = probes(12) + probes(3, start=100, model="org/other:1", target="gpu box")
    async with running_engine(nats_url):
        await feed(api, js, events)
        await wait_progress(api, events[0], 12, "collecting")
        await wait_progress(api, events[-1], 3, "collecting")
    charts = (await api.client.get("/api/charts")).json()
    keys = [c["key"] for c in charts]
    assert keys == sorted(keys)
    assert not any(k.startswith("_") for k in keys)  # the engine's checkpoint is no chart
    assert {c["meta"]["model"] for c in charts} == {"llama3.1:8b", "org/other:1"}
    mine = (await api.client.get("/api/charts", params={"model": "llama3.1:8b"})).json()
    assert {(c["meta"]["prompt_id"], c["meta"]["metric"]) for c in mine} == {
        ("simple-1", "latency_ms"),
        ("simple-1", "ttft_ms"),
        ("simple-1", "tokens_per_s"),
        ("*", "availability"),
    }
    for c in mine:
        # No engine internals (config, state): the public view of each kind of chart.
        assert set(c) == {"version", "key", "meta", "seq", "updated_at", "view", "availability", "traffic"}
        assert c["traffic"] is None  # a probe chart
        if c["meta"]["metric"] == "availability":
            assert c["view"] is None
            assert (c["availability"]["phase"], c["availability"]["progress"]) == ("collecting", 12)
        else:
            assert c["availability"] is None
            assert (c["view"]["phase"], c["view"]["progress"]) == ("collecting", 12)
            if c["meta"]["metric"] == "latency_ms":
                assert c["view"]["arl0_critical"] > 1e4
            else:  # TTFT and tokens/s do not page by default
                assert c["view"]["arl0_critical"] is None
    other = (await api.client.get("/api/charts", params={"target": "gpu box", "metric": "latency_ms"})).json()
    assert [c["meta"]["model"] for c in other] == ["org/other:1"]

    key = chart_key("ollama", "org/other:1", "gpu box", "simple-1", "latency_ms")
    r = await api.client.get(f"/api/charts/{key}")
    assert r.status_code == 200, r.text
    assert r.json()["key"] == key
    assert r.json()["view"]["progress"] == 3
    missing = chart_key("ollama", "nope", "t", "p", "latency_ms")
    assert (await api.client.get(f"/api/charts/{missing}")).status_code == 404
    r = await api.client.get("/api/charts/not-a-key")
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["path", "chart_key"]
    assert (await api.anon.get("/api/charts")).status_code == 401
    schema = (await api.client.get("/openapi.json")).json()
    assert "ChartRecord" in schema["components"]["schemas"]
    assert "ChartView" in schema["components"]["schemas"]
    assert "AvailabilityView" in schema["components"]["schemas"]


async def test_an_unreadable_record_reads_as_unknown(api: Api, js: JetStreamContext, nats_url: str) -> None:
    events = probes(5)
    async with running_engine(nats_url):
        await feed(api, js, events)
        await wait_progress(api, events[0], 5, "collecting")
    kv = await js.key_value(subjects.SPC_CHARTS_BUCKET)
    await kv.put(chart_key("ollama", "llama3.1:8b", "local", "simple-1", "latency_ms"), b"{not json")
    chart = (await api.client.get("/api/stats/spc", params=SPC)).json()
    assert (chart["phase"], chart["limits"]) == ("unknown", None)


async def test_rebaseline_round_trip_through_the_engine(
    api: Api, js: JetStreamContext, nats_url: str
) -> None:
    events = probes(BASELINE_N + 5)
    async with running_engine(nats_url):
        await feed(api, js, events)
        record = await wait_progress(api, events[0], BASELINE_N, "armed")
        url = f"/api/charts/{record.key}/rebaseline"

        r = await api.client.post(url, json={"reason": "new GPU"})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "by"]
        r = await api.client.post(url, json={"by": "ann", "reason": "   "})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "reason"]
        r = await api.anon.post(url, json={"by": "ann", "reason": "new GPU"})
        assert r.status_code == 401

        r = await api.client.post(url, json={"by": "ann", "reason": "new GPU"})
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True, "chart_key": record.key, "replica": 0, "cleared": 0, "error": ""}
        await wait_progress(api, events[0], 0, "collecting")
        chart = (await api.client.get("/api/stats/spc", params=SPC)).json()
        assert (chart["phase"], chart["progress"], chart["limits"]) == ("collecting", 0, None)

        # The next baseline is ann's: who and why are recorded in it.
        more = probes(BASELINE_N, start=BASELINE_N + 5, seed=2)
        await feed(api, js, more)
        record = await wait_progress(api, events[0], BASELINE_N, "armed")
        assert record.view is not None
        assert record.view.baseline is not None
        assert (record.view.baseline.created_by, record.view.baseline.reason) == ("ann", "new GPU")
        assert record.view.baseline.number == 1  # the first baseline is number 0
        chart = (await api.client.get("/api/stats/spc", params=SPC)).json()
        assert (chart["baseline"]["created_by"], chart["baseline"]["reason"]) == ("ann", "new GPU")

        unknown = chart_key("ollama", "llama3.1:8b", "local", "simple-1", "nope_ms")
        r = await api.client.post(f"/api/charts/{unknown}/rebaseline", json={"by": "ann", "reason": "x"})
        assert r.status_code == 409
        assert r.json()["ok"] is False
        assert r.json()["error"] == "no such chart"


async def test_rebaseline_without_an_engine_is_a_504(api: Api) -> None:
    key = chart_key("ollama", "llama3.1:8b", "local", "simple-1", "latency_ms")
    r = await api.client.post(f"/api/charts/{key}/rebaseline", json={"by": "ann", "reason": "new GPU"})
    assert r.status_code == 504
    assert "no SPC engine answered" in r.json()["detail"]


async def test_rebaseline_every_chart_of_a_model_in_one_request(
    api: Api, js: JetStreamContext, nats_url: str
) -> None:
    events = probes(BASELINE_N + 5)
    other = probes(BASELINE_N + 5, seed=4, prompt_id="long-1")
    async with running_engine(nats_url):
        fed = [e for pair in zip(events, other, strict=True) for e in pair]
        await feed(api, js, fed)
        availability = chart_key("ollama", "llama3.1:8b", events[0].target, "*", "availability")

        async def all_charted() -> bool:  # the availability chart sees every probe of the target
            record = await api.runtime.charts.get(availability)
            return record is not None and record.seq == len(fed)

        await eventually(all_charted)
        url = "/api/charts/rebaseline"
        body = {"provider": "ollama", "model": "llama3.1:8b", "by": "ann", "reason": "new GPU"}

        for field in ("provider", "model", "by", "reason"):
            r = await api.client.post(url, json={**body, field: " "})
            assert r.status_code == 422
            assert r.json()["detail"][0]["loc"] == ["body", field]
        r = await api.anon.post(url, json=body)
        assert r.status_code == 401

        r = await api.client.post(url, json=body)
        assert r.status_code == 200, r.text
        reply = r.json()
        assert (reply["ok"], reply["provider"], reply["model"], reply["target"]) == (
            True,
            "ollama",
            "llama3.1:8b",
            "",
        )
        keys = [c["chart_key"] for c in reply["charts"]]
        listed = (await api.client.get("/api/charts", params={"model": "llama3.1:8b"})).json()
        assert keys == sorted(c["key"] for c in listed)
        assert {c["meta"]["prompt_id"] for c in listed} == {"simple-1", "long-1", "*"}  # and availability
        for chart in listed:
            view = chart["view"] or chart["availability"]
            assert (view["phase"], view["progress"]) == ("collecting", 0), chart["key"]

        r = await api.client.post(url, json={**body, "target": "elsewhere"})
        assert r.status_code == 409
        assert r.json()["error"] == "no charts of ollama/llama3.1:8b on target 'elsewhere'"
        r = await api.client.post(url, json={**body, "model": "nope"})
        assert r.status_code == 409
        assert (r.json()["ok"], r.json()["charts"]) == (False, [])


async def test_rebaseline_a_model_without_an_engine_is_a_504(api: Api) -> None:
    body = {"provider": "ollama", "model": "llama3.1:8b", "by": "ann", "reason": "new GPU"}
    r = await api.client.post("/api/charts/rebaseline", json=body)
    assert r.status_code == 504
    assert "no SPC engine answered" in r.json()["detail"]


async def test_spc_chart_per_target(api: Api, js: JetStreamContext, nats_url: str) -> None:
    near = probes(BASELINE_N, target="near", seed=3)
    # Probed later, and slower: the default target, with limits of its own.
    far = [
        telemetry(i + 1, id=f"far-{i}", target="far", latency_ms=3 * (e.latency_ms or 0))
        for i, e in enumerate(near)
    ]
    async with running_engine(nats_url):
        await feed(api, js, near + far)
        await wait_progress(api, near[0], BASELINE_N, "armed")
        await wait_progress(api, far[0], BASELINE_N, "armed")
    default = (await api.client.get("/api/stats/spc", params=SPC)).json()
    assert default["targets"] == ["far", "near"]
    assert default["query"]["target"] == "far"
    assert {p["id"] for p in default["points"]} == {e.id for e in far}
    chosen = (await api.client.get("/api/stats/spc", params={**SPC, "target": "near"})).json()
    assert chosen["query"]["target"] == "near"
    assert {p["id"] for p in chosen["points"]} == {e.id for e in near}
    assert chosen["chart_key"] == chart_key("ollama", "llama3.1:8b", "near", "simple-1", "latency_ms")
    assert default["limits"]["center"] == pytest.approx(3 * chosen["limits"]["center"], rel=1e-6)
    r = await api.client.get("/api/stats/spc", params={**SPC, "target": "elsewhere"})
    assert r.status_code == 404
    rows = await api.store.pool.fetch("SELECT target FROM series_targets ORDER BY target")
    assert [r["target"] for r in rows] == ["far", "near"]


async def test_rollups_keep_targets_apart(api: Api) -> None:
    """Windows over 2 h read the per-minute rollups: one target's points and failures only."""
    near = probes(60, target="near", seed=5)
    far = [
        telemetry(i, id=f"far-{i}", target="far", latency_ms=3 * (e.latency_ms or 0))
        for i, e in enumerate(near)
    ]
    failed = [
        telemetry(100 + i, id=f"far-x{i}", target="far", status="timeout", latency_ms=None) for i in range(4)
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, near + far + failed)

    def mean_log(events: list[TelemetryEvent]) -> float:
        return sum(math.log(e.latency_ms or 1) for e in events) / len(events)

    got = {}
    for target in ("near", "far"):
        r = await api.client.get("/api/stats/spc", params={**SPC, "target": target, "hours": 24})
        assert r.status_code == 200, r.text
        got[target] = r.json()
        assert got[target]["bucket_s"] > 0
        assert sum(p["n"] for p in got[target]["points"]) == 60
    # Each target's buckets average its own probes only (geometric mean: a log-scale metric).
    overall = {t: sum(math.log(p["value"]) * p["n"] for p in got[t]["points"]) / 60 for t in got}
    assert overall["near"] == pytest.approx(mean_log(near), rel=1e-9)
    assert overall["far"] == pytest.approx(mean_log(far), rel=1e-9)
    assert (got["near"]["failed_probes"], got["far"]["failed_probes"]) == (0, 4)


async def test_the_day_chart_reads_its_record_once_and_draws_the_most_severe_then_newest_marks(
    api: Api, js: JetStreamContext, nats_url: str
) -> None:
    events = probes(5)
    async with running_engine(nats_url):
        await feed(api, js, events)
        await wait_progress(api, events[0], 5, "collecting")
    # 1,050 marks over the last 21 minutes, more than the API answers at most (1,000, asked for:
    # 250 by default): the most severe (the 30 oldest are critical) and then the newest.
    now = datetime.now(UTC)
    marks = [
        violation(
            events[0],
            id=f"mark-{i:04d}",
            ts=now - timedelta(seconds=1.2 * (1050 - i)),
            severity="critical" if i < 30 else "warning",
        )
        for i in range(1050)
    ]
    async with api.store.pool.acquire() as conn:
        await store_violations(conn, marks)

    # Every KV read is a JetStream API request on the bucket's stream: count them on the wire.
    reads: list[str] = []
    watcher = await nats.connect(nats_url)
    stream = f"KV_{subjects.SPC_CHARTS_BUCKET}"

    async def seen(msg: Msg) -> None:
        if msg.subject.endswith(stream) or f".{stream}." in msg.subject:
            reads.append(msg.subject)

    sub = await watcher.subscribe("$JS.API.>", cb=seen)
    await subscriptions_in_place(watcher)
    try:
        day = (await api.client.get("/api/stats/spc", params={**SPC, "hours": 24, "marks": 1000})).json()
        await watcher.flush()
        # The API caches the bucket handle (one lookup at first use); the record is read once.
        gets = [s for s in reads if "GET" in s]
        assert len(gets) == 1, reads
    finally:
        await sub.unsubscribe()
        await watcher.close()
    assert day["phase"] == "collecting"  # the record read once still feeds the view
    ids = [v["id"] for v in day["violations"]]
    assert len(ids) == 1000
    # The criticals, then the newest warnings, in time order.
    assert ids == [f"mark-{i:04d}" for i in [*range(30), *range(80, 1050)]]
