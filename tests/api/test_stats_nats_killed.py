"""nats-server killed (SIGKILL) in the middle of batched ``POST /api/stats``: every event that was
answered 202 is in the stream after the restart, and a 503 means "not confirmed", not "lost" nor
"refused": the same body sent again is stored, each event exactly once. The in-process persister
reconnects by itself and stores every event in Postgres once."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest

from llmscope.stack.embedded import EmbeddedNats
from tests.alerter.harness import eventually
from tests.api.conftest import serve
from tests.api.faults import assert_stored_once, persister_settings, stored_ids, telemetry_batch

pytestmark = pytest.mark.fault

BATCH = 40
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


def batch(n: int) -> list[dict[str, object]]:
    return telemetry_batch(n, prefix="b", size=BATCH, t0=T0, models=4)


async def test_nats_killed_mid_batch_loses_nothing_accepted(
    embedded_nats: EmbeddedNats, database_url: str
) -> None:
    # The persister, consuming from the same server, goes on after the kill too.
    settings = persister_settings(database_url, embedded_nats.url)
    accepted: set[str] = set()
    unconfirmed: dict[int, list[dict[str, object]]] = {}

    async with serve(settings) as api:

        async def post(n: int) -> None:
            body = batch(n)
            r = await api.client.post("/api/stats", json=body, timeout=60)
            if r.status_code == 202:
                accepted.update(r.json()["ids"])
            else:
                # Only "not confirmed" is allowed: a 500, or a refusal of valid data, is a defect.
                assert r.status_code == 503, (r.status_code, r.text[:300])
                assert "not confirmed" in r.json()["detail"]
                assert r.json()["ids"] == [e["id"] for e in body]
                assert int(r.headers["retry-after"]) > 0
                unconfirmed[n] = body

        async def sender(lane: int, stop: asyncio.Event) -> None:
            n = lane
            while not stop.is_set():
                await post(n)
                n += 4

        stop = asyncio.Event()
        senders = [asyncio.create_task(sender(lane, stop)) for lane in range(4)]
        try:
            await eventually(
                lambda: len(accepted) >= 10 * BATCH, within=60, what="batches accepted before the kill"
            )
            await asyncio.to_thread(embedded_nats.kill)  # mid-publish: four batches are in flight
            await eventually(lambda: len(unconfirmed) >= 4, within=60, what="503s while NATS is dead")
            await asyncio.to_thread(embedded_nats.start)
            await eventually(lambda: len(accepted) >= 20 * BATCH, within=60, what="batches accepted again")
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*senders), 60)

        # Nothing that was answered 202 is missing, and nothing is stored twice.
        ids = await stored_ids(embedded_nats.url)
        assert accepted <= set(ids), f"{len(accepted - set(ids))} accepted events lost"
        assert len(ids) == len(set(ids))

        # A 503 was not a refusal: the same bodies sent again are accepted and stored once,
        # including events that had reached the stream before their ack was lost.
        retried: set[str] = set()
        for body in unconfirmed.values():
            r = await api.client.post("/api/stats", json=body)
            assert r.status_code == 202, r.text[:300]
            retried.update(r.json()["ids"])
        ids = await stored_ids(embedded_nats.url)
        assert (accepted | retried) <= set(ids)
        assert len(ids) == len(set(ids)), "an event stored twice"

        # The in-process persister lived through the kill: every event in the stream reaches
        # Postgres once, counted once in the rollups, and nothing is dead-lettered.
        await assert_stored_once(
            api.store.pool, ids, within=90, what="the persister storing every event after the kill"
        )
