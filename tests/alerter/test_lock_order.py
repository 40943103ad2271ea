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

from llmscope.alerter.grouping import ChannelView
from llmscope.alerter.migrate import migrate
from llmscope.alerter.routing import Route
from llmscope.alerter.silences import Silence
from llmscope.alerter.store import Store
from llmscope.alerter.store_base import encode_event
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


async def test_a_flush_recording_a_mute_never_deadlocks_with_a_batch_clearing_one_and_joining_its_group(
    pool: asyncpg.Pool,
) -> None:
    """A flush holds its group, then records who muted its alerts; a batch clearing one of them
    (the alert held) and opening a new violation of the same group (which waits for the flush
    holding the group) waited on each other. Forced: a third transaction holds the new violation's
    row (inserted, not committed) until both wait, the batch past the clear, the flush at the mute."""
    now = [T0]
    store = Store(pool, instance="a", clock=lambda: now[0], incident_window=300, sustain_after=60)
    route = Route("warnings", ("mail",), severities=("warning",), group_by=("provider",), group_wait=0)
    channels = {"mail": ChannelView("mail", kind="email")}
    silence = Silence(id="s1", reason="known", author="ana", rules=("R1",), ends_at=T0 + timedelta(hours=1))
    first = violation(0, severity="warning", rule="R1")
    second = violation(1, severity="warning", rule="R2")
    await store.ingest([first], [route], None)
    now[0] = T0 + timedelta(minutes=1)
    async with pool.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "INSERT INTO alerter_alerts (episode_id, provider, model, host, rule, severity, metric,"
            " opened_at, open_event) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9::jsonb)",
            second.episode_id,
            second.provider,
            second.model,
            second.host,
            second.rule,
            second.severity,
            second.metric,
            second.ts,
            encode_event(second),
        )
        batch = asyncio.ensure_future(store.ingest([cleared(first, at=now[0]), second], [route], None))
        # The batch holds the cleared alert once it waits on the new one: the flush starts then.
        await eventually(lambda: _waiting_on_locks(pool, 1), what="the batch waiting")
        flush = asyncio.ensure_future(store.claim_due([route], channels, [silence]))

        async def both_past_their_first_rows() -> bool:
            # The flush waits on the cleared alert (or, not waiting, is done); the batch waits on
            # the new violation's row.
            return await _waiting_on_locks(pool, 1 if flush.done() else 2)

        try:
            await eventually(both_past_their_first_rows, what="the batch waiting, the flush waiting or done")
        finally:
            await tx.rollback()
        results = await asyncio.gather(batch, flush, return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results
    row = await pool.fetchrow(
        "SELECT a.cleared_at, g.state FROM alerter_alerts a JOIN alerter_group_alerts ga USING (episode_id)"
        " JOIN alerter_groups g ON g.id = ga.group_id WHERE a.episode_id = $1",
        second.episode_id,
    )
    assert row is not None
    assert row["state"] == "active"
    assert await pool.fetchval(
        "SELECT cleared_at FROM alerter_alerts WHERE episode_id = $1", first.episode_id
    )


async def test_a_flush_skipping_an_alert_held_elsewhere_still_honours_its_acknowledgement(
    pool: asyncpg.Pool,
) -> None:
    """The flush writes an API acknowledgement to an alert only when no other transaction holds
    it; one it skips still stops the reminder (read from the action), and is written later."""
    now = [T0]
    store = Store(pool, instance="a", clock=lambda: now[0], incident_window=300, sustain_after=60)
    route = Route(
        "warnings",
        ("mail",),
        severities=("warning",),
        group_by=("provider",),
        group_wait=0,
        group_interval=30,
        repeat_interval=60,
    )
    channels = {"mail": ChannelView("mail", kind="email")}
    ev = violation(0, severity="warning", rule="R1")
    await store.ingest([ev], [route], None)
    (claim,) = await store.claim_due([route], channels, [])
    await pool.execute(
        "UPDATE alerter_notifications SET status = 'sent', sent_at = $2 WHERE id = $1", claim.id, T0
    )
    # The API's acknowledgement, kept but not yet copied to the alert.
    await pool.execute(
        "INSERT INTO alerter_violation_actions (episode_id, acknowledged_by, acknowledged_at)"
        " VALUES ($1, 'bo', $2)",
        ev.episode_id,
        T0 + timedelta(seconds=10),
    )
    now[0] = T0 + timedelta(minutes=2)
    async with pool.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        try:
            await holder.execute(
                "SELECT 1 FROM alerter_alerts WHERE episode_id = $1 FOR UPDATE", ev.episode_id
            )
            claims = await asyncio.wait_for(store.claim_due([route], channels, []), 30)
        finally:
            await tx.rollback()
    assert claims == [], "an acknowledged violation is not repeated"
    now[0] = T0 + timedelta(minutes=4)
    assert await store.claim_due([route], channels, []) == []
    assert (
        await pool.fetchval("SELECT acknowledged_by FROM alerter_alerts WHERE episode_id = $1", ev.episode_id)
        == "bo"
    )


@pytest.mark.parametrize("clears_warning", [True, False])
async def test_a_batch_joining_an_incident_a_person_resolves_never_deadlocks(
    pool: asyncpg.Pool, clears_warning: bool
) -> None:
    """A batch clearing a warning grouped under an incident (the warning held: it is none of the
    incident's episodes, so the incident was not locked for it) and opening a critical that joins
    the incident waited on the incident; a person resolving the incident, holding it, waited on
    the warning. Forced: a third transaction holds the incident until the person, then the batch,
    wait on it; the person is first in line. Without the clear there was no deadlock, but the
    critical joined the incident the person had just resolved: now it opens a new one."""
    now = [T0]
    store = Store(pool, instance="a", clock=lambda: now[0], incident_window=300, sustain_after=60)
    route = Route("all", ("mail",), severities=("critical", "warning"), group_wait=0)
    critical = violation(0, rule="CUSUM")
    warning = violation(1, severity="warning", rule="R2")
    later = violation(2, rule="R3")
    await store.ingest([critical], [route], None)
    await store.ingest([warning], [route], None)
    incident_id = await pool.fetchval(
        "SELECT incident_id FROM alerter_incident_episodes WHERE episode_id = $1", critical.episode_id
    )
    assert incident_id is not None
    now[0] = T0 + timedelta(seconds=5)
    async with pool.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM alerter_incidents WHERE id = $1 FOR UPDATE", incident_id)
        person = asyncio.ensure_future(store.resolve_incident(incident_id, "ana", None))
        try:
            await eventually(lambda: _waiting_on_locks(pool, 1), what="the person waiting")
            events = [cleared(warning, at=now[0]), later] if clears_warning else [later]
            batch = asyncio.ensure_future(store.ingest(events, [route], None))
            await eventually(lambda: _waiting_on_locks(pool, 2), what="the batch waiting")
        finally:
            await tx.rollback()
        results = await asyncio.gather(person, batch, return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results
    joined = await pool.fetchrow(
        "SELECT i.id, i.state FROM alerter_incident_episodes e"
        " JOIN alerter_incidents i ON i.id = e.incident_id WHERE e.episode_id = $1",
        later.episode_id,
    )
    assert joined is not None
    assert joined["state"] != "resolved", dict(joined)
