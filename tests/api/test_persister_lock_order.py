"""Two telemetry batches stored at once never wait for each other in a cycle.

The persister stores two full batches at once (``TELEMETRY_CONCURRENT``), each on its own
connection, with a lock (``serial``) around their aggregates and COMMITs. A redelivery can put
twins of one batch's events in the other. A trigger that sleeps on chosen ids holds each COPY
mid-way, so the interleavings that used to deadlock happen every time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from llmscope.api.db import create_pool
from llmscope.api.persister import COPY_MIN_ROWS, store_telemetry
from llmscope.proto.telemetry import TelemetryEvent
from tests.alerter.harness import eventually
from tests.api.factories import telemetry

# Inserting a row whose id starts with "slow-<seconds>-" sleeps that long first (telemetry only:
# the persister's temporary table has no trigger).
SLOW_INSERTS = """
CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id LIKE 'slow-%' THEN
        PERFORM pg_sleep(split_part(NEW.id, '-', 2)::float);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER slow_insert BEFORE INSERT ON telemetry FOR EACH ROW EXECUTE FUNCTION slow_insert();
"""


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    # A statement that waits longer than this failed: a wait Postgres cannot see is never broken.
    pool = await create_pool(database_url, min_size=2, max_size=4, statement_timeout_s=20)
    try:
        await pool.execute(SLOW_INSERTS)
        yield pool
    finally:
        await pool.close()


def _event(event_id: str, i: int) -> TelemetryEvent:
    return telemetry(i, id=event_id, model=f"m{i % 3}")


def _fillers(prefix: str, n: int, start: int) -> list[TelemetryEvent]:
    return [_event(f"{prefix}{i:04d}", start + i) for i in range(n)]


async def _rollup_total(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT coalesce(sum(n), 0) FROM telemetry_minute"))


async def test_twins_in_two_batches_stored_at_once_do_not_deadlock(pool: asyncpg.Pool) -> None:
    """Batch A holds e-1 then e-2, batch B their twins the other way round, each with a slow row
    between them: taken in batch order, A locks e-1 and B e-2, then each waits for the other's
    (Postgres aborts one: "deadlock detected"). In id order one waits for the other's COMMIT."""
    x, y = _event("e-1", 1), _event("e-2", 2)
    a = [x, _event("slow-1-a", 3), y, *_fillers("fa-", COPY_MIN_ROWS, 10)]
    b = [y, _event("slow-1-b", 4), x, *_fillers("fb-", COPY_MIN_ROWS, 500)]
    serial = asyncio.Lock()
    async with pool.acquire() as one, pool.acquire() as two:
        stored = await asyncio.gather(
            store_telemetry(one, a, serial=serial), store_telemetry(two, b, serial=serial)
        )
    assert sum(stored) == len(a) + len(b) - 2  # e-1 and e-2 once each
    assert await pool.fetchval("SELECT count(*) FROM telemetry") == len(a) + len(b) - 2
    assert await _rollup_total(pool) == len(a) + len(b) - 2


async def test_a_batch_holding_serial_never_waits_for_a_row_of_the_batch_waiting_for_it(
    pool: asyncpg.Pool,
) -> None:
    """A's COPY has inserted b-r and is held by a slow row; B's COPY finds a-dup stored already
    and B writes its new rows through the temporary table. If B took ``serial`` before inserting
    them, it would wait for A's b-r while A, its COPY done, waits for ``serial``: a wait Postgres
    cannot see (only the statement timeout would end it). B inserts first, then takes it."""
    async with pool.acquire() as conn:
        await store_telemetry(conn, [_event("a-dup", 1)])
    a = [_event("b-r", 2), *_fillers("fa-", COPY_MIN_ROWS, 10), _event("slow-3-a", 3)]
    b = [_event("a-dup", 1), _event("b-r", 2), *_fillers("fb-", COPY_MIN_ROWS, 500)]
    serial = asyncio.Lock()
    async with pool.acquire() as one, pool.acquire() as two:
        first = asyncio.create_task(store_telemetry(one, a, serial=serial))

        async def a_is_held() -> bool:
            waits = await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
            return bool(waits)

        await eventually(a_is_held, within=20, what="A's COPY held by its slow row")
        stored_b = await store_telemetry(two, b, serial=serial)
        stored_a = await first
    assert (stored_a, stored_b) == (len(a), COPY_MIN_ROWS)
    total = 1 + len(a) + COPY_MIN_ROWS
    assert await pool.fetchval("SELECT count(*) FROM telemetry") == total
    assert await _rollup_total(pool) == total
