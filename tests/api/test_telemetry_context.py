"""The API answers the alerter's questions about its telemetry over NATS (the alerter reads none
of the API's tables): the probes of an incident, for its analysis, and a bad request's error."""

from __future__ import annotations

import uuid

import msgspec
from nats.aio.client import Client as NATS

from llmscope.alerter.api_view import ApiView
from llmscope.alerter.model import Alert
from llmscope.api.persister import store_telemetry
from llmscope.proto import subjects
from llmscope.proto.telemetry_context import PointsReply, PointsRequest
from tests.api.conftest import Api
from tests.api.factories import telemetry, violation


async def test_the_api_answers_an_incidents_points_and_refuses_a_bad_request(api: Api, nc: NATS) -> None:
    points = [telemetry(i, latency_ms=100.0 + i) for i in range(6)]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, points)
    ev = violation(points[4], point_ids=("t000003", "t000004", "missing"))
    got = await ApiView(nc).telemetry_points([ev])
    assert sorted((p.id, p.latency_ms, p.prompt_id) for p in got) == [
        ("t000003", 103.0, "simple-1"),
        ("t000004", 104.0, "simple-1"),
    ]
    reply = await nc.request(subjects.api_telemetry_points(), b'{"ids": 3}', timeout=5)
    bad = msgspec.json.decode(reply.data, type=PointsReply)
    assert bad.status == "error"
    assert "bad request" in bad.error


async def test_a_large_incidents_points_come_in_requests_nats_can_answer(api: Api, nc: NATS) -> None:
    # About 150 bytes a probe: one reply for all of them would pass NATS's 1 MB max payload.
    points = [telemetry(i) for i in range(8000)]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, points)
    ev = violation(points[-1], point_ids=tuple(p.id for p in points))
    got = await ApiView(nc, timeout=20).telemetry_points([ev])
    assert sorted(p.id for p in got) == [p.id for p in points]
    # Asked at once, the API answers that it is too much (at once, not after the asker's timeout).
    whole = msgspec.json.encode(PointsRequest(ids=tuple(p.id for p in points)))
    reply = await nc.request(subjects.api_telemetry_points(), whole, timeout=20)
    too_large = msgspec.json.decode(reply.data, type=PointsReply)
    assert too_large.status == "error"
    assert "too large" in too_large.error


async def test_a_large_deliverys_context_and_a_cascades_outages_all_come_back(api: Api, nc: NATS) -> None:
    """Asked all at once, each reply passed NATS's 1 MB max payload: none came, and the page or
    analysis went without any context."""
    series = [telemetry(i, id=f"{uuid.UUID(int=i)}") for i in range(30)]
    models = [f"m{m:02d}" for m in range(40)]
    failed = [
        telemetry(
            1000 + i,
            id=f"{uuid.UUID(int=1000 + i)}",
            model=models[i % 40],
            status="timeout",
            error="connection to the endpoint timed out after 30 s: " + "x" * 80,
            latency_ms=None,
            ttft_ms=None,
            tokens_per_s=None,
        )
        for i in range(40 * 200)
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, series)
        await store_telemetry(conn, failed)
    view = ApiView(nc, timeout=20)
    # 500 violations of one series (a delivery of a long group): 21 probes around each.
    events = [violation(series[15], id=f"ep{i:03d}") for i in range(500)]
    context = await view.context_for(events)
    assert len(context) == 500
    assert all(len(points) == 21 for points in context.values())
    # A host cascade: every model's outage, 200 failed probes each, for the analysis.
    outages = [
        Alert(violation(failed[m], id=f"out{m:02d}", metric="availability", point_ts=(failed[m].ts,)))
        for m in range(40)
    ]
    got = await view.outages_for(outages, failed[-1].ts, recent=200)
    assert sorted(got) == [f"out{m:02d}" for m in range(40)]
    assert {(o.count, len(o.recent)) for o in got.values()} == {(200, 200)}
