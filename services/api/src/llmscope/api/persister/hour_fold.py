"""The hourly rollups of each series folded from its minute rollups, in the background.

The statements that store telemetry write the minute rollups only and mark each minute they
write unfolded (migration 0019); here, once a minute, the hours that are over and hold an
unfolded minute are recomputed from their minutes (:data:`.sql.MARK_FOLDED`,
:data:`.sql.RECOMPUTE_HOURS`), :data:`FOLD_CHUNK` series-hours per transaction so that the fold
after an hour ends (every series' hour at once) is many short transactions, not one long one. A
reader takes an hour with an unfolded minute from its minutes (``api/trends.py``), so what it
shows never waits for a fold.

An hour whose minutes retention deleted (kept for less time than the hours: migration 0020,
:func:`prune_minutes`) is never recomputed, which would shrink it to the minutes left: a late
event's minute there is added to it and deleted (:data:`.sql.ADD_TO_PRUNED_HOURS`). The fold takes
:data:`FOLD_LOCK` shared, the pruning exclusively: whether an hour's minutes are pruned does not
change while a fold decides how to fold it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import asyncpg

from llmscope.api.persister.periodic import every
from llmscope.api.persister.sql import (
    ADD_TO_PRUNED_HOURS,
    FOLD_DUE,
    LOCK_DUE,
    MARK_FOLDED,
    PRUNE_MINUTE_HOUR,
    RECOMPUTE_HOURS,
)

FOLD_EVERY_S = 60.0
"""How often the hours that are over are folded (s): a reader never waits for a fold."""

FOLD_CHUNK = 500
"""Series-hours recomputed per transaction (at most 500 x 60 minute rows read)."""

FOLD_LOCK = 0x6C6C_6D66_6F6C_64
"""The transaction advisory lock of the fold (shared) and of the minutes' pruning (exclusive)."""


def _keys(rows: list[asyncpg.Record]) -> list[list[object]]:
    return [[r[i] for r in rows] for i in range(5)]


async def fold_hours(pool: asyncpg.Pool, chunk: int = FOLD_CHUNK, before: datetime | None = None) -> int:
    """Fold every hour that is over and holds an unfolded minute; returns the series-hours
    folded. ``before``: the hours whose minutes are before it instead, the current hour's too
    (an hour folded early is recomputed again once a later minute marks it)."""
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", FOLD_LOCK)
            due = await conn.fetch(FOLD_DUE, chunk, before)
            whole = [r for r in due if not r["pruned"]]
            pruned = [r for r in due if r["pruned"]]
            if whole and pruned:
                await conn.execute(LOCK_DUE, *_keys(due))  # in key order: MARK_FOLDED's and then
                # ADD_TO_PRUNED_HOURS's locks alone are not (a deadlock with a write)
            if whole:
                marked = await conn.fetch(MARK_FOLDED, *_keys(whole))
                if marked:
                    await conn.execute(RECOMPUTE_HOURS, *_keys(marked))
            if pruned:
                await conn.execute(ADD_TO_PRUNED_HOURS, *_keys(pruned))
        total += len(due)
        if len(due) < chunk:
            return total


async def prune_minutes(pool: asyncpg.Pool, cutoff: datetime, timeout_s: float) -> int:
    """Delete the minute rollups of the hours before ``cutoff`` (a whole hour), one hour per
    transaction; returns the rows deleted. A series-hour with a minute not folded yet stays."""
    deleted = 0
    hour: datetime | None = await pool.fetchval(
        "SELECT date_trunc('hour', min(minute)) FROM telemetry_minute WHERE minute < $1", cutoff
    )
    # An hour that ends by the cutoff: truncated in the session's time zone, an hour may run from
    # :30 to :30 UTC (India's), and the one the cutoff falls in keeps its minutes.
    while hour is not None and hour + timedelta(hours=1) <= cutoff:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", FOLD_LOCK)
            deleted += await conn.fetchval(PRUNE_MINUTE_HOUR, hour, timeout=timeout_s + 5)
        hour = await pool.fetchval(
            "SELECT date_trunc('hour', min(minute)) FROM telemetry_minute WHERE minute >= $1 AND minute < $2",
            hour + timedelta(hours=1),
            cutoff,
        )
    return deleted


async def fold_loop(pool: asyncpg.Pool, stop: asyncio.Event, every_s: float = FOLD_EVERY_S) -> None:
    """Fold now and then every ``every_s`` seconds until ``stop``. A failed fold (Postgres away,
    a deadlock with a late event's write) is tried again at the next round: its marks were rolled
    back with it."""
    await every(stop, every_s, lambda: fold_hours(pool), "folding the hourly rollups")
