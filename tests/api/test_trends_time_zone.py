"""The dashboard's history (the comparison, the availability chart, the first data of a window)
is bucketed by UTC hours whatever the session's time zone. ``date_trunc('hour', ts)`` on a
timestamptz truncates in the session's zone: on a connection in India (+05:30) the hours of the
unfolded minutes ran from :30 to :30 UTC, so they matched no hourly row (the hour row and all of
its minutes were summed: counted twice) and a window's first data was 30 minutes early. The rows
are stored and folded here on a UTC connection, the persister's; the readers run on one in
Asia/Kolkata, which the readers must not notice."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from llmscope.api.charts import ChartViews
from llmscope.api.db import create_pool
from llmscope.api.persister import fold_hours, store_telemetry
from llmscope.api.store import Store
from llmscope.api.switches import ModelSwitchWriter
from llmscope.api.trends import TrendQueries
from llmscope.config.outbound import OutboundPolicy
from llmscope.proto.telemetry import TelemetryEvent
from tests.api.factories import telemetry
from tests.api.test_hour_fold import HOUR, NOW, PAST, _compared, _events, _late, _same_shown


@pytest.fixture
async def india(database_url: str, pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's database (migrated by ``pool``) whose sessions are in +05:30."""
    kolkata = await asyncpg.create_pool(
        database_url, min_size=1, max_size=2, server_settings={"timezone": "Asia/Kolkata"}
    )
    try:
        assert await kolkata.fetchval("SHOW timezone") == "Asia/Kolkata"
        yield kolkata
    finally:
        await kolkata.close()


def _trends(pool: asyncpg.Pool) -> TrendQueries:
    store = Store(charts=ChartViews(), switches=ModelSwitchWriter(), outbound=OutboundPolicy(()))
    store.attach(pool)
    return TrendQueries(store)


async def test_the_first_data_of_a_window_is_its_utc_hour_in_a_half_hour_time_zone(
    pool: asyncpg.Pool, india: asyncpg.Pool
) -> None:
    """The window starts half an hour into an hour whose only data is 10 minutes into it: the
    first data is that UTC hour, folded or not (in India it read the half hour before it)."""
    start = PAST + timedelta(minutes=30)
    end = NOW + timedelta(minutes=1)
    async with pool.acquire() as conn:
        await store_telemetry(
            conn, [_late(1, 10), telemetry(2, ts=NOW, model="m0", prompt_id="p0", target="t0")]
        )
    for when in ("unfolded", "folded"):
        assert await _trends(pool).first_data(["ollama"], ["m0"], start, end) == PAST, when
        assert await _trends(india).first_data(["ollama"], ["m0"], start, end) == PAST, when
        await fold_hours(pool)


def _bucket(ts: datetime, bucket_s: int) -> datetime:
    """The bucket of whole UTC hours (``bucket_s`` seconds, from the epoch) that ``ts`` is in."""
    return datetime.fromtimestamp(ts.timestamp() // bucket_s * bucket_s, UTC)


async def _availability(
    pool: asyncpg.Pool, hours: float, end: datetime, events: list[TelemetryEvent]
) -> dict[datetime, tuple[int, int]]:
    """The availability chart's buckets of m0 (every target summed), checked against the probes
    of each bucket of UTC hours, counted from the events themselves."""
    history = await _trends(pool).availability("ollama", "m0", hours, end)
    assert history.bucket_s % 3600 == 0  # whole hours: read from the hourly rows
    got: dict[datetime, tuple[int, int]] = {}
    for line in history.lines:
        for b in line.buckets:
            was = got.get(b.ts, (0, 0))
            got[b.ts] = (was[0] + b.probes, was[1] + b.ok)
    n: Counter[datetime] = Counter()
    ok: Counter[datetime] = Counter()
    for e in events:
        at = _bucket(e.ts, history.bucket_s)
        if e.model == "m0" and at + timedelta(seconds=history.bucket_s) > history.start:
            n[at] += 1
            ok[at] += e.status == "ok"
    assert got == {at: (n[at], ok[at]) for at in n}, pool
    return got


async def test_hourly_buckets_are_utc_hours_in_a_half_hour_time_zone(
    pool: asyncpg.Pool, india: asyncpg.Pool
) -> None:
    """7 and 30 days (hourly buckets) of the comparison and the availability chart read the same
    in India as in UTC, before and after a fold, with a late event in a folded hour; each
    availability bucket holds its UTC hour's probes."""
    start = HOUR - timedelta(days=29)
    events = _events(0, 700, start, step_s=(NOW - start).total_seconds() / 700)
    events += [telemetry(900 + i, ts=HOUR + timedelta(minutes=i), model="m0") for i in range(3)]
    async with pool.acquire() as conn:
        for i in range(0, len(events), 50):
            await store_telemetry(conn, events[i : i + 50])
    end = NOW + timedelta(minutes=1)

    async def check(stored: list[TelemetryEvent]) -> None:
        _same_shown(await _compared(india, end), await _compared(pool, end))
        for hours in (168.0, 720.0):
            assert await _availability(india, hours, end, stored) == await _availability(
                pool, hours, end, stored
            )

    await check(events)
    assert await fold_hours(pool) > 600
    await check(events)
    # A late event 40 minutes into a folded hour: its minute is read with the hour's until the
    # next fold (in India it was read with the next half hour's, the hour row counted as well).
    late = [telemetry(950, ts=HOUR - timedelta(days=3) + timedelta(minutes=40), model="m0")]
    async with pool.acquire() as conn:
        await store_telemetry(conn, late)
    await check(events + late)
    await fold_hours(pool)
    await check(events + late)


async def test_a_database_in_a_half_hour_time_zone_folds_and_reads_utc_hours(database_url: str) -> None:
    """The database's own zone is India's: the pools the API and the persister open work in UTC
    (the fold's hours included, which ran from :30 to :30 there and could not be bucketed into
    UTC hours), so each availability bucket holds its UTC hour's probes; once 30 minutes of the
    current hour's were counted twice, with the hour folded before them."""
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"ALTER DATABASE \"{name}\" SET timezone = 'Asia/Kolkata'")
    finally:
        await admin.close()
    unlimited = await create_pool(database_url, min_size=1, max_size=1, statement_timeout_s=0)
    try:
        assert await unlimited.fetchval("SHOW timezone") == "UTC"
    finally:
        await unlimited.close()
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        assert await pool.fetchval("SHOW timezone") == "UTC"
        start = HOUR - timedelta(days=8)
        events = _events(0, 700, start, step_s=(NOW - start).total_seconds() / 700)
        # Every 2 minutes of the last 3 hours: the half hours on either side of each boundary.
        events += [
            telemetry(
                2000 + i, ts=NOW - timedelta(minutes=2 * i), model="m0", status="ok" if i % 4 else "timeout"
            )
            for i in range(90)
        ]
        async with pool.acquire() as conn:
            await store_telemetry(conn, events)
        await fold_hours(pool)
        hours = await pool.fetch("SELECT DISTINCT hour FROM telemetry_series_hour")
        assert hours
        assert all(r["hour"].minute == 0 for r in hours)
        await _availability(pool, 168.0, NOW + timedelta(minutes=1), events)
    finally:
        await pool.close()
