"""The hourly rollups of each series, folded from the minute rollups in the background
(persister/hour_fold.py, migration 0019): exact whatever the fold's timing, late events and
writes that race a fold included, and read exactly before any fold (trends.SERIES_HOURS)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from llmscope.api.charts import ChartViews
from llmscope.api.db import create_pool, migrations
from llmscope.api.persister import fold_hours, fold_loop, store_telemetry
from llmscope.api.persister.sql import FOLD_DUE, MARK_FOLDED, RECOMPUTE_HOURS
from llmscope.api.store import Store
from llmscope.api.switches import ModelSwitchWriter
from llmscope.api.trends import SERIES_HOURS, TrendQueries
from llmscope.config.outbound import OutboundPolicy
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.web.trends import CompareBy
from tests.alerter.harness import eventually
from tests.api.factories import telemetry

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
HOUR = NOW.replace(minute=0)
PAST = HOUR - timedelta(hours=3)  # three hours that are over, then the current one


@pytest.fixture(autouse=True)
def _now() -> None:
    """The clock at each test's start, not at the module's import: the fold reads the real clock
    (which hours are over), and a suite that imported this module before an hour's turn and ran
    it after would find HOUR over already."""
    global NOW, HOUR, PAST
    NOW = datetime.now(UTC).replace(second=0, microsecond=0)
    HOUR = NOW.replace(minute=0)
    PAST = HOUR - timedelta(hours=3)


_SUMS = (
    "sum(n) AS n, sum(n_ok) AS n_ok, sum(latency_n) AS latency_n, min(latency_min) AS latency_min, "
    "max(latency_max) AS latency_max, sum(latency_sum) AS latency_sum, "
    "sum(latency_logsum) AS latency_logsum, sum(ttft_logsq) AS ttft_logsq, sum(tps_n) AS tps_n"
)


def _events(first: int, n: int, start: datetime, step_s: float = 97.0) -> list[TelemetryEvent]:
    """Events of two models, two prompts and two targets from ``start``, ``step_s`` apart."""
    return [
        telemetry(
            i,
            ts=start + timedelta(seconds=step_s * (i - first)),
            model=f"m{i % 2}",
            prompt_id=f"p{i % 3 % 2}",
            target=f"t{i % 5 % 2}",
            status="timeout" if i % 11 == 0 else "ok",
            latency_ms=100.0 + i % 17,
        )
        for i in range(first, first + n)
    ]


def _late(i: int, minute: int) -> TelemetryEvent:
    """An event of one series (m0, p0, t0) in the given minute of the first past hour."""
    return telemetry(
        i, ts=PAST + timedelta(minutes=minute, seconds=i % 50), model="m0", prompt_id="p0", target="t0"
    )


async def _from_minutes(pool: asyncpg.Pool) -> list[tuple[Any, ...]]:
    """Every series' hours summed from its minute rollups: what the hours must hold."""
    rows = await pool.fetch(
        f"""SELECT provider, model, prompt_id, target, date_trunc('hour', minute) AS hour, {_SUMS}
            FROM telemetry_minute GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"""
    )
    return [tuple(r) for r in rows]


async def _hour_rows(pool: asyncpg.Pool, where: str = "") -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        f"""SELECT provider, model, prompt_id, target, hour, {_SUMS}
            FROM telemetry_series_hour {where} GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"""
    )
    return [tuple(r) for r in rows]


async def _as_read(pool: asyncpg.Pool) -> list[tuple[Any, ...]]:
    """The hours as the comparison reads them (SERIES_HOURS), folded or not."""
    rows = await pool.fetch(
        f"""SELECT provider, model, prompt_id, target, hour, {_SUMS}
            FROM {SERIES_HOURS} AS t WHERE $3::integer > 0
            GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5""",
        PAST - timedelta(hours=1),
        NOW + timedelta(hours=2),
        3600,
        ["ollama", "ollama"],
        ["m0", "m1"],
    )
    return [tuple(r) for r in rows]


def _same(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> None:
    assert [r[:5] for r in got] == [r[:5] for r in want]
    for g, w in zip(got, want, strict=True):
        # A series-hour of failed probes only (early in the current hour) has no latency sums.
        assert [v is None for v in g[5:]] == [v is None for v in w[5:]]
        assert [v for v in g[5:] if v is not None] == pytest.approx(
            [v for v in w[5:] if v is not None], rel=1e-12
        )


async def _unfolded_hours(pool: asyncpg.Pool) -> set[datetime]:
    rows = await pool.fetch(
        "SELECT DISTINCT date_trunc('hour', minute) AS h FROM telemetry_minute WHERE NOT folded"
    )
    return {r["h"] for r in rows}


async def _none_unfolded(pool: asyncpg.Pool) -> bool:
    return not await _unfolded_hours(pool)


async def test_hours_that_are_over_are_folded_the_current_one_is_read_from_its_minutes(
    pool: asyncpg.Pool,
) -> None:
    # The last event at NOW itself: in the current hour even in its first minute.
    events = _events(0, 150, PAST, step_s=(NOW - PAST).total_seconds() / 149)
    async with pool.acquire() as conn:
        for i in range(0, len(events), 7):
            await store_telemetry(conn, events[i : i + 7])
    want = await _from_minutes(pool)
    assert len({r[4] for r in want}) == 4  # three hours over and the current one
    assert await _hour_rows(pool) == []  # nothing written to the hours with the events
    _same(await _as_read(pool), want)  # read exactly before any fold
    # Chunks smaller than the hours to fold: several transactions, each exact.
    assert await fold_hours(pool, chunk=5) == len([r for r in want if r[4] < HOUR])
    _same(await _hour_rows(pool), [r for r in want if r[4] < HOUR])
    assert await _unfolded_hours(pool) == {HOUR}  # the current hour waits until it is over
    _same(await _as_read(pool), want)
    assert await fold_hours(pool) == 0  # nothing left that is over


async def test_a_late_event_in_a_folded_hour_is_read_at_once_and_folded_again(pool: asyncpg.Pool) -> None:
    events = _events(0, 60, PAST)
    async with pool.acquire() as conn:
        await store_telemetry(conn, events)
    await fold_hours(pool)
    assert await _unfolded_hours(pool) == set()
    late = _events(1000, 5, PAST + timedelta(minutes=3))  # into minutes folded already
    async with pool.acquire() as conn:
        await store_telemetry(conn, late[:1])  # one-event statement
        await store_telemetry(conn, late[1:])  # the small-batch statement
        await store_telemetry(conn, late)  # redelivered: nothing counted again
    want = await _from_minutes(pool)
    assert await _unfolded_hours(pool) == {PAST}
    assert await _hour_rows(pool) != want  # the hour row lags
    _same(await _as_read(pool), want)  # what is read does not
    assert await fold_hours(pool) == 4  # the late hour's series (2 models x 2 prompts)
    _same(await _hour_rows(pool), want)
    assert sum(r[5] for r in await _hour_rows(pool)) == 65


async def test_a_write_that_races_a_fold_is_never_lost(pool: asyncpg.Pool, database_url: str) -> None:
    """Both orders of a late event's write and a fold's marks on the same minute row: the write
    that holds the row first makes the fold wait and is in its sums; the write that waits for the
    fold's marks leaves the minute unfolded for the next fold."""
    async with pool.acquire() as conn:
        await store_telemetry(conn, _events(0, 40, PAST))
    await fold_hours(pool)
    writer = await asyncpg.connect(database_url)
    folder = await asyncpg.connect(database_url)
    try:
        # 1. A late event left a minute unfolded; a second one's write holds that row
        # (uncommitted) when the fold comes to mark it.
        async with pool.acquire() as conn:
            await store_telemetry(conn, [_late(2000, 1)])
        tx = writer.transaction()
        await tx.start()
        await store_telemetry(writer, [_late(2001, 1)])
        fold = asyncio.create_task(fold_hours(pool))
        await _until_waiting(pool, "telemetry_minute")
        assert not fold.done()
        await tx.commit()
        assert await fold == 1
        _same(await _hour_rows(pool), await _from_minutes(pool))
        # 2. The fold has marked the minute (uncommitted) when the write comes.
        async with pool.acquire() as conn:
            await store_telemetry(conn, [_late(3000, 2)])
        fold_tx = folder.transaction()
        await fold_tx.start()
        due = await _mark(folder)
        assert len(due) == 1
        write = asyncio.create_task(store_telemetry(writer, [_late(3001, 2)]))
        await _until_waiting(pool, "telemetry_minute")
        await folder.execute(RECOMPUTE_HOURS, *([r[i] for r in due] for i in range(5)))
        await fold_tx.commit()
        assert await write == 1
        want = await _from_minutes(pool)
        assert await _hour_rows(pool) != want  # the fold's sums were taken before the write
        assert await _unfolded_hours(pool) == {PAST}  # the write left its minute to fold again
        _same(await _as_read(pool), want)
        assert await fold_hours(pool) == 1
        _same(await _hour_rows(pool), want)
    finally:
        await writer.close()
        await folder.close()


async def _mark(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """A fold's marks, taken by hand in the caller's transaction; returns the series-hours."""
    due = await conn.fetch(FOLD_DUE, 100, None)
    return await conn.fetch(MARK_FOLDED, *([r[i] for r in due] for i in range(5)))


async def _until_waiting(pool: asyncpg.Pool, table: str) -> None:
    """Until some session waits for a row lock (a fold or a write blocked on the other)."""

    async def waiting() -> bool:
        return bool(
            await pool.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE wait_event_type = 'Lock' AND datname = current_database()"""
            )
        )

    await eventually(waiting, within=60, what=f"a session waiting for a row of {table}")


async def test_the_persister_folds_in_the_background(pool: asyncpg.Pool) -> None:
    """fold_loop folds at once when it starts, then on its period, until stopped."""
    async with pool.acquire() as conn:
        await store_telemetry(conn, _events(0, 30, PAST))
    stop = asyncio.Event()
    task = asyncio.create_task(fold_loop(pool, stop, every_s=0.05))
    try:
        await eventually(lambda: _none_unfolded(pool), within=60, what="every hour folded")
        _same(await _hour_rows(pool), await _from_minutes(pool))
        async with pool.acquire() as conn:
            await store_telemetry(conn, _events(500, 3, PAST + timedelta(minutes=30)))
        await eventually(lambda: _none_unfolded(pool), within=60, what="every hour folded")
        _same(await _hour_rows(pool), await _from_minutes(pool))
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


# What a persister still on the code before migration 0019 writes for one late event (a rolling
# upgrade): the minute row, its ``folded`` left as it was, and the hour row in the same
# transaction (the n and n_ok columns stand for the whole rollup here).
_OLD_MINUTE = """UPDATE telemetry_minute SET n = n + 1, n_ok = n_ok + 1
    WHERE model = 'm0' AND prompt_id = 'p0' AND target = 't0' AND minute = $1"""
_OLD_HOUR = """UPDATE telemetry_series_hour SET n = n + 1, n_ok = n_ok + 1
    WHERE model = 'm0' AND prompt_id = 'p0' AND target = 't0' AND hour = $1"""


async def test_a_write_of_the_old_code_to_a_folded_minute_during_a_fold_is_never_lost(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """During a rolling upgrade a persister on the old code adds a late event to a minute that is
    folded (it leaves it so) and to its hour row, while a fold recomputes that hour (another
    minute of it is unfolded). The fold's sums must hold that event: it waits for the old write's
    minute, or the old write waits for the fold and adds to the hour it recomputed."""
    async with pool.acquire() as conn:
        await store_telemetry(conn, [_late(1, 1), _late(2, 5)])
    await fold_hours(pool)
    async with pool.acquire() as conn:
        await store_telemetry(conn, [_late(3, 1)])  # minute 1 unfolded: the hour is due
    old = await asyncpg.connect(database_url)
    try:
        tx = old.transaction()
        await tx.start()
        await old.execute(_OLD_MINUTE, PAST + timedelta(minutes=5))  # folded, and stays so
        await old.execute(_OLD_HOUR, PAST)
        fold = asyncio.create_task(fold_hours(pool))
        await _until_waiting(pool, "telemetry_minute or telemetry_series_hour")
        await tx.commit()
        assert await fold == 1
    finally:
        await old.close()
    await fold_hours(pool)
    want = await _from_minutes(pool)
    assert sum(r[5] for r in want) == 4
    _same(await _hour_rows(pool), want)
    _same(await _as_read(pool), want)


async def test_a_store_at_0018_migrated_to_0019_counts_nothing_twice(database_url: str) -> None:
    """A store written before 0019 (each minute also added to its hour row, the current hour's
    too): its rows are folded already, nothing is folded again; the current hour, which has an
    hour row and now unfolded minutes, is read from its minutes alone, and once folded is
    replaced by their sums; a late event into an old hour likewise."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        for migration in migrations():
            if migration.version < 19:
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
        # The minute rollups, then the hours the persister kept beside them (0011's backfill is
        # the same sums). From NOW back to PAST's hour: NOW's minute is in the current hour even
        # in its first minute.
        await conn.execute(
            """INSERT INTO telemetry_minute (provider, model, prompt_id, target, minute, n, n_ok,
                   latency_n, latency_min, latency_max, latency_sum, latency_logsum, latency_logsq)
               SELECT 'ollama', 'm' || (s % 2), 'p' || (s / 2), 't0', m, 3, 2, 3, 90 + s, 150 + s,
                      360 + s, 14 + s, 66 + s
               FROM generate_series(0, 3) s,
                    generate_series($2::timestamptz, $1::timestamptz, interval '-7 minutes') m""",
            PAST,
            NOW,
        )
        sql = next(m.sql for m in migrations() if m.version == 11)
        await conn.execute(sql[sql.index("INSERT INTO telemetry_series_hour") :])
    finally:
        await conn.close()
    pool = await create_pool(database_url, min_size=1, max_size=4)  # migrates to 0019 and on
    try:
        assert await pool.fetchval("SELECT count(*) FROM telemetry_minute WHERE NOT folded") == 0
        want = await _from_minutes(pool)
        assert {r[4] for r in want} == {PAST + timedelta(hours=h) for h in range(4)}
        _same(await _hour_rows(pool), want)
        _same(await _as_read(pool), want)
        assert await fold_hours(pool) == 0  # nothing to fold again
        async with pool.acquire() as writer:
            await store_telemetry(writer, [_late(1, 7), _late(2, 8)])  # a late event, an old hour
            now = telemetry(3, ts=NOW, model="m0", prompt_id="p0", target="t0")
            await store_telemetry(writer, [now])  # the current hour, which has an hour row
        want = await _from_minutes(pool)
        assert sum(r[5] for r in want) == sum(r[5] for r in await _hour_rows(pool)) + 3
        _same(await _as_read(pool), want)  # the current hour's row not added to its minutes
        assert await fold_hours(pool) == 1
        _same(await _as_read(pool), want)
        assert await fold_hours(pool, before=NOW + timedelta(hours=1)) == 1  # once it is over
        _same(await _hour_rows(pool), want)
        _same(await _as_read(pool), want)
    finally:
        await pool.close()


async def test_two_folders_and_a_copied_batch_at_once_stay_exact(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """The API's fold and a standalone persister's at once, while a large batch (COPY, then its
    aggregates in the same transaction) adds late events to the minutes they fold: the second
    fold waits for the first's marks, the batch for either; no hour counts an event twice or
    misses one, and a reader never sees a difference."""
    async with pool.acquire() as conn:
        await store_telemetry(conn, _events(0, 120, PAST, step_s=80.0))
    await fold_hours(pool)
    async with pool.acquire() as conn:
        await store_telemetry(conn, [_late(5000 + m, m) for m in range(0, 60, 6)])
    first = await asyncpg.connect(database_url)
    batch = await asyncpg.connect(database_url)
    try:
        tx = first.transaction()
        await tx.start()
        due = await _mark(first)
        assert len(due) == 1
        second = asyncio.create_task(fold_hours(pool))
        await _until_waiting(pool, "telemetry_minute")
        late = [_late(6000 + i, i % 60) for i in range(300)]
        copied = asyncio.create_task(store_telemetry(batch, late, copy_min_rows=100))
        _same(await _as_read(pool), await _from_minutes(pool))
        await first.execute(RECOMPUTE_HOURS, *([r[i] for r in due] for i in range(5)))
        await tx.commit()
        assert await copied == 300
        await second
        want = await _from_minutes(pool)
        _same(await _as_read(pool), want)
        await fold_hours(pool)
        _same(await _hour_rows(pool), want)
        assert sum(r[5] for r in want) == 120 + 10 + 300
    finally:
        await first.close()
        await batch.close()


async def _compared(pool: asyncpg.Pool, end: datetime) -> list[Any]:
    """The comparison as the /compare page asks it: 7 and 30 days, by model, prompt and target."""
    store = Store(charts=ChartViews(), switches=ModelSwitchWriter(), outbound=OutboundPolicy(()))
    store.attach(pool)
    trends = TrendQueries(store)
    shown: list[Any] = []
    by: CompareBy
    for hours in (168, 720):
        for by in ("model", "prompt", "target"):
            cmp = await trends.comparison(
                [("ollama", "m0"), ("ollama", "m1")],
                "latency_ms",
                hours,
                end,
                by=by,
            )
            shown.append((hours, by, cmp.bucket_s))
            for line in cmp.lines:
                shown.append((line.label, [(p.ts, p.n, p.value, p.lo, p.hi, p.p95) for p in line.points]))
    return shown


async def test_the_comparison_shows_the_same_before_and_after_a_fold(pool: asyncpg.Pool) -> None:
    """7 and 30 days by model, prompt and target: the same lines before any fold, after it, with
    a late event before and after its fold, and with the oldest minutes and hours pruned."""
    start = HOUR - timedelta(days=29)
    events = _events(0, 700, start, step_s=(NOW - start).total_seconds() / 700)
    async with pool.acquire() as conn:
        for i in range(0, len(events), 50):
            await store_telemetry(conn, events[i : i + 50])
    end = NOW + timedelta(minutes=1)
    unfolded = await _compared(pool, end)
    assert sum(len(r[1]) for r in unfolded if isinstance(r[0], str)) > 600  # buckets drawn
    assert await fold_hours(pool) > 600
    _same_shown(await _compared(pool, end), unfolded)
    async with pool.acquire() as conn:
        await store_telemetry(conn, _events(5000, 9, start + timedelta(days=3, minutes=7)))
    late = await _compared(pool, end)
    assert late != unfolded
    await fold_hours(pool)
    _same_shown(await _compared(pool, end), late)
    # Retention of 25 days: the minutes and hours before then go, the hour it falls in too.
    await pool.execute("DELETE FROM telemetry_minute WHERE minute < $1", NOW - timedelta(days=25))
    await pool.execute("DELETE FROM telemetry_series_hour WHERE hour < $1", NOW - timedelta(days=25))
    pruned = await _compared(pool, end)
    await fold_hours(pool)
    _same_shown(await _compared(pool, end), pruned)


def _same_shown(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[0] == w[0]
        if isinstance(g[0], str):
            assert [p[:2] for p in g[1]] == [p[:2] for p in w[1]]
            for gp, wp in zip(g[1], w[1], strict=True):
                assert [x is None for x in gp] == [x is None for x in wp]
                assert [x for x in gp[2:] if x is not None] == pytest.approx(
                    [x for x in wp[2:] if x is not None], rel=1e-9
                )
        else:
            assert g == w


async def test_the_first_data_of_a_window_is_the_same_before_and_after_a_fold(pool: asyncpg.Pool) -> None:
    """The window starts within an hour whose only data is before its start: that hour, as the
    hourly row gives it once folded, and as its unfolded minutes give it before (the buckets'
    size depends on it)."""
    start = PAST + timedelta(minutes=30)
    async with pool.acquire() as conn:
        await store_telemetry(
            conn, [_late(1, 10), telemetry(2, ts=NOW, model="m0", prompt_id="p0", target="t0")]
        )
    store = Store(charts=ChartViews(), switches=ModelSwitchWriter(), outbound=OutboundPolicy(()))
    store.attach(pool)
    trends = TrendQueries(store)
    before = await trends.first_data(["ollama"], ["m0"], start, NOW + timedelta(minutes=1))
    await fold_hours(pool)
    after = await trends.first_data(["ollama"], ["m0"], start, NOW + timedelta(minutes=1))
    assert after == PAST
    assert before == after
