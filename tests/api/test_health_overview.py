"""``GET /api/models/health``: the per-model overview against real Postgres, figures checked exactly."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from nats.js import JetStreamContext

from llmscope.api.persister import store_telemetry, store_violations
from llmscope.proto.charts import chart_key
from llmscope.proto.telemetry import TelemetryEvent
from tests.api.conftest import Api
from tests.api.engine import eventually, feed, running_engine
from tests.api.factories import T0, cleared, telemetry, violation
from tests.web.test_pages import login

# 100 successful non-streaming probes, in shuffled order so that only a sort finds the percentiles.
OK_LATENCIES = [10.0 * (1 + (k * 37) % 100) for k in range(100)]
OK_TPS = [20.0 + (k * 13) % 50 for k in range(100)]
STREAM_LATENCIES = [300.0 + 7 * ((k * 11) % 20) for k in range(20)]
STREAM_TTFT = [40.0 + 3 * ((k * 7) % 20) for k in range(20)]
STREAM_TPS = [60.0 + k for k in range(20)]


def pcts(values: list[float]) -> list[float]:
    """numpy's default (linear interpolation) is percentile_cont's definition."""
    return [float(v) for v in np.percentile(values, [50, 95, 99])]


def seeded() -> list[TelemetryEvent]:
    events: list[TelemetryEvent] = []

    def add(**fields: Any) -> TelemetryEvent:
        ev = telemetry(len(events), **fields)
        events.append(ev)
        return ev

    # ollama/llama3.1:8b @ local, non-streaming: failures of two kinds, the last three in a row.
    # Failed probes carry huge latencies: they must not reach the percentiles.
    for k, (lat, tps) in enumerate(zip(OK_LATENCIES, OK_TPS, strict=True)):
        if k in (30, 60):
            add(status="timeout", latency_ms=30_000.0, ttft_ms=None, tokens_per_s=None)
        add(latency_ms=lat, ttft_ms=None, tokens_per_s=tps)
    for status in ("http_5xx", "timeout", "http_5xx"):
        add(status=status, latency_ms=5_000.0, ttft_ms=None, tokens_per_s=None)
    # The same model and target, streaming: one early rate limit, then successes (no failing run).
    add(streaming=True, status="rate_limited", latency_ms=9.0, ttft_ms=None, tokens_per_s=None)
    for lat, ttft, tps in zip(STREAM_LATENCIES, STREAM_TTFT, STREAM_TPS, strict=True):
        add(streaming=True, latency_ms=lat, ttft_ms=ttft, tokens_per_s=tps)
    # A second target of the model that never answers.
    for _ in range(2):
        add(target="remote", status="refused", latency_ms=None, ttft_ms=None, tokens_per_s=None)
    # Another model, healthy.
    for lat in (100.0, 200.0, 300.0):
        add(provider="openai", model="org/gpt:1", target="ext", latency_ms=lat, ttft_ms=None)
    return events


def old() -> list[TelemetryEvent]:
    """Probes 3.5 hours ago: outside a 1 h window, inside a 6 h one."""
    at = T0 - timedelta(hours=3)
    slow = [telemetry(0, id=f"old{i}", ts=at + timedelta(seconds=i), latency_ms=1e6) for i in range(5)]
    gone = telemetry(0, id="gone", ts=at, model="retired:1", target="local")
    return [*slow, gone]


async def seed(api: Api) -> None:
    events = seeded()
    llama, gpt = events[0], events[-1]
    llama_vs = [
        violation(llama, id="a-warning", severity="warning"),
        violation(llama, id="a-info", severity="info"),
        violation(llama, id="a-cleared", severity="critical"),
        violation(llama, id="a-resolved", severity="critical"),
    ]
    gpt_vs = [
        violation(gpt, id="b-info", severity="info"),
        violation(gpt, id="b-critical", severity="critical"),
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [*events, *old()])
        await store_violations(conn, [*llama_vs, *gpt_vs])
        await store_violations(conn, [cleared(llama_vs[2], llama.ts + timedelta(seconds=1))])
    assert await api.store.resolve("a-resolved", "ana", "fixed") is not None


async def health(api: Api, hours: float | None = None) -> dict[str, Any]:
    r = await api.client.get("/api/models/health", params={} if hours is None else {"hours": hours})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_health_figures_per_model_target_and_mode(api: Api) -> None:
    await seed(api)
    body = await health(api)
    assert body["hours"] == 1
    rows = body["models"]
    keys = [(r["provider"], r["model"], r["target"], r["streaming"]) for r in rows]
    assert keys == [
        ("ollama", "llama3.1:8b", "local", False),
        ("ollama", "llama3.1:8b", "local", True),
        ("ollama", "llama3.1:8b", "remote", False),
        ("openai", "org/gpt:1", "ext", False),
    ]
    plain, stream, remote, gpt = rows

    assert (plain["probes"], plain["ok"]) == (105, 100)
    assert plain["success_ratio"] == pytest.approx(100 / 105)
    assert plain["failures"] == {"http_5xx": 2, "timeout": 3}
    assert (plain["failure_run"], plain["last_status"]) == (3, "http_5xx")
    lat = pcts(OK_LATENCIES)
    assert lat == pytest.approx([505.0, 950.5, 990.1])  # 10..1000 ms: the oracle itself
    assert [plain["latency_p50_ms"], plain["latency_p95_ms"], plain["latency_p99_ms"]] == pytest.approx(lat)
    assert [plain["ttft_p50_ms"], plain["ttft_p95_ms"], plain["ttft_p99_ms"]] == [None, None, None]
    assert plain["tokens_per_s_p50"] == pytest.approx(float(np.median(OK_TPS)))

    assert (stream["probes"], stream["ok"], stream["failure_run"]) == (21, 20, 0)
    assert stream["failures"] == {"rate_limited": 1}
    assert stream["last_status"] == "ok"
    got = [stream["latency_p50_ms"], stream["latency_p95_ms"], stream["latency_p99_ms"]]
    assert got == pytest.approx(pcts(STREAM_LATENCIES))
    got = [stream["ttft_p50_ms"], stream["ttft_p95_ms"], stream["ttft_p99_ms"]]
    assert got == pytest.approx(pcts(STREAM_TTFT))
    assert stream["tokens_per_s_p50"] == pytest.approx(float(np.median(STREAM_TPS)))

    # No successful probe: no percentiles, and a run as long as the window's probes.
    assert (remote["probes"], remote["ok"], remote["success_ratio"]) == (2, 0, 0.0)
    assert (remote["failures"], remote["failure_run"]) == ({"refused": 2}, 2)
    assert remote["last_status"] == "refused"
    assert remote["latency_p50_ms"] is None
    assert remote["tokens_per_s_p50"] is None

    assert (gpt["probes"], gpt["ok"], gpt["success_ratio"], gpt["failures"]) == (3, 3, 1.0, {})
    assert gpt["latency_p50_ms"] == 200.0

    # Open = not cleared, resolved by a person or not (its chart is still out of control); the
    # model's count is on each of its rows.
    for row in (plain, stream, remote):
        assert (row["open_violations"], row["worst_severity"]) == (3, "critical")
    assert (gpt["open_violations"], gpt["worst_severity"]) == (2, "critical")


async def test_health_window_excludes_old_probes(api: Api) -> None:
    await seed(api)
    rows = (await health(api, hours=6))["models"]
    plain = rows[0]
    assert (plain["model"], plain["target"], plain["streaming"]) == ("llama3.1:8b", "local", False)
    assert (plain["probes"], plain["ok"]) == (110, 105)
    assert plain["latency_p99_ms"] == pytest.approx(pcts([*OK_LATENCIES, *[1e6] * 5])[2])
    assert [r["model"] for r in rows if r["target"] == "local"] == ["llama3.1:8b", "llama3.1:8b", "retired:1"]
    retired = next(r for r in rows if r["model"] == "retired:1")
    assert (retired["probes"], retired["open_violations"], retired["worst_severity"]) == (1, 0, None)
    assert "retired:1" not in {r["model"] for r in (await health(api, hours=1))["models"]}


async def test_enabled_models_not_probed_in_the_window_are_listed_as_silent(api: Api) -> None:
    await seed(api)
    assert (await health(api, hours=6))["silent"] == []
    silent = (await health(api, hours=1))["silent"]
    assert [(s["provider"], s["model"], s["target"]) for s in silent] == [("ollama", "retired:1", "local")]
    assert silent[0]["last_status"] == "ok"
    assert silent[0]["last_seen"].startswith((T0 - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%S"))
    # A model someone disabled on purpose is not news.
    r = await api.client.put("/api/models/ollama/retired:1", json={"enabled": False})
    assert r.status_code == 200, r.text
    assert (await health(api, hours=1))["silent"] == []


async def test_health_without_telemetry(api: Api) -> None:
    body = await health(api, hours=24)
    assert (body["hours"], body["models"]) == (24, [])


@pytest.mark.parametrize("hours", ["0", "-1", "abc", "169"])
async def test_health_bad_hours_422_names_the_field(api: Api, hours: str) -> None:
    r = await api.client.get("/api/models/health", params={"hours": hours})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "hours"]


async def test_health_needs_the_key(api: Api) -> None:
    r = await api.anon.get("/api/models/health")
    assert r.status_code == 401
    r = await api.anon.get("/api/models/health", headers={"Authorization": "Bearer wrong-key"})
    assert r.status_code == 401


FAILED: dict[str, Any] = {"status": "timeout", "latency_ms": None}


@pytest.mark.usefixtures("js")
async def test_each_target_shows_the_engines_availability_chart(
    api: Api, js: JetStreamContext, nats_url: str
) -> None:
    # 'steady': enough probes to arm (200 by default), the last three failed (an open episode);
    # 'young': still collecting; 'quiet': in Postgres only, never seen by the engine.
    steady = [
        telemetry(
            i, id=f"s{i}", target="steady", **({"status": "timeout", "latency_ms": None} if i >= 207 else {})
        )
        for i in range(210)
    ]
    young = [telemetry(i, id=f"y{i}", target="young") for i in range(20)]
    quiet = [telemetry(i, id=f"q{i}", target="quiet") for i in range(5)]
    async with running_engine(nats_url):
        await feed(api, js, steady + young)

        async def charted() -> bool:
            rows = {r["target"]: r for r in (await health(api, hours=24))["models"]}
            a, b = rows["steady"]["availability"], rows["young"]["availability"]
            return a is not None and b is not None and a["failure_run"] == 3 and b["progress"] == 20

        await eventually(charted)
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, quiet)
    rows = {r["target"]: r for r in (await health(api, hours=24))["models"]}
    armed = rows["steady"]["availability"]
    assert (armed["phase"], armed["progress"], armed["baseline_n"]) == ("armed", 200, 200)
    assert armed["baseline_failure_rate"] == pytest.approx(0.01)  # (0 + 1) / 202, floored at 1 %
    assert armed["threshold"] is not None
    assert (armed["window_failures"], armed["fail_run"]) == (3, 3)
    assert armed["open_episodes"] == ["AVAILABILITY"]
    collecting = rows["young"]["availability"]
    assert (collecting["phase"], collecting["progress"], collecting["threshold"]) == ("collecting", 20, None)
    assert rows["quiet"]["availability"] is None

    client = await login(api)
    page = (await client.get("/models?hours=24")).text
    assert "collecting 20/200" in page
    assert f"alarm at 3 in a row or {armed['threshold']}/50" in page
    assert '<span class="sev critical">AVAILABILITY</span>' in page
    assert "not charted yet" in page

    # The endpoint was fixed: re-baselining its availability chart clears the episode and
    # estimates the failure rate afresh.
    key = chart_key(rows["steady"]["provider"], rows["steady"]["model"], "steady", "*", "availability")
    async with running_engine(nats_url):

        async def rebaselined() -> bool:  # once the restarted engine holds the partition
            body = {"by": "ann", "reason": "proxy fixed"}
            r = await api.client.post(f"/api/charts/{key}/rebaseline", json=body)
            assert r.status_code in (200, 504), r.text
            return r.status_code == 200 and r.json()["cleared"] == 1

        await eventually(rebaselined)
    a = {r["target"]: r for r in (await health(api, hours=24))["models"]}["steady"]["availability"]
    assert (a["phase"], a["progress"], a["open_episodes"]) == ("collecting", 0, [])
    assert (a["baseline_number"], a["baseline_by"], a["baseline_reason"]) == (1, "ann", "proxy fixed")
    page = (await client.get("/models?hours=24")).text
    assert "collecting 0/200" in page
    assert "baseline #1 by ann" in page


async def test_real_traffic_is_no_probe_of_a_target(api: Api) -> None:
    """Failed requests of an application's traffic (OTLP spans, target its server's address)
    are neither a target of the model nor probes in its figures: they were listed as
    ``app-gateway``, 5 probes, 0 ok, a failure run of 5."""
    probes = [telemetry(i, provider="openai", model="org/gpt:1", target="ext") for i in range(3)]
    spans = [
        telemetry(
            10 + i,
            id=f"span-{i}",
            provider="openai",
            model="org/gpt:1",
            target="app-gateway",
            source="traffic",
            prompt_id="traffic:chat",
            status="http_4xx",
            error_type="400",
            latency_ms=20.0,
            ttft_ms=None,
        )
        for i in range(5)
    ]
    # A model seen only in traffic, hours ago: never probed, so not "not probed although enabled".
    app_only = telemetry(
        20,
        id="span-app",
        provider="openai",
        model="shop-bot",
        target="app-gateway",
        source="traffic",
        prompt_id="traffic:chat",
        ts=T0 - timedelta(hours=3),
    )
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [*probes, *spans, app_only])
    rows = (await health(api))["models"]
    assert [(r["target"], r["probes"], r["ok"], r["failure_run"]) for r in rows] == [("ext", 3, 3, 0)]
    assert (await health(api, hours=1))["silent"] == []
    # The models list keeps the probes' target (the spans came later) and marks the traffic-only one.
    listed = {m["model"]: m for m in (await api.client.get("/api/models")).json()}
    assert {k: (m["target"], m["source"]) for k, m in listed.items()} == {
        "org/gpt:1": ("ext", "probe"),
        "shop-bot": ("app-gateway", "traffic"),
    }
    page = (await (await login(api)).get("/models")).text
    assert page.count("traffic only</span>") == 1
