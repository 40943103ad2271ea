"""The hourly rollups of each series folded from its minute rollups, in the background.

The statements that store telemetry write the minute rollups only and mark each minute they
write unfolded (migration 0019); here, once a minute, the hours that are over and hold an
unfolded minute are recomputed from their minutes (:data:`.sql.MARK_FOLDED`,
:data:`.sql.RECOMPUTE_HOURS`), :data:`FOLD_CHUNK` series-hours per transaction so that the fold
after an hour ends (every series' hour at once) is many short transactions, not one long one. A
reader takes an hour with an unfolded minute from its minutes (``api/trends.py``), so what it
shows never waits for a fold.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import asyncpg

from llmscope.api.persister.periodic import every
from llmscope.api.persister.sql import MARK_FOLDED, RECOMPUTE_HOURS

FOLD_EVERY_S = 60.0
"""How often the hours that are over are folded (s): a reader never waits for a fold."""

FOLD_CHUNK = 500
"""Series-hours recomputed per transaction (at most 500 x 60 minute rows read)."""


async def fold_hours(pool: asyncpg.Pool, chunk: int = FOLD_CHUNK, before: datetime | None = None) -> int:
    """Recompute every hour that is over and holds an unfolded minute; returns the series-hours
    recomputed. ``before``: the hours whose minutes are before it instead, the current hour's
    too (an hour folded early is recomputed again once a later minute marks it)."""
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            due = await conn.fetch(MARK_FOLDED, chunk, before)
            if due:
                await conn.execute(RECOMPUTE_HOURS, *([r[i] for r in due] for i in range(5)))
        total += len(due)
        if len(due) < chunk:
            return total


async def fold_loop(pool: asyncpg.Pool, stop: asyncio.Event, every_s: float = FOLD_EVERY_S) -> None:
    """Fold now and then every ``every_s`` seconds until ``stop``. A failed fold (Postgres away,
    a deadlock with a late event's write) is tried again at the next round: its marks were rolled
    back with it."""
    await every(stop, every_s, lambda: fold_hours(pool), "folding the hourly rollups")
