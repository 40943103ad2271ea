"""nats-server killed (SIGKILL) in the middle of batched ``POST /api/stats``: every event that was
answered 202 is in the stream after the restart, and a 503 means "not confirmed", not "lost" nor
"refused": the same body sent again is stored, each event exactly once. The in-process persister
reconnects by itself and stores every event in Postgres once."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import nats
import pytest
from nats.js.errors import NotFoundError

from llmscope.api.settings import ApiSettings
from llmscope.bus.settings import BusSettings
from llmscope.config.env import Secret
from llmscope.proto import subjects
from llmscope.stack.embedded import EmbeddedNats
from tests.alerter.harness import eventually
from tests.api.conftest import API_KEY, serve

pytestmark = pytest.mark.fault

BATCH = 40
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


def batch(n: int) -> list[dict[str, object]]:
    return [
        {
            "id": f"b{n:04d}-{i:02d}",
            "ts": (T0 + timedelta(milliseconds=n * BATCH + i)).isoformat(),
            "provider": "ollama",
            "model": f"m{i % 4}",
            "target": "local",
            "host": "gpu-1",
            "prompt_id": "p1",
            "prompt_hash": "ab" * 32,
            "latency_ms": 100.0 + i,
        }
        for i in range(BATCH)
    ]


async def stored_ids(url: str) -> list[str]:
    """Every telemetry message's Nats-Msg-Id, duplicates included (one per stored message)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        ids: list[str] = []
        seq = 1
        while True:
            try:
                msg = await js.get_msg(subjects.STREAM_TELEMETRY, seq=seq, next=True)
            except NotFoundError:
                return ids
            assert msg.seq is not None
            seq = msg.seq + 1
            ids.append((msg.headers or {})["Nats-Msg-Id"])
    finally:
        await nc.close()


async def test_nats_killed_mid_batch_loses_nothing_accepted(
    embedded_nats: EmbeddedNats, database_url: str
) -> None:
    settings = ApiSettings(
        database_url=Secret(database_url),
        api_key=Secret(API_KEY),
        bus=BusSettings(nats_url=embedded_nats.url),
        port=0,
        persister=True,  # and the persister, consuming from the same server, goes on after it
    )
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
        pool = api.store.pool

        async def all_in_postgres() -> bool:
            return bool(await pool.fetchval("SELECT count(*) FROM telemetry") == len(ids))

        await eventually(all_in_postgres, within=90, what="the persister storing every event after the kill")
        assert {r["id"] for r in await pool.fetch("SELECT id FROM telemetry")} == set(ids)
        assert await pool.fetchval("SELECT sum(n) FROM telemetry_minute") == len(ids)
        assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
