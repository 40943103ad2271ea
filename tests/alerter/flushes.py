"""Proving that the alerter sent nothing more, by its own records instead of a fixed sleep.

A message starts as a notification row, written by a group's flush in the transaction that also
schedules the group's next flush (``next_flush_at``, one group_interval later). So once a group
has been flushed after some moment, whatever that flush would have sent is already a row: count
the rows, not the messages that might still be on their way. A row is sent again only while it
is ``sending`` (a lease taken over), never once ``sent``.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from llmscope.alerter.config import Timings

TIMINGS = Timings(group_wait=0.3, group_interval=0.2, repeat_interval=3600)
"""Quick timings: a test that proves absence passes them to ``start_alerter`` and
``TIMINGS.group_interval`` to the checks below, so both agree."""


async def group_flushed_after(pool: asyncpg.Pool, group_id: int, moment: datetime, interval: float) -> bool:
    """Whether ``group_id`` was flushed after ``moment`` (``interval``: its route's group_interval)."""
    return bool(
        await pool.fetchval(
            "SELECT next_flush_at - make_interval(secs => $3) > $2 FROM alerter_groups WHERE id = $1",
            group_id,
            moment,
            interval,
        )
    )


async def all_flushed_after(pool: asyncpg.Pool, moment: datetime, interval: float) -> bool:
    """Whether every active group was flushed after ``moment``."""
    late = await pool.fetchval(
        "SELECT count(*) FROM alerter_groups WHERE state = 'active'"
        " AND next_flush_at - make_interval(secs => $2) <= $1",
        moment,
        interval,
    )
    return int(late) == 0


async def planned(pool: asyncpg.Pool, group_id: int | None = None) -> dict[str, int]:
    """Notification rows per channel (of one group, or of all)."""
    rows = await pool.fetch(
        "SELECT channel, count(*) AS n FROM alerter_notifications"
        " WHERE $1::bigint IS NULL OR group_id = $1 GROUP BY channel",
        group_id,
    )
    return {r["channel"]: r["n"] for r in rows}


async def settled(pool: asyncpg.Pool) -> bool:
    """Every group closed and every row sent or given up: nothing is left to send."""
    busy = await pool.fetchval(
        "SELECT (SELECT count(*) FROM alerter_groups WHERE state = 'active')"
        " + (SELECT count(*) FROM alerter_notifications WHERE status = 'sending')"
    )
    return int(busy) == 0


async def nothing_in_flight(pool: asyncpg.Pool) -> bool:
    """No row is being sent: each is sent or given up, and none will be sent again."""
    return not await pool.fetchval("SELECT count(*) FROM alerter_notifications WHERE status = 'sending'")
