"""``GET /api/status`` against real Postgres: statuses from seeded telemetry and violations, auth."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from llmscope.api.persister import store_telemetry, store_violations
from llmscope.api.settings import ApiSettings
from llmscope.api.status_queries import StatusReader
from llmscope.api.trends import TrendQueries
from llmscope.config.env import ConfigError, Env
from llmscope.proto.telemetry import TelemetryEvent
from tests.api.alerting_harness import live_alerter
from tests.api.conftest import Api, serve
from tests.api.factories import cleared, telemetry, violation
from tests.web.test_pages import login


def now() -> datetime:
    """Read when the data is seeded, never at import: the status page judges probes against
    the current time (a 15 min window), and the suite may reach these tests minutes later."""
    return datetime.now(UTC).replace(microsecond=0)


FAILED: dict[str, Any] = {"status": "timeout", "latency_ms": None, "ttft_ms": None, "tokens_per_s": None}
HOSTS = ("gpu-1", "gpu-7", "edge-3")


def recent(
    model: str, n: int, *, at: datetime, provider: str = "ollama", target: str = "local", **fields: Any
) -> list[TelemetryEvent]:
    """``n`` probes 2 s apart, the last one 10 s before ``at``."""
    start = at - timedelta(seconds=10 + 2 * (n - 1))
    return [
        telemetry(
            0,
            id=f"{model}-{target}-{i}",
            ts=start + timedelta(seconds=2 * i),
            provider=provider,
            model=model,
            target=target,
            **fields,
        )
        for i in range(n)
    ]


@dataclasses.dataclass(frozen=True)
class Seeded:
    failing_since: datetime
    last_failure: datetime
    slow_since: datetime
    retired_seen: datetime


async def seed(api: Api) -> Seeded:
    """Five models, one per status, and one disabled.

    - ollama/llama3.1:8b: 40 successes, then 3 timeouts in a row (outage); 2 days ago 5 of 10 failed
    - openai/org/gpt:1: all probes answered, an open critical latency violation (degraded)
    - ollama/healthy:1: all fine; only warning, info and cleared violations, one resolved first (operational)
    - ollama/retired:1: last probed 3 hours ago (stopped)
    - ollama/off:1: disabled (not on the status page)
    """
    at = now()
    ok = recent("llama3.1:8b", 43, at=at, host="gpu-1")
    failing = [msgspec.structs.replace(e, **FAILED) for e in ok[40:]]
    two_days = at - timedelta(days=2)
    older = [
        telemetry(0, id=f"old{i}", ts=two_days + timedelta(seconds=2 * i), **(FAILED if i % 2 else {}))
        for i in range(10)
    ]
    gpt = recent("org/gpt:1", 30, at=at, provider="openai", target="ext", host="gpu-7")
    healthy = recent("healthy:1", 30, at=at, target="edge", host="edge-3")
    retired_seen = at - timedelta(hours=3)
    retired = [telemetry(0, id="retired", ts=retired_seen, model="retired:1")]
    off = recent("off:1", 5, at=at)
    slow = violation(gpt[10], id="gpt-slow", severity="critical", rule="CUSUM")
    noise = violation(healthy[4], id="h-warning", severity="warning", rule="R1")
    info = violation(healthy[5], id="h-info", severity="info", rule="R5")
    gone = violation(healthy[6], id="h-cleared", severity="critical")
    fixed = violation(healthy[7], id="h-resolved", severity="critical")
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [*ok[:40], *failing, *older, *gpt, *healthy, *retired, *off])
        await store_violations(conn, [slow, noise, info, gone, fixed])
        await store_violations(conn, [cleared(gone, healthy[9].ts)])
    assert await api.store.resolve("h-resolved", "ana", "fixed") is not None
    async with api.store.pool.acquire() as conn:
        await store_violations(conn, [cleared(fixed, healthy[9].ts)])
    r = await api.client.put("/api/models/ollama/off:1", json={"enabled": False})
    assert r.status_code == 200, r.text
    return Seeded(failing[0].ts, failing[-1].ts, slow.ts, retired_seen)


@pytest.fixture
async def public_api(settings: ApiSettings) -> AsyncIterator[Api]:
    async with serve(dataclasses.replace(settings, status_public=True)) as running:
        yield running


def ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


async def test_status_of_each_model_from_telemetry_and_violations(api: Api) -> None:
    seeded = await seed(api)
    r = await api.client.get("/api/status")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "outage"
    models = {m["model"]: m for m in body["models"]}
    assert [(m["provider"], m["model"]) for m in body["models"]] == [
        ("ollama", "healthy:1"),
        ("ollama", "llama3.1:8b"),
        ("ollama", "retired:1"),
        ("openai", "org/gpt:1"),
    ]
    llama = models["llama3.1:8b"]
    assert llama["status"] == "outage"
    assert ts(llama["since"]) == seeded.failing_since
    assert ts(llama["last_probe"]) == seeded.last_failure
    assert llama["reasons"] == ["3 failed probes in a row on local: timeout"]
    # From the per-minute rollups: the last day, and the week with the older half-failed probes.
    assert llama["uptime_24h"] == pytest.approx(40 / 43)
    assert llama["uptime_7d"] == pytest.approx(45 / 53)

    gpt = models["org/gpt:1"]
    assert (gpt["status"], ts(gpt["since"])) == ("degraded", seeded.slow_since)
    assert gpt["reasons"] == ["1 open critical CUSUM violation"]
    assert gpt["uptime_24h"] == gpt["uptime_7d"] == 1.0

    healthy = models["healthy:1"]
    assert (healthy["status"], healthy["since"], healthy["reasons"]) == ("operational", None, [])

    retired = models["retired:1"]
    assert (retired["status"], ts(retired["since"])) == ("stopped", seeded.retired_seen)
    # Its target is named as stopped (within a day of its last probe, from series_targets).
    assert retired["reasons"] == [
        f"local stopped reporting: no probe since {seeded.retired_seen:%H:%M:%S} UTC"
    ]
    assert retired["uptime_24h"] == 1.0


async def test_a_violation_resolved_while_its_chart_is_still_out_keeps_the_model_degraded(api: Api) -> None:
    """A person's "resolved" closes the record and stops reminders; the status says what the
    data says: latency still far above normal is no "operational", until the engine clears it."""
    at = now()
    probes = recent("slow:1", 30, at=at)
    slow = violation(probes[10], id="slow-open", severity="critical", rule="CUSUM")
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, probes)
        await store_violations(conn, [slow])
    assert await api.store.resolve("slow-open", "ana", "restarted the server") is not None
    reader = StatusReader(api.store, cache_s=0)
    report = await reader.compute(datetime.now(UTC))
    model = next(m for m in report.models if m.model == "slow:1")
    assert model.status == "degraded", model
    assert model.reasons == ["1 open critical CUSUM violation"]
    health = (await api.client.get("/api/models/health")).json()["models"]
    assert {(r["open_violations"], r["worst_severity"]) for r in health if r["model"] == "slow:1"} == {
        (1, "critical")
    }
    # The engine clears it: the model is operational again.
    async with api.store.pool.acquire() as conn:
        await store_violations(conn, [cleared(slow, probes[-1].ts)])
    report = await reader.compute(datetime.now(UTC))
    assert next(m for m in report.models if m.model == "slow:1").status == "operational"


async def test_status_without_models(api: Api) -> None:
    body = (await api.client.get("/api/status")).json()
    assert (body["status"], body["models"]) == ("unknown", [])


async def test_status_needs_the_key_unless_public(api: Api) -> None:
    await seed(api)
    r = await api.anon.get("/api/status")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    r = await api.anon.get("/api/status", headers={"Authorization": "Bearer wrong-key-0123456789"})
    assert r.status_code == 401
    client = await login(api)  # the dashboard's session reads it too
    assert (await client.get("/api/status")).status_code == 200


async def test_public_status_shows_names_and_statuses_only(public_api: Api) -> None:
    await seed(public_api)
    r = await public_api.anon.get("/api/status")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"status", "models"}
    assert {tuple(sorted(m)) for m in body["models"]} == {("model", "provider", "status")}
    assert [(m["model"], m["status"]) for m in body["models"]] == [
        ("healthy:1", "operational"),
        ("llama3.1:8b", "outage"),
        ("retired:1", "stopped"),
        ("org/gpt:1", "degraded"),
    ]
    for secret in (*HOSTS, "local", "ext", "edge", "timeout", "failed"):
        assert secret not in r.text
    # With the key, the same endpoint still answers in full.
    full = (await public_api.client.get("/api/status")).json()
    assert "uptime_24h" in full["models"][0]


async def test_a_report_is_kept_for_cache_s(api: Api) -> None:
    await seed(api)
    clock = [100.0]
    reader = StatusReader(api.store, cache_s=5, clock=lambda: clock[0])
    first = await reader.status()
    async with api.store.pool.acquire() as conn:
        at = now()
        recovered = msgspec.structs.replace(recent("llama3.1:8b", 1, at=at)[0], id="recovered", ts=at)
        await store_telemetry(conn, [recovered])
    clock[0] += 4.9
    assert await reader.status() is first
    clock[0] += 0.2
    again = await reader.status()
    llama = again.find("ollama", "llama3.1:8b")
    assert llama is not None
    # The run is over; 41 of 44 probes in the window succeeded, below the 95 % line.
    assert (llama.status, llama.reasons) == ("degraded", ["93.2% successful probes on local"])


def test_status_public_setting_is_validated() -> None:
    base = {"DATABASE_URL": "postgresql://u:p@h/db", "LLMSCOPE_API_KEY": "k" * 20}
    assert ApiSettings.from_env(Env(base)).status_public is False
    assert ApiSettings.from_env(Env({**base, "LLMSCOPE_STATUS_PUBLIC": "true"})).status_public is True
    with pytest.raises(ConfigError, match="LLMSCOPE_STATUS_PUBLIC"):
        ApiSettings.from_env(Env({**base, "LLMSCOPE_STATUS_PUBLIC": "sometimes"}))


async def test_openapi_documents_both_answers(api: Api) -> None:
    schema = (await api.anon.get("/openapi.json")).json()
    answer = schema["paths"]["/api/status"]["get"]["responses"]["200"]["content"]["application/json"]
    refs = {ref["$ref"].rsplit("/", 1)[-1] for ref in answer["schema"]["anyOf"]}
    assert refs == {"StatusReport", "PublicStatusReport"}
    assert not any(path.startswith(("/status", "/badge")) for path in schema["paths"])


async def test_an_active_maintenance_window_from_the_alerter_shows(
    api: Api, database_url: str, nats_url: str
) -> None:
    await seed(api)
    ends = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    window = {"kind": "maintenance", "author": "ops", "ends_at": ends}
    async with live_alerter(database_url, nats_url, None):
        r = await api.client.post(
            "/api/silences", json={**window, "reason": "OS patches", "models": ["llama3*"]}
        )
        assert r.status_code == 201, r.text
        # Limited to some rules, or a plain silence: neither puts a model in maintenance.
        limited = {**window, "reason": "load test", "models": ["org/*"], "rules": ["CUSUM"]}
        assert (await api.client.post("/api/silences", json=limited)).status_code == 201
        plain = {**window, "kind": "silence", "reason": "noisy", "models": ["healthy*"]}
        assert (await api.client.post("/api/silences", json=plain)).status_code == 201
        # The page waits at most 1 s for the alerter; a loaded machine may take longer once.
        for _ in range(4):
            body = (await api.client.get("/api/status")).json()
            if {m["model"]: m["status"] for m in body["models"]}["llama3.1:8b"] == "maintenance":
                break
            await asyncio.sleep(5.1)  # the report is cached for 5 s
    models = {m["model"]: m for m in body["models"]}
    assert (models["llama3.1:8b"]["status"], models["llama3.1:8b"]["reasons"]) == (
        "maintenance",
        ["maintenance: OS patches"],
    )
    assert models["org/gpt:1"]["status"] == "degraded"
    assert models["healthy:1"]["status"] == "operational"
    assert body["status"] == "degraded"  # the outage is planned work now

    # No alerter answers: no model is in maintenance, and the status is still served.
    reader = StatusReader(api.store, cache_s=0, silences=api.runtime.alerting.silences, alerter_wait_s=0.5)
    report = await reader.compute(datetime.now(UTC))
    llama = report.find("ollama", "llama3.1:8b")
    assert llama is not None
    assert llama.status == "outage"


async def test_real_traffic_is_not_counted_as_probes(api: Api) -> None:
    """A model's status, uptime and availability come from its probes: failed requests of an
    application's own traffic (OTLP spans; a client's 400 is not the endpoint down) neither make
    it "5 failed probes in a row on app-gateway" (an outage) nor name the application's server as
    a target that stopped reporting once the application goes quiet (found by hand: five failed
    spans sent to `/v1/traces` turned a model probed every 0.25 s without a failure into `outage`).
    """
    at = now()
    probes = recent("gpt-4o-mini", 30, at=at, provider="openai", target="openai/gpt-4o-mini")
    spans = {"source": "traffic", "prompt_id": "traffic:chat", "service_name": "shop", "host": "app-gateway"}
    failed = [
        telemetry(
            0,
            id=f"span-{i}",
            ts=at - timedelta(seconds=5 - i),
            provider="openai",
            model="gpt-4o-mini",
            target="app-gateway",
            **spans,
            **FAILED,
            error_type="400",
        )
        for i in range(5)
    ]
    # An earlier service's traffic, quiet for an hour: no target of the model's probes.
    quiet = [
        telemetry(
            0,
            id="span-quiet",
            ts=at - timedelta(hours=1),
            provider="openai",
            model="gpt-4o-mini",
            target="old-gateway",
            **spans,
        )
    ]
    # A model seen only in an application's traffic: never probed, so not on the page.
    app_only = telemetry(
        0, id="span-app", ts=at, provider="openai", model="shop-bot", target="app-gateway", **spans
    )
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [*probes, *failed, *quiet, app_only])
    body = (await api.client.get("/api/status")).json()
    [gpt] = body["models"]
    assert (body["status"], gpt["status"], gpt["reasons"]) == ("operational", "operational", [])
    assert (gpt["uptime_24h"], gpt["uptime_7d"]) == (1.0, 1.0)
    history = await TrendQueries(api.store).availability(
        "openai", "gpt-4o-mini", 1, at + timedelta(minutes=1)
    )
    assert [line.target for line in history.lines] == ["openai/gpt-4o-mini"]
    assert sum(line.probes for line in history.lines) == 30


async def test_the_comparison_and_the_reports_latency_chart_are_probes_only(api: Api) -> None:
    """Found by hand: under ``make up`` an empty-answer outage of llama3.1:8b drew its line on
    the report's latency chart down to ~50 ms, faster than ever: the simulated application's
    requests (OTLP spans, answered at once and empty) were pooled with the probes, which the
    overview's sparkline, the status and the availability chart leave out. An application's
    requests are not the probes' like-with-like measurement; they have the Traffic charts."""
    at = now()
    probes = recent("gpt-4o-mini", 30, at=at, provider="openai", target="openai/gpt-4o-mini")
    spans = [
        telemetry(
            0,
            id=f"span-{i}",
            ts=at - timedelta(seconds=40 - i),
            provider="openai",
            model="gpt-4o-mini",
            target="shop",
            source="traffic",
            prompt_id="traffic:chat",
            service_name="shop",
            latency_ms=5.0,
        )
        for i in range(30)
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [*probes, *spans])
    trends = TrendQueries(api.store)
    end = at + timedelta(minutes=1)
    [line] = (await trends.comparison([("openai", "gpt-4o-mini")], "latency_ms", 1, end)).lines
    assert sum(p.n for p in line.points) == 30
    assert min(p.lo or 0.0 for p in line.points) >= 100.0
    for by in ("prompt", "target"):
        parts = (await trends.comparison([("openai", "gpt-4o-mini")], "latency_ms", 1, end, by=by)).lines
        assert [x.part for x in parts] == (["simple-1"] if by == "prompt" else ["openai/gpt-4o-mini"])
