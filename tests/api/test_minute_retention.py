"""Minute rollups kept for less time than the hourly ones (LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS,
migration 0020): retention deletes them at their own cutoff, a whole series-hour at a time and
only once folded; a late event into an hour whose minutes are gone is added to that hour, never
folded over it; and the dashboard reads such hours from their rows, the same as before."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from llmscope.api.charts import ChartViews
from llmscope.api.persister import apply_retention, fold_hours, store_telemetry
from llmscope.api.persister.hour_fold import FOLD_LOCK, prune_minutes
from llmscope.api.persister.sql import PRUNE_MINUTE_HOUR
from llmscope.api.settings import ApiSettings
from llmscope.api.store import Store
from llmscope.api.switches import ModelSwitchWriter
from llmscope.api.trends import TrendQueries
from llmscope.config.env import ConfigError, Env, Secret
from llmscope.config.outbound import OutboundPolicy
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.web.data import ChartQuery
from tests.api.factories import telemetry
from tests.api.test_hour_fold import (
    HOUR,
    NOW,
    PAST,
    _as_read,
    _compared,
    _events,
    _from_minutes,
    _hour_rows,
    _late,
    _same,
    _same_shown,
    _until_waiting,
)

WEEK = timedelta(days=7)


def _settings(database_url: str, minute_days: float | None, rollup_days: float = 400) -> ApiSettings:
    return ApiSettings(
        database_url=Secret(database_url),
        api_key=Secret("x" * 16),
        retention_rollup_days=rollup_days,
        retention_minute_rollup_days=minute_days,
    )


def _add(want: list[tuple[Any, ...]], late: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The hours of ``want`` with the late minutes' sums added (n, n_ok, counts and sums; min of
    the min, max of the max), as the hours must hold them."""
    merged = {r[:5]: list(r[5:]) for r in want}
    for r in late:
        got = merged.get(r[:5])
        if got is None:
            merged[r[:5]] = list(r[5:])
            continue
        # Columns of _SUMS: n, n_ok, latency_n, latency_min, latency_max, then sums.
        for i, v in enumerate(r[5:]):
            if i == 3:
                got[i] = min(got[i], v)
            elif i == 4:
                got[i] = max(got[i], v)
            else:
                got[i] += v
    return [(*k, *v) for k, v in sorted(merged.items())]


async def test_a_late_event_into_an_hour_whose_minutes_are_pruned_is_added_to_it(
    pool: asyncpg.Pool, database_url: str
) -> None:
    async with pool.acquire() as conn:
        await store_telemetry(conn, _events(0, 200, PAST, step_s=(NOW - PAST).total_seconds() / 200))
    await fold_hours(pool)
    whole = await _from_minutes(pool)
    past = [r for r in whole if r[4] < HOUR]
    # A week and two hours on: every hour's minutes are past their retention, the current
    # hour's are not folded yet (it was not over) and stay.
    before = await pool.fetchval("SELECT count(*) FROM telemetry_minute WHERE minute < $1", HOUR)
    later = NOW + WEEK + timedelta(hours=2)
    deleted = await apply_retention(pool, _settings(database_url, 7), now=later)
    assert deleted["telemetry_minute"] == before
    assert await pool.fetchval("SELECT count(*) FROM telemetry_minute WHERE minute < $1", HOUR) == 0
    assert await pool.fetchval("SELECT count(*) FROM telemetry_minute WHERE minute >= $1", HOUR) > 0
    assert await pool.fetchval("SELECT count(*) FROM telemetry_series_hour WHERE minutes_pruned") == len(past)
    _same(await _hour_rows(pool), past)
    _same(await _as_read(pool), whole)  # the pruned hours from their rows, the current from minutes
    # Late events into the pruned hours: a minute that had data, one that had none, in both
    # statements' ways, and a redelivery of them that adds nothing.
    late = [_late(7000, 3), _late(7001, 3), _late(7002, 59), *_events(7100, 6, PAST + timedelta(hours=1))]
    async with pool.acquire() as conn:
        await store_telemetry(conn, late[:1])
        await store_telemetry(conn, late[1:])
        await store_telemetry(conn, late)
    added = [r for r in await _from_minutes(pool) if r[4] < HOUR]  # the late minutes alone
    assert sum(r[5] for r in added) == len(late)
    want = _add(whole, added)
    _same(await _as_read(pool), want)  # read at once: the hour row and its late minutes
    assert await fold_hours(pool) == len(added)
    assert await pool.fetchval("SELECT count(*) FROM telemetry_minute WHERE minute < $1", HOUR) == 0
    _same(await _hour_rows(pool), [r for r in want if r[4] < HOUR])  # added, nothing shrunk
    _same(await _as_read(pool), want)
    assert await fold_hours(pool) == 0
    _same(await _hour_rows(pool), [r for r in want if r[4] < HOUR])  # added once


async def test_a_series_hour_with_a_minute_not_folded_keeps_its_minutes_until_folded(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """Retention never deletes a minute its hour does not hold yet; the next run, after the fold,
    does; the hours are exact throughout."""
    async with pool.acquire() as conn:
        await store_telemetry(conn, _events(0, 60, PAST))
    await fold_hours(pool)
    async with pool.acquire() as conn:
        await store_telemetry(conn, [_late(8000, 4)])  # m0/p0/t0's first hour: unfolded
    want = await _from_minutes(pool)
    settings = _settings(database_url, 7)
    later = NOW + WEEK + timedelta(hours=2)
    await apply_retention(pool, settings, now=later)
    left = await pool.fetch(
        "SELECT DISTINCT model, prompt_id, target, date_trunc('hour', minute) FROM telemetry_minute"
    )
    assert [tuple(r) for r in left] == [("m0", "p0", "t0", PAST)]
    assert not await pool.fetchval(
        """SELECT minutes_pruned FROM telemetry_series_hour
           WHERE model = 'm0' AND prompt_id = 'p0' AND target = 't0' AND hour = $1""",
        PAST,
    )
    _same(await _as_read(pool), want)
    await fold_hours(pool)  # recomputed from its whole minutes, as any hour
    _same(await _hour_rows(pool), want)
    await apply_retention(pool, settings, now=later)
    assert await pool.fetchval("SELECT count(*) FROM telemetry_minute") == 0
    _same(await _hour_rows(pool), want)
    _same(await _as_read(pool), want)


async def test_retention_deletes_minutes_at_their_own_cutoff(pool: asyncpg.Pool, database_url: str) -> None:
    ages = [timedelta(days=d, minutes=5) for d in (1, 6, 8, 20, 40)]
    async with pool.acquire() as conn:
        await store_telemetry(conn, [telemetry(i, ts=NOW - age) for i, age in enumerate(ages)])
    await fold_hours(pool)

    async def kept(table: str, column: str) -> list[datetime]:
        rows = await pool.fetch(f"SELECT {column} AS t FROM {table} ORDER BY 1 DESC")
        return [r["t"] for r in rows]

    # Unset: the minutes go with the hours, at the rollups' cutoff.
    deleted = await apply_retention(pool, _settings(database_url, None, 30), now=NOW)
    assert deleted["telemetry_minute"] == 1
    assert deleted["telemetry_series_hour"] == 1
    assert len(await kept("telemetry_minute", "minute")) == 4
    # 7 days: the minutes of the hours before then go (the hour it falls in stays whole).
    deleted = await apply_retention(pool, _settings(database_url, 7, 30), now=NOW)
    assert deleted["telemetry_minute"] == 2
    minutes = await kept("telemetry_minute", "minute")
    assert minutes == [(NOW - age).replace(second=0, microsecond=0) for age in ages[:2]]
    hours = await kept("telemetry_series_hour", "hour")
    assert hours == [(NOW - age).replace(minute=0, second=0, microsecond=0) for age in ages[:4]]
    pruned = await pool.fetch("SELECT hour FROM telemetry_series_hour WHERE minutes_pruned ORDER BY 1 DESC")
    assert [r["hour"] for r in pruned] == hours[2:]
    assert "telemetry_minute" not in await apply_retention(pool, _settings(database_url, 0, 0), now=NOW)
    assert (await apply_retention(pool, _settings(database_url, 7, 30), now=NOW))["telemetry_minute"] == 0


async def test_the_dashboard_over_30_days_is_the_same_with_minutes_kept_7_days(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """The comparison (7 and 30 days by model, prompt, target), the availability chart and the
    first data of a window: the same with minutes kept 7 days as with all of them kept, and again
    once late events reach the pruned hours (before and after their fold)."""
    start = HOUR - timedelta(days=29, minutes=-17)  # within an hour, whose minutes go
    events = _events(0, 900, start, step_s=(NOW - start).total_seconds() / 900)
    async with pool.acquire() as conn:
        for i in range(0, len(events), 50):
            await store_telemetry(conn, events[i : i + 50])
    await fold_hours(pool)
    end = NOW + timedelta(minutes=1)
    store = Store(charts=ChartViews(), switches=ModelSwitchWriter(), outbound=OutboundPolicy(()))
    store.attach(pool)
    trends = TrendQueries(store)

    async def shown() -> list[Any]:
        seen = await _compared(pool, end)
        for hours in (168, 720):
            av = await trends.availability("ollama", "m0", hours, end)
            seen.append((hours, "availability", av.bucket_s))
            seen.extend((line.target, [(b.ts, b.probes, b.ok) for b in line.buckets]) for line in av.lines)
        for hours in (168, 720):
            # The model page's control chart (its 30 days in 2 h buckets), a target of two.
            chart = await store.chart(ChartQuery("ollama", "m0", "p0", "latency_ms", hours, "t0"), now=end)
            seen.append((hours, "chart", chart.bucket_s, chart.failed_probes))
            seen.append(("chart", [(p.ts, p.n, p.value, p.lo, p.hi, None) for p in chart.points]))
        for hours in (168, 720):
            # Within an hour whose minutes are gone, its first minute is not known: the hour's.
            first = await trends.first_data(["ollama"], ["m1"], end - timedelta(hours=hours), end)
            seen.append((hours, "first", first and first.replace(minute=0)))
        return seen

    kept = await shown()
    assert (720, "first", events[1].ts.replace(minute=0, second=0, microsecond=0)) in kept  # m1
    deleted = await apply_retention(pool, _settings(database_url, 7), now=NOW)
    assert deleted["telemetry_minute"] > 500
    oldest = await pool.fetchval("SELECT min(minute) FROM telemetry_minute")
    assert oldest >= NOW - WEEK - timedelta(hours=1)
    _same_shown(await shown(), kept)
    # Late events 20 days back (minutes pruned) and 2 days back (minutes kept), in series-hours
    # that have data (a series-hour new to its hour has no row to shrink) and in one that has none.
    olds = [e for e in events if NOW - timedelta(days=20) <= e.ts < NOW - timedelta(days=19)]
    recent = [e for e in events if NOW - timedelta(days=2) <= e.ts < NOW - timedelta(days=1)]
    late = [
        *(
            telemetry(
                9000 + i,
                ts=e.ts + timedelta(seconds=30),
                model=e.model,
                prompt_id=e.prompt_id,
                target=e.target,
                latency_ms=500.0 + i,
            )
            for i, e in enumerate([*olds[:6], *recent[:3]])
        ),
        *_events(9100, 4, HOUR - timedelta(days=20, minutes=-7)),
    ]
    async with pool.acquire() as conn:
        await store_telemetry(conn, late)
    unfolded = await shown()
    assert unfolded != kept
    await fold_hours(pool)
    _same_shown(await shown(), unfolded)
    # Every event in the hours once the current one is folded too: each counted once.
    await fold_hours(pool, before=NOW + timedelta(hours=1))
    total = await pool.fetchval("SELECT sum(n) FROM telemetry_series_hour")
    assert total == len(events) + len(late)


def test_the_minute_retention_is_validated_naming_the_variable() -> None:
    base = {"DATABASE_URL": "postgresql://u:p@h/db", "LLMSCOPE_API_KEY": "x" * 16}
    settings = ApiSettings.from_env(Env(base))
    assert settings.retention_minute_rollup_days is None
    assert settings.minute_rollup_days == 400
    short = ApiSettings.from_env(Env({**base, "LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS": "14"}))
    assert short.minute_rollup_days == 14
    assert short.retention_rollup_days == 400
    forever = {**base, "LLMSCOPE_RETENTION_ROLLUP_DAYS": "0"}
    forever["LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS"] = "30"
    assert ApiSettings.from_env(Env(forever)).minute_rollup_days == 30
    assert dataclasses.replace(short, retention_minute_rollup_days=None).minute_rollup_days == 400
    for value in ("500", "0", "3", "-1", "soon"):
        with pytest.raises(ConfigError, match="LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS"):
            ApiSettings.from_env(Env({**base, "LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS": value}))
    # Hours kept 5 days: minutes as long, not the 7 days' minimum.
    five = {**base, "LLMSCOPE_RETENTION_ROLLUP_DAYS": "5", "LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS": "5"}
    assert ApiSettings.from_env(Env(five)).minute_rollup_days == 5


async def test_a_write_that_races_the_pruning_is_never_lost(pool: asyncpg.Pool, database_url: str) -> None:
    """Both orders of a late event's write and the pruning of its hour's minutes: the write that
    holds a minute first keeps its series-hour whole (not folded: not pruned) for the next run;
    the write that waits for the pruning writes a new minute, which the fold adds to the hour."""
    second = PAST + timedelta(hours=1)
    async with pool.acquire() as conn:
        events = _events(0, 74, PAST, step_s=97.0)  # the first two past hours
        await store_telemetry(conn, events)
    in_first = sum(1 for e in events if e.ts < PAST + timedelta(hours=1))
    await fold_hours(pool)
    key = "model = 'm0' AND prompt_id = 'p0' AND target = 't0'"
    minutes = await pool.fetch(f"SELECT minute FROM telemetry_minute WHERE {key} ORDER BY 1")
    first_minute = next(r["minute"] for r in minutes if r["minute"] < second)
    second_minute = next(r["minute"] for r in minutes if r["minute"] >= second)

    def late_at(i: int, minute: datetime) -> TelemetryEvent:
        return telemetry(i, ts=minute + timedelta(seconds=59), model="m0", prompt_id="p0", target="t0")

    writer = await asyncpg.connect(database_url)
    pruner = await asyncpg.connect(database_url)
    try:
        # 1. A late event's write holds a minute of the first hour when the pruning comes.
        tx = writer.transaction()
        await tx.start()
        await store_telemetry(writer, [late_at(5000, first_minute)])
        pruning = asyncio.create_task(prune_minutes(pool, second, 60))
        await _until_waiting(pool, "telemetry_minute")
        await tx.commit()
        await pruning
        left = await pool.fetch(
            "SELECT DISTINCT model, prompt_id, target FROM telemetry_minute WHERE minute < $1", second
        )
        assert [tuple(r) for r in left] == [("m0", "p0", "t0")]  # its series-hour waits, whole
        # 2. The pruning of the second hour holds its minutes when a late event's write comes.
        tx = pruner.transaction()
        await tx.start()
        await pruner.execute("SELECT pg_advisory_xact_lock($1)", FOLD_LOCK)
        assert await pruner.fetchval(PRUNE_MINUTE_HOUR, second) > 0
        write = asyncio.create_task(store_telemetry(writer, [late_at(5001, second_minute)]))
        await _until_waiting(pool, "telemetry_minute")
        await tx.commit()
        assert await write == 1
        new = f"SELECT n FROM telemetry_minute WHERE {key} AND minute = $1"
        assert await pool.fetchval(new, second_minute) == 1  # a new row: the late event alone
    finally:
        await writer.close()
        await pruner.close()
    await fold_hours(pool)  # the first hour recomputed (whole), the second's late minute added
    await prune_minutes(pool, second + timedelta(hours=1), 60)
    assert await pool.fetchval("SELECT count(*) FROM telemetry_minute") == 0
    hours = await pool.fetch(
        "SELECT hour, sum(n) AS n FROM telemetry_series_hour WHERE minutes_pruned GROUP BY 1 ORDER BY 1"
    )
    assert [(r["hour"], r["n"]) for r in hours] == [(PAST, in_first + 1), (second, 74 - in_first + 1)]


async def test_a_fold_of_pruned_and_whole_hours_does_not_deadlock_with_a_write(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """A fold whose chunk holds both a pruned series-hour (a late event's minute to add) and a
    whole one (to recompute) locks their minutes in key order, as a write does: the write of a
    batch with a late event into each (the pruned hour's minute first, the older) waits for the
    fold or the fold for it, never both. Locked one set after the other (the whole hours' first),
    the fold held the later minute and waited for the earlier one the write held: a deadlock,
    one of the two aborted."""
    whole_hour = PAST + timedelta(hours=2)
    async with pool.acquire() as conn:
        await store_telemetry(
            conn, [*_events(0, 20, PAST, step_s=150.0), *_events(100, 20, whole_hour, step_s=150.0)]
        )
    await fold_hours(pool)
    await prune_minutes(pool, PAST + timedelta(hours=1), 60)
    assert await pool.fetchval("SELECT count(*) FROM telemetry_series_hour WHERE minutes_pruned") > 0

    def at(i: int, hour: datetime, minute: int) -> TelemetryEvent:
        return telemetry(i, ts=hour + timedelta(minutes=minute), model="m0", prompt_id="p0", target="t0")

    async with pool.acquire() as conn:  # a late minute in each hour, not folded yet
        await store_telemetry(conn, [at(6000, PAST, 3), at(6001, whole_hour, 10)])
    writer = await asyncpg.connect(database_url)
    try:
        tx = writer.transaction()
        await tx.start()
        await store_telemetry(writer, [at(6002, PAST, 3)])  # holds the pruned hour's minute
        folding = asyncio.create_task(fold_hours(pool))
        await _until_waiting(pool, "telemetry_minute")  # the fold waits for that minute
        write = asyncio.create_task(store_telemetry(writer, [at(6003, whole_hour, 10)]))
        done, _ = await asyncio.wait({folding, write}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            assert task.exception() is None, task.exception()
        assert await write == 1  # the whole hour's minute was not held by the waiting fold
        await tx.commit()
        await folding
    finally:
        await writer.close()
    await fold_hours(pool)
    assert await pool.fetchval("SELECT sum(n) FROM telemetry_series_hour") == 44
    assert await pool.fetchval("SELECT count(*) FROM telemetry_minute WHERE minute < $1", whole_hour) == 0


async def test_the_pruning_keeps_every_minute_after_its_cutoff_whatever_the_sessions_time_zone(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """Postgres truncates to the hour in the session's time zone (the server's, from its host at
    initdb): in India (+05:30) an hour runs from :30 to :30 UTC, and the fold's hours with it.
    The pruning takes only the hours that end by its cutoff (a whole UTC hour): it took the hour
    the cutoff falls in, the minutes up to 30 after the cutoff with it (the status page's week
    of uptime, read from minutes alone, lost them)."""
    cutoff = HOUR - timedelta(hours=5)
    events = [
        telemetry(i, ts=cutoff + timedelta(minutes=5 * i - 120), model="m0", prompt_id="p0", target="t0")
        for i in range(36)  # from 2 hours before the cutoff to 1 hour after, 5 minutes apart
    ]
    india = await asyncpg.create_pool(
        database_url, min_size=1, max_size=2, server_settings={"timezone": "Asia/Kolkata"}
    )
    try:
        async with india.acquire() as conn:
            await store_telemetry(conn, events)
        await fold_hours(india)
        after = "SELECT count(*) FROM telemetry_minute WHERE minute >= $1"
        assert await india.fetchval(after, cutoff) == 12
        assert await prune_minutes(india, cutoff, 60) > 0
        assert await india.fetchval(after, cutoff) == 12
        assert await india.fetchval("SELECT sum(n) FROM telemetry_series_hour") == 36
        assert await india.fetchval("SELECT count(*) FROM telemetry_minute WHERE minute < $1", cutoff) <= 6
    finally:
        await india.close()
