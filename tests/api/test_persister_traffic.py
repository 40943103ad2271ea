"""Traffic fields stored: OTLP spans -> POST /v1/traces -> JetStream -> the persister -> rows, with
``source``, ``service_name``, ``provider_name``, ``response_model``, ``error_type`` and
``trace_id``; both insert paths (array parameters and COPY) keep them."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import msgspec
import pytest

from llmscope.api.persister import COPY_MIN_ROWS, store_telemetry
from llmscope.api.settings import ApiSettings
from llmscope.config.env import Secret
from llmscope.proto.telemetry import TelemetryEvent
from tests.alerter.harness import eventually
from tests.api.conftest import Api, serve
from tests.api.otlp_payloads import chat, export, ids, span
from tests.api.test_otlp_receiver import INGEST_KEY, PROTOBUF

TRAFFIC = ("source", "service_name", "provider_name", "response_model", "error_type", "trace_id")


@pytest.fixture
async def otlp_api(settings: ApiSettings) -> AsyncIterator[Api]:
    """The API with the OTLP receiver on and the persister running."""
    changed = dataclasses.replace(settings, ingest_key=Secret(INGEST_KEY), persister=True)
    async with serve(changed) as running:
        yield running


async def test_traffic_fields_round_trip_from_otlp_to_rows(otlp_api: Api) -> None:
    request = export(
        span(1, chat(1, **{"gen_ai.provider.name": "gcp.gemini", "gen_ai.response.model": "gemini-2.5"})),
        span(2, chat(2, **{"error.type": "RateLimitError"}), error=True),
        service="billing",
    )
    r = await otlp_api.anon.post("/v1/traces", content=request.SerializeToString(), headers=PROTOBUF)
    assert r.status_code == 200, r.content
    wanted = {f"otlp-{ids(n)[0].hex()}{ids(n)[1].hex()}": n for n in (1, 2)}
    pool = otlp_api.store.pool

    async def stored() -> bool:
        return bool(
            await pool.fetchval("SELECT count(*) FROM telemetry WHERE id = ANY($1)", list(wanted)) == 2
        )

    await eventually(stored, what="the traffic rows")
    rows = {
        r["id"]: tuple(r[c] for c in TRAFFIC)
        for r in await pool.fetch(
            f"SELECT id, {', '.join(TRAFFIC)} FROM telemetry WHERE id = ANY($1)", list(wanted)
        )
    }
    by_span = {wanted[k]: v for k, v in rows.items()}
    assert by_span[1] == ("traffic", "billing", "gcp.gemini", "gemini-2.5", None, ids(1)[0].hex())
    assert by_span[2] == (
        "traffic",
        "billing",
        "openai",
        "gpt-4o-mini-2024-07-18",
        "RateLimitError",
        ids(2)[0].hex(),
    )


async def test_both_insert_paths_store_the_traffic_fields_and_probes_keep_their_defaults(
    otlp_api: Api,
) -> None:
    base = {
        "type": "telemetry.v1",
        "provider": "openai",
        "model": "m",
        "target": "t",
        "prompt_id": "traffic:chat",
        "prompt_hash": "",
        "latency_ms": 10.0,
    }
    pool = otlp_api.store.pool
    for size in (3, COPY_MIN_ROWS):
        events = [
            msgspec.convert(
                {
                    **base,
                    "id": f"x{size}-{i}",
                    "ts": "2026-01-01T00:00:00Z",
                    "source": "traffic",
                    "service_name": f"svc{i}",
                    "provider_name": "p",
                    "response_model": "rm",
                    "error_type": "E" if i % 2 else None,
                    "trace_id": f"{i:032x}",
                },
                TelemetryEvent,
            )
            for i in range(size)
        ]
        probe = msgspec.convert(
            {**base, "id": f"probe{size}", "ts": "2026-01-01T00:00:00Z", "prompt_id": "p"}, TelemetryEvent
        )
        async with pool.acquire() as conn:
            assert await store_telemetry(conn, [*events, probe]) == size + 1
        got = await pool.fetch(
            f"SELECT id, {', '.join(TRAFFIC)} FROM telemetry WHERE id LIKE $1 OR id = $2 ORDER BY id",
            f"x{size}-%",
            f"probe{size}",
        )
        rows = {r["id"]: tuple(r[c] for c in TRAFFIC) for r in got}
        for i, ev in enumerate(events):
            assert rows[ev.id] == ("traffic", f"svc{i}", "p", "rm", "E" if i % 2 else None, f"{i:032x}")
        assert rows[probe.id] == ("probe", "", "", "", None, "")
