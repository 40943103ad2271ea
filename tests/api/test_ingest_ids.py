"""Ids of ingested events the client gave none: a resend (a client's retry after a timeout, an
exporter's retry) is stored and counted once, and two different measurements never share an id.
Against the real API, nats-server, JetStream and the persister into Postgres."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics, ScopeMetrics
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourcePb

from llmscope.api.settings import ApiSettings
from llmscope.config.env import Secret
from llmscope.proto import subjects
from tests.alerter.harness import eventually
from tests.api.conftest import Api, serve
from tests.api.otlp_payloads import chat, export, span
from tests.api.test_otlp_metrics import DURATION, GENAI, attrs, histogram, histogram_events, point, request
from tests.api.test_otlp_receiver import INGEST_KEY, PROTOBUF

PROBE = {"provider": "ollama", "model": "m", "target": "t", "prompt_id": "p", "prompt_hash": "h"}


@pytest.fixture
async def ingesting_api(settings: ApiSettings) -> AsyncIterator[Api]:
    """The app with the OTLP receiver on and the in-process persister storing into Postgres."""
    changed = dataclasses.replace(settings, ingest_key=Secret(INGEST_KEY), persister=True)
    async with serve(changed) as running:
        yield running


async def stream_messages(nats_url: str, stream: str = subjects.STREAM_TELEMETRY) -> int:
    """What the SPC engine reads: the messages JetStream holds."""
    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    finally:
        await nc.close()


async def stored(api: Api, n: int) -> None:
    """Wait until the persister has stored ``n`` raw rows (and so their minute rollups)."""

    async def rows() -> bool:
        return bool(await api.store.pool.fetchval("SELECT count(*) FROM telemetry") == n)

    await eventually(rows, what=f"{n} telemetry rows")


async def counted(api: Api) -> tuple[int, int]:
    """Raw rows and the sum of the minute rollups' ``n``."""
    pool = api.store.pool
    rows = await pool.fetchval("SELECT count(*) FROM telemetry")
    minutes = await pool.fetchval("SELECT coalesce(sum(n), 0) FROM telemetry_minute")
    return int(rows), int(minutes)


async def post(api: Api, body: Any) -> list[str]:
    r = await api.client.post("/api/stats", json=body)
    assert r.status_code == 202, r.text
    ids: list[str] = r.json()["ids"]
    return ids


async def test_a_retried_post_without_an_id_is_stored_and_counted_once(
    ingesting_api: Api, nats_url: str
) -> None:
    """The first attempt was stored and its 202 lost: the resend has the same id, JetStream keeps
    one message (what the SPC engine charts), the persister one row, the minute n = 1."""
    api = ingesting_api
    ts = datetime.now(UTC).replace(microsecond=0).isoformat()  # a client that rounds to the second
    event = {**PROBE, "ts": ts, "latency_ms": 412.0}
    first = await post(api, event)
    again = await post(api, dict(reversed(event.items())))  # a client that orders its keys anew
    assert first == again
    assert await stream_messages(nats_url) == 1
    await stored(api, 1)
    assert await counted(api) == (1, 1)


async def test_a_post_without_an_id_or_a_ts_is_never_taken_for_another(
    ingesting_api: Api, nats_url: str
) -> None:
    """Without a ts the event is timed on arrival: two alike are two measurements, stored both
    (so a resend of one is too: the documented limit; send a ts or an id)."""
    api = ingesting_api
    failed = {**PROBE, "status": "timeout", "error": "no answer in 30 s"}
    ids = await post(api, failed) + await post(api, failed)
    assert len(set(ids)) == 2
    await stored(api, 2)
    assert await counted(api) == (2, 2)
    assert await stream_messages(nats_url) == 2


async def test_events_that_differ_in_one_value_are_both_stored(ingesting_api: Api, nats_url: str) -> None:
    """Every field the client sends is part of the id: one measured value apart, or two failed
    probes with no latency in the same second told apart by their error or host alone, are
    different events; only an event alike in every field is the same event."""
    api = ingesting_api
    ts = datetime.now(UTC).replace(microsecond=0).isoformat()
    failed = {**PROBE, "ts": ts, "status": "timeout", "error": "no answer in 30 s"}
    batch = [
        {**PROBE, "ts": ts, "latency_ms": 100.0},
        {**PROBE, "ts": ts, "latency_ms": 100.5},
        {**PROBE, "ts": ts, "latency_ms": 100.0, "eval_count": 7},
        failed,
        {**failed, "error": "connection reset"},
        {**failed, "host": "gpu-2"},
        {**failed, "ts": ts.replace("+00:00", ".000001+00:00")},  # a microsecond later
    ]
    ids = await post(api, batch)
    assert len(set(ids)) == len(batch)
    await stored(api, len(batch))
    assert await counted(api) == (len(batch), len(batch))
    # The same failure sent again is no new measurement, even in the same batch.
    assert await post(api, [failed, failed]) == [ids[3], ids[3]]
    assert await stream_messages(nats_url) == len(batch)


async def test_an_otlp_re_export_of_the_same_spans_is_counted_once(ingesting_api: Api, nats_url: str) -> None:
    """Span ids are the identity: the exporter's retry of a whole export adds no row, no minute
    count and no message for the SPC engine; a span of another trace with the same span id is
    another span."""
    api = ingesting_api
    start = (datetime.now(UTC).timestamp() - 60) * 1e9
    spans = [span(n, chat(n), start_ns=int(start)) for n in (1, 2)]
    other_trace = span(3, chat(3), start_ns=int(start))
    other_trace.span_id = spans[0].span_id
    body = export(*spans, other_trace).SerializeToString()
    for _ in range(2):
        r = await api.anon.post("/v1/traces", content=body, headers=PROTOBUF)
        assert r.status_code == 200, r.content
    assert await stream_messages(nats_url) == 3
    await stored(api, 3)
    assert await counted(api) == (3, 3)


def _scoped(name: str) -> ScopeMetrics:
    scope = ScopeMetrics(scope=InstrumentationScope(name=name))
    scope.metrics.append(histogram(DURATION, point((1, 0, 0, 0, 0), GENAI)))
    return scope


async def test_otlp_data_points_of_one_collection_are_never_taken_for_each_other(
    ingesting_api: Api, nats_url: str
) -> None:
    """An SDK stamps every data point of a collection with the same window: two local servers
    told apart by ``server.port`` alone, two meters recording the same instrument, or two
    instances of a service are three series, not one; the retried export is still stored once."""
    api = ingesting_api
    ports = [
        point((1, 0, 0, 0, 0), GENAI | {"server.address": "localhost"}),
        point((0, 2, 0, 0, 0), GENAI | {"server.address": "localhost"}),
    ]
    ports[0].attributes.append(KeyValue(key="server.port", value=AnyValue(int_value=11434)))
    ports[1].attributes.append(KeyValue(key="server.port", value=AnyValue(int_value=11435)))
    body = request(histogram(DURATION, *ports))
    body.resource_metrics[0].scope_metrics.extend([_scoped("openai-v2"), _scoped("my-wrapper")])
    for instance in ("pod-a", "pod-b"):
        body.resource_metrics.append(
            ResourceMetrics(
                resource=ResourcePb(
                    attributes=attrs({"service.name": "checkout", "service.instance.id": instance})
                ),
                scope_metrics=[_scoped("openai-v2")],
            )
        )
    for _ in range(2):
        r = await api.anon.post("/v1/metrics", content=body.SerializeToString(), headers=PROTOBUF)
        assert r.status_code == 200, r.content
    events = await histogram_events(nats_url)
    assert len(events) == 6
    assert len({e.id for e in events}) == 6
    assert sorted(e.count for e in events) == [1, 1, 1, 1, 1, 2]


async def test_the_openapi_document_says_when_two_events_share_an_id(api: Api) -> None:
    schemas = (await api.anon.get("/openapi.json")).json()["components"]["schemas"]
    sent = schemas["TelemetryIn"]["properties"]
    assert "alike in every field" in sent["id"]["description"]
    assert "fresh" in sent["ts"]["description"]
    # The wire schema (the bus's) is not the request's: its description is the event's own.
    assert schemas["TelemetryEvent"]["properties"]["id"]["description"] == "globally unique event id"


async def test_an_idempotency_key_makes_a_resend_without_a_ts_safe(ingesting_api: Api, nats_url: str) -> None:
    """Events without a ts are timed on arrival; with the request's ``Idempotency-Key`` their ids
    come from the key, their position and their content: the resend of a request is stored once
    (the first attempt's time kept), another request is another, even alike in every field."""
    api = ingesting_api
    failed = {**PROBE, "status": "timeout", "error": "no answer in 30 s"}
    batch = [failed, failed, {**failed, "latency_ms": 30_000.0}]
    key = {"Idempotency-Key": "9b2d6f0e-attempts-of-one-request"}
    sent = []
    for _ in range(2):  # the first attempt stored, its 202 lost: the client sends it again
        r = await api.client.post("/api/stats", json=batch, headers=key)
        assert r.status_code == 202, r.text
        sent.append(r.json())
    assert sent[0]["ids"] == sent[1]["ids"]
    assert len(set(sent[0]["ids"])) == 3  # two alike in one request are two measurements
    assert sent[1]["duplicates"] == 3
    other = await api.client.post("/api/stats", json=failed, headers={"Idempotency-Key": "another-request"})
    assert other.json()["ids"][0] not in sent[0]["ids"]
    # A ts rounded to the second: two requests alike in every field are two with their own keys.
    ts = datetime.now(UTC).replace(microsecond=0).isoformat()
    for n in (1, 2):
        r = await api.client.post(
            "/api/stats", json={**failed, "ts": ts}, headers={"Idempotency-Key": f"k-{n}"}
        )
        assert r.json()["duplicates"] == 0
    # An event with an id keeps it, whatever the key (the front door's lane answers it).
    complete = {**PROBE, "type": "telemetry.v1", "id": "mine-1", "ts": ts}
    r = await api.client.post("/api/stats", json=complete, headers=key)
    assert r.json()["ids"] == ["mine-1"]
    assert await stream_messages(nats_url) == 7
    await stored(api, 7)
    assert await counted(api) == (7, 7)


@pytest.mark.parametrize("value", ["", "k" * 256])
async def test_an_idempotency_key_that_is_no_key_is_a_422_naming_it(api: Api, value: str) -> None:
    complete = {**PROBE, "type": "telemetry.v1", "id": "mine-2", "ts": datetime.now(UTC).isoformat()}
    for body in (PROBE, complete):  # the route's general path and the front door's lane
        r = await api.client.post("/api/stats", json=body, headers={"Idempotency-Key": value})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["field"] == "Idempotency-Key"
    r = await api.client.post(
        "/api/stats", json=PROBE, headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    )
    assert r.status_code == 422
