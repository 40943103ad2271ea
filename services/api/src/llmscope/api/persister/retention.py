"""Rows older than their retention deleted, hourly."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

from llmscope.api.persister.hour_fold import prune_minutes
from llmscope.api.persister.periodic import every
from llmscope.api.settings import ApiSettings
from llmscope.config.logs import get_logger

log = get_logger("llmscope.api.persister")

RETENTION_TIMEOUT_S = 900.0

# a baseline with no recorded start ages from when the API first saw it.
DELETE_OLD_BASELINES = """DELETE FROM baseline_history b
    WHERE coalesce(b.started_at, b.seen_at) < $1
      AND EXISTS (SELECT 1 FROM baseline_history n
                  WHERE n.chart_key = b.chart_key AND (n.seen_at, n.number) > (b.seen_at, b.number))"""


async def apply_retention(
    pool: asyncpg.Pool, settings: ApiSettings, now: datetime | None = None
) -> dict[str, int]:
    """Delete rows older than their retention (0 days keeps them forever); returns rows deleted."""
    now = now or datetime.now(UTC)
    minute_days, hour_days = settings.minute_rollup_days, settings.retention_rollup_days
    # Minutes kept for less time than the hours go a whole series-hour at a time, once folded,
    # their hour row marked (hour_fold.prune_minutes): a late event there is added to the hour,
    # not read or folded from the minutes left. Kept as long: they go with their hours.
    minutes_apart = minute_days > 0 and (hour_days <= 0 or minute_days < hour_days)
    # A raw row is the persister's record that its event was counted (a redelivery or a resend
    # of the same id adds nothing): it is kept for the retention from when it was stored too,
    # however old the event (a backfill, an outbox that waited out an outage), as long as any
    # row's message may still be delivered again (the telemetry stream keeps it 7 days, the
    # retention is 30). Deleted the hour it was stored, a redelivery counted it twice. An event
    # stored as it happens goes when it did before.
    plan = [
        ("telemetry", "ts", "AND received_at < $1", settings.retention_telemetry_days),
        ("telemetry_minute", "minute", "", 0 if minutes_apart else minute_days),
        ("telemetry_series_hour", "hour", "", hour_days),
        ("violations", "ts", "", settings.retention_violations_days),
        ("violation_clears", "ts", "", settings.retention_violations_days),
        # An incident goes with its violations, once it is resolved (an open one is still work).
        ("incidents", "resolved_at", "AND state = 'resolved'", settings.retention_violations_days),
        ("dead_letters", "ts", "", settings.retention_deadletter_days),
    ]
    deleted: dict[str, int] = {}
    for table, column, also, days in plan:
        if days <= 0:
            continue
        cutoff = now - timedelta(days=days)
        # The first run after retention is turned on may delete months at once: a limit of its
        # own, not the one meant for the dashboard's reads.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL statement_timeout = {int(RETENTION_TIMEOUT_S * 1000)}")
            status = await conn.execute(
                f"DELETE FROM {table} WHERE {column} < $1 {also}",
                cutoff,
                timeout=RETENTION_TIMEOUT_S + 5,
            )
        deleted[table] = int(status.rsplit(" ", 1)[-1])
    if minutes_apart:
        cutoff = (now - timedelta(days=minute_days)).replace(minute=0, second=0, microsecond=0)
        deleted["telemetry_minute"] = await prune_minutes(pool, cutoff, RETENTION_TIMEOUT_S)
    # A re-baseline is a mark on a chart drawn from telemetry or the rollups, so its row goes once
    # neither can show its time any more; each chart's latest row stays whatever its age (the
    # chart's current baseline, still drawn however long ago it was frozen).
    drawn = (settings.retention_telemetry_days, settings.retention_rollup_days)
    if min(drawn) > 0:
        cutoff = now - timedelta(days=max(drawn))
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL statement_timeout = {int(RETENTION_TIMEOUT_S * 1000)}")
            status = await conn.execute(DELETE_OLD_BASELINES, cutoff, timeout=RETENTION_TIMEOUT_S + 5)
        deleted["baseline_history"] = int(status.rsplit(" ", 1)[-1])
    return deleted


async def retention_loop(
    pool: asyncpg.Pool, settings: ApiSettings, stop: asyncio.Event, every_s: float = 3600
) -> None:
    """Apply retention now and then every ``every_s`` seconds until ``stop``."""

    async def once() -> None:
        deleted = await apply_retention(pool, settings)
        if any(deleted.values()):
            log.info("retention applied", **deleted)

    await every(stop, every_s, once, "retention")
