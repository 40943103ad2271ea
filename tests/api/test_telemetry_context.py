"""The API answers the alerter's questions about its telemetry over NATS (the alerter reads none
of the API's tables): the probes of an incident, for its analysis, and a bad request's error."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS

from llmscope.alerter.api_view import ApiView
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
