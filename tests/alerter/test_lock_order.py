"""Every path of the alerter's store takes its row locks in one order (incident, then its alerts):
a person resolving an incident while the engine clears its last violation never deadlocks.

Real Postgres. The interleaving that deadlocked is forced, not hoped for: a third connection holds
the incident's row while both transactions start, so each has taken what it takes before the
incident when the row is let go.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from llmscope.alerter.migrate import migrate
from llmscope.alerter.store import Store
from tests.alerter.factories import T0, cleared, violation
from tests.alerter.harness import eventually


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=6)
    async with pool.acquire() as conn:
        await migrate(conn)
    try:
        yield pool
    finally:
        await pool.close()


async def _waiting_on_locks(pool: asyncpg.Pool, n: int) -> bool:
    waiting = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'"
    )
    return int(waiting) >= n


async def _race(pool: asyncpg.Pool, incident_id: str, *paths: Awaitable[Any]) -> list[Any]:
    """Run ``paths`` while the incident's row is held, until each waits on a lock; then let go."""

    async with pool.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM alerter_incidents WHERE id = $1 FOR UPDATE", incident_id)
        tasks = [asyncio.ensure_future(p) for p in paths]
        try:
            await eventually(lambda: _waiting_on_locks(pool, len(tasks)), what="both paths waiting")
        finally:
            await tx.rollback()
        return await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("by", ["resolve", "acknowledge"])
async def test_a_hand_resolution_racing_the_last_clear_of_its_incident_never_deadlocks(
    pool: asyncpg.Pool, by: str
) -> None:
    now = [T0]
    store = Store(pool, instance="a", clock=lambda: now[0], incident_window=300, sustain_after=60)
    for i in range(5):
        now[0] = T0 + timedelta(hours=i)
        ev = violation(i, rule="CUSUM", at=now[0], prefix=f"{by}{i}-")
        await store.ingest([ev], [], None)
        incident_id = await pool.fetchval(
            "SELECT incident_id FROM alerter_incident_episodes WHERE episode_id = $1", ev.episode_id
        )
        person = (
            store.resolve_incident(incident_id, "ana", "restarted")
            if by == "resolve"
            else store.acknowledge_incident(incident_id, "ana")
        )
        results = await _race(
            pool, incident_id, person, store.ingest([cleared(ev, at=now[0] + timedelta(minutes=1))], [], None)
        )
        assert not [r for r in results if isinstance(r, BaseException)], results
        row = await pool.fetchrow(
            "SELECT a.cleared_at, i.state FROM alerter_alerts a, alerter_incidents i"
            " WHERE a.episode_id = $1 AND i.id = $2",
            ev.episode_id,
            incident_id,
        )
        assert row is not None
        assert row["cleared_at"] is not None, dict(row)
        assert row["state"] == "resolved", dict(row)
