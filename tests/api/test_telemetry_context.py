"""The API answers the alerter's questions about its telemetry over NATS (the alerter reads none
of the API's tables): the probes of an incident, for its analysis, and a bad request's error."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec
from nats.aio.client import Client as NATS

from llmscope.alerter.api_view import ApiView
from llmscope.alerter.model import Alert
from llmscope.api.persister import store_telemetry
from llmscope.api.telemetry_context import fit_outages
from llmscope.proto import subjects
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.telemetry_context import (
    FailedProbeRecord,
    OutageRecord,
    OutageReply,
    PointsReply,
    PointsRequest,
)
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


def failed_probe(i: int, model: str, error: str) -> TelemetryEvent:
    return telemetry(
        i,
        id=f"{uuid.UUID(int=i)}",
        model=model,
        status="http_5xx",
        http_status=503,
        error=error,
        latency_ms=None,
        ttft_ms=None,
        tokens_per_s=None,
    )


async def test_a_cascades_outages_with_the_longest_errors_still_come_back_their_errors_cut(
    api: Api, nc: NATS
) -> None:
    """The worst case an analysis asks for: 200 failed probes of each outage, 2,000-character
    errors (4 bytes each in UTF-8: the most a stored error holds), as many outages as one request
    carries (5 at 200 probes each). Whole, the reply is about 8 MB: the API answered "reply too
    large" and the analysis went without its outages."""
    models = [f"m{m}" for m in range(5)]
    errors = {m: f"{m}: upstream said " + "😱" * 2000 for m in models}
    failed = [failed_probe(i, models[i % 5], errors[models[i % 5]][:2000]) for i in range(5 * 200)]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, failed)
    outages = [
        Alert(violation(failed[m], id=f"out{m}", metric="availability", point_ts=(failed[m].ts,)))
        for m in range(5)
    ]
    got = await ApiView(nc, timeout=20).outages_for(outages, failed[-1].ts, recent=200)
    assert sorted(got) == [f"out{m}" for m in range(5)]
    assert {(o.count, len(o.recent)) for o in got.values()} == {(200, 200)}
    for m in range(5):
        for p in got[f"out{m}"].recent:
            assert p.error is not None
            kept, marker = p.error.split("…", 1)
            assert marker == "(truncated, 2,000 chars)"
            assert errors[f"m{m}"].startswith(kept)
            assert len(kept) > 100  # about 1 MB shared by 1,000 errors: some 250 characters each
    # Short errors are not cut: only a reply that would not fit is shortened.
    few = await ApiView(nc, timeout=20).outages_for(outages[:1], failed[-1].ts, recent=3)
    assert [p.error for p in few["out0"].recent] == [errors["m0"][:2000]] * 3


def test_an_outage_reply_that_cannot_fit_even_with_its_errors_cut_keeps_its_newest_probes() -> None:
    at = datetime(2026, 3, 2, tzinfo=UTC)
    probes = tuple(
        FailedProbeRecord(ts=at - timedelta(seconds=i), status="timeout", error="e" * 2000) for i in range(50)
    )
    reply = OutageReply(status="ok", outages={"ep": OutageRecord(count=70, since=at, recent=probes)})
    assert fit_outages(reply, 10**6) is reply
    cut = fit_outages(reply, 20_000)
    assert cut is not None
    assert len(msgspec.json.encode(cut)) <= 20_000
    assert [p.ts for p in cut.outages["ep"].recent] == [p.ts for p in probes]
    assert all(p.error and p.error.endswith("…(truncated, 2,000 chars)") for p in cut.outages["ep"].recent)
    fewer = fit_outages(reply, 2_000)
    assert fewer is not None
    assert len(msgspec.json.encode(fewer)) <= 2_000
    kept = fewer.outages["ep"].recent
    assert 0 < len(kept) < 50
    assert [p.ts for p in kept] == [p.ts for p in probes[: len(kept)]]  # the newest
    assert fewer.outages["ep"].count == 70
    assert fit_outages(reply, 50) is None


async def test_a_chunk_of_points_too_large_for_one_reply_is_asked_again_in_halves(api: Api, nc: NATS) -> None:
    """1,000 probes with the longest names a probe may have (a 128-character id, model and prompt
    names as long as a subject token allows, of characters JSON escapes: 341 quotes, 682 bytes
    each): about 1.6 MB in one reply. The API answered "reply too large" and the analysis went
    without any of them."""
    points = [
        telemetry(i, id=f"{i:04d}" + "x" * 124, model='"' * 340 + "abcde"[i % 5], prompt_id='"' * 341)
        for i in range(1000)
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, points)
    ev = violation(points[-1], point_ids=tuple(p.id for p in points))
    got = await ApiView(nc, timeout=20).telemetry_points([ev])
    assert sorted(p.id for p in got) == [p.id for p in points]
    assert {p.prompt_id for p in got} == {'"' * 341}
