"""The persister waits out a Postgres outage of any length and dead-letters only bad data."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from nats.js import JetStreamContext

from llmscope.api.db import create_pool
from llmscope.api.persister import Persister, persister_consumer_options
from llmscope.bus.publisher import Publisher
from llmscope.proto import subjects
from llmscope.stack.embedded import EmbeddedPostgres
from tests.alerter.harness import eventually
from tests.api.factories import telemetry, violation

pytestmark = pytest.mark.fault

# The old limits, shortened: they dead-lettered a message after its 3rd failed try (about 0.3 s).
OLD_TRIES = 3
SHORTENED: dict[str, Any] = {
    "backoff": (0.1, 0.2),
    "max_deliver": OLD_TRIES,
    "fetch_timeout": 0.2,
    "batch_size": 20,
    "outage_summary_s": 0.5,
}


@pytest.fixture
async def running(
    own_postgres: EmbeddedPostgres, js: JetStreamContext
) -> AsyncIterator[tuple[Persister, asyncpg.Pool]]:
    pool = await create_pool(own_postgres.create_database("persister"), min_size=1, max_size=4)
    persister = Persister(
        pool=pool, js=js, publisher=Publisher(js), options=persister_consumer_options(**SHORTENED)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(persister.run(stop))
    try:
        yield persister, pool
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await pool.close()


async def test_postgres_down_longer_than_the_old_give_up_time_loses_nothing(
    running: tuple[Persister, asyncpg.Pool],
    own_postgres: EmbeddedPostgres,
    js: JetStreamContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    persister, pool = running
    publisher = Publisher(js)
    before = telemetry(0)
    await publisher.publish(subjects.telemetry(before.provider, before.model), before)
    await eventually(lambda: persister.telemetry.processed == 1, what="the first event stored")

    caplog.set_level(logging.INFO, logger="llmscope.bus.consumer")
    await asyncio.to_thread(own_postgres.stop)
    down = time.monotonic()
    points = [telemetry(i) for i in range(1, 61)]
    opens = [violation(p) for p in points[:5]]
    for ev in points:
        await publisher.publish(subjects.telemetry(ev.provider, ev.model), ev)
    for v in opens:
        await publisher.publish(subjects.violations(v.provider, v.model, v.rule), v)
    # Many more failed tries than the old limit allowed, on both streams, with nothing given up.
    await eventually(
        lambda: (
            min(persister.telemetry.unavailable_tries, persister.violations.unavailable_tries) > 3 * OLD_TRIES
        ),
        what="the consumers waiting out the outage",
    )
    assert persister.telemetry.dead_lettered == persister.violations.dead_lettered == 0
    await asyncio.to_thread(own_postgres.start)
    outage_s = time.monotonic() - down

    async def all_stored() -> bool:
        n = await pool.fetchval("SELECT count(*) FROM telemetry")
        vs = await pool.fetchval("SELECT count(*) FROM violations")
        return bool(n == 61 and vs == 5)

    await eventually(all_stored, within=30, what="every event stored after the outage")
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
    assert await pool.fetchval("SELECT sum(n) FROM telemetry_minute") == 61  # each counted once
    for consumer in (persister.telemetry, persister.violations):
        assert consumer.dead_lettered == 0
        assert consumer.outages == 1
    # One line when the outage starts and one when it ends, per consumer; no traceback per try
    # (a 150 s outage wrote 454,000 lines, issue 9).
    records = [r for r in caplog.records if r.name == "llmscope.bus.consumer"]
    started = [r for r in records if "store unavailable" in r.getMessage()]
    ended = [r for r in records if "store available again" in r.getMessage()]
    assert len(started) == 2
    assert len(ended) == 2
    # ... and a summary now and then while it lasts (every outage_summary_s), not one per try.
    summaries = [r for r in records if "store still unavailable" in r.getMessage()]
    most = 2 * (outage_s / SHORTENED["outage_summary_s"] + 1)
    assert 2 <= len(summaries) <= most, (len(summaries), outage_s)
    assert not [r for r in records if r.exc_info]
    info = await js.consumer_info(subjects.STREAM_TELEMETRY, "api-persister-telemetry")
    assert info.num_pending == 0


async def test_only_the_events_postgres_refuses_are_dead_lettered_with_the_reason(
    running: tuple[Persister, asyncpg.Pool], js: JetStreamContext
) -> None:
    persister, pool = running
    # A real refusal by Postgres for one event's data (a CHECK constraint), in a batch of good ones.
    await pool.execute("ALTER TABLE telemetry ADD CONSTRAINT no_poison CHECK (host <> 'poison')")
    publisher = Publisher(js)
    events = [telemetry(i, host="poison" if i == 3 else "gpu-1") for i in range(10)]
    for ev in events:
        await publisher.publish(subjects.telemetry(ev.provider, ev.model), ev)

    async def settled() -> bool:
        n = await pool.fetchval("SELECT count(*) FROM telemetry")
        dead = await pool.fetchval("SELECT count(*) FROM dead_letters")
        return bool(n == 9 and dead == 1)

    await eventually(settled, what="nine stored and one dead-lettered")
    row = await pool.fetchrow("SELECT reason, payload FROM dead_letters")
    assert row is not None
    assert "refused by Postgres" in row["reason"]
    assert "no_poison" in row["reason"]
    assert events[3].id in row["payload"]
    assert persister.telemetry.dead_lettered == 1
