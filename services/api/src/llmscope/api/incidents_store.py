"""Incidents in the API's own ``incidents`` table: written from ``incident.v1`` events, read by
``/api/incidents`` and the dashboard.

The alerter owns incident lifecycle and publishes every change as a new revision; this table
keeps the highest revision of each incident (an older or replayed event changes nothing), so the
persister's writes are idempotent and a batch is acked only after its COMMIT.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from llmscope.api.cursors import decode_cursor, encode_cursor
from llmscope.api.violation_store import violation_from_row
from llmscope.proto.incident import IncidentEvent, RepagedEpisode
from llmscope.web.alerting import (
    Incident,
    IncidentAnalysisInfo,
    IncidentDetail,
    IncidentFilter,
    IncidentPage,
    MetricMoveInfo,
    ResembledIncidentInfo,
    SimilarIncidentInfo,
    TicketInfo,
)

Conn = asyncpg.Connection | PoolConnectionProxy

UPSERT_INCIDENT = """
INSERT INTO incidents AS i (
    id, revision, event_id, change, state, title, severity, provider, host, models, cascade,
    episode_ids, violation_count, opened_at, last_violation_at, acknowledged_at, acknowledged_by,
    resolved_at, resolved_by, llm_status, event)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)
ON CONFLICT (id) DO UPDATE SET
    revision = EXCLUDED.revision, event_id = EXCLUDED.event_id, change = EXCLUDED.change,
    state = EXCLUDED.state, title = EXCLUDED.title, severity = EXCLUDED.severity,
    provider = EXCLUDED.provider, host = EXCLUDED.host, models = EXCLUDED.models,
    cascade = EXCLUDED.cascade, episode_ids = EXCLUDED.episode_ids,
    violation_count = EXCLUDED.violation_count, opened_at = EXCLUDED.opened_at,
    last_violation_at = EXCLUDED.last_violation_at, acknowledged_at = EXCLUDED.acknowledged_at,
    acknowledged_by = EXCLUDED.acknowledged_by, resolved_at = EXCLUDED.resolved_at,
    resolved_by = EXCLUDED.resolved_by, llm_status = EXCLUDED.llm_status, event = EXCLUDED.event,
    received_at = now()
WHERE i.revision < EXCLUDED.revision
"""


# The violations the alerter paged again after a hand resolution the engine never cleared (the
# ``repaged`` of each incident's stored event: its highest revision, whatever order the events
# came in) fire again in the API's log too: their resolution (and the acknowledgement that came
# with it) is undone, so the dashboard offers both again. Only a resolution made before the page
# again: one made since (the on-call's answer to it) stands, and a replayed event changes nothing.
# The row's pending announcement, if any, was of that undone state: the alerter has it already.
# Rows locked in id order (the persister's other writes of violations take them one by one).
_REOPEN_DUE = """
, due AS (
    SELECT v.id FROM violations v JOIN paged p ON v.id = p.episode_id
    WHERE v.cleared_at IS NULL AND v.resolved_at IS NOT NULL AND v.resolved_at < p.repaged_at
    ORDER BY v.id FOR UPDATE OF v
)
UPDATE violations SET resolved_at = NULL, resolved_by = NULL, acknowledged_at = NULL,
    acknowledged_by = NULL, action_pending = false
WHERE id IN (SELECT id FROM due)
RETURNING id
"""
REOPEN_REPAGED = (
    """
WITH paged AS (
    SELECT r.episode_id, max(r.repaged_at) AS repaged_at
    FROM incidents i,
         jsonb_to_recordset(coalesce(i.event->'repaged', '[]'::jsonb))
             AS r(episode_id text, repaged_at timestamptz)
    WHERE i.id = ANY($1::text[])
    GROUP BY r.episode_id
)"""
    + _REOPEN_DUE
)
# The same for violations the alerter names itself (``llmscope.proto.repage``: one paged again
# outside any incident has no incident.v1 event to carry it), by the same rule.
REOPEN_EPISODES = (
    """
WITH paged AS (
    SELECT r.episode_id, max(r.repaged_at) AS repaged_at
    FROM unnest($1::text[], $2::timestamptz[]) AS r(episode_id, repaged_at)
    GROUP BY r.episode_id
)"""
    + _REOPEN_DUE
)


def incident_record(ev: IncidentEvent) -> tuple[Any, ...]:
    return (
        ev.incident_id,
        ev.revision,
        ev.id,
        ev.change,
        ev.state,
        ev.title,
        ev.severity,
        ev.provider,
        ev.host,
        list(ev.models),
        ev.cascade,
        list(ev.episode_ids),
        ev.violation_count,
        ev.opened_at,
        ev.last_violation_at,
        ev.acknowledged_at,
        ev.acknowledged_by,
        ev.resolved_at,
        ev.resolved_by,
        ev.analysis.llm_status if ev.analysis else "disabled",
        msgspec.to_builtins(ev),
    )


async def store_incidents(conn: Conn, events: Sequence[IncidentEvent]) -> int:
    """Keep each incident's highest revision, in one transaction; returns the events seen. The
    violations it says were paged again reopen (``REOPEN_REPAGED``), in the same transaction."""
    if events:
        async with conn.transaction():
            await conn.executemany(UPSERT_INCIDENT, [incident_record(ev) for ev in events])
            repaged = sorted({ev.incident_id for ev in events if ev.repaged})
            if repaged:
                await conn.execute(REOPEN_REPAGED, repaged)
    return len(events)


async def reopen_repaged(conn: Conn, episodes: Sequence[RepagedEpisode]) -> list[str]:
    """The violations the alerter says it paged again reopen (``REOPEN_EPISODES``: only a
    resolution made before the page again, so a repeat changes nothing); the ids reopened."""
    if not episodes:
        return []
    async with conn.transaction():
        rows = await conn.fetch(
            REOPEN_EPISODES, [e.episode_id for e in episodes], [e.repaged_at for e in episodes]
        )
    return sorted(r["id"] for r in rows)


def _event(row: asyncpg.Record) -> IncidentEvent:
    raw = row["event"]
    data = raw if isinstance(raw, dict) else msgspec.json.decode(raw)
    return msgspec.convert(data, IncidentEvent)


def incident_from_event(ev: IncidentEvent) -> Incident:
    return Incident(
        id=ev.incident_id,
        revision=ev.revision,
        state=ev.state,
        title=ev.title,
        severity=ev.severity,
        provider=ev.provider,
        host=ev.host,
        models=list(ev.models),
        cascade=ev.cascade,
        violation_count=ev.violation_count,
        opened_at=ev.opened_at,
        last_violation_at=ev.last_violation_at,
        acknowledged_at=ev.acknowledged_at,
        acknowledged_by=ev.acknowledged_by,
        acknowledged_note=ev.acknowledged_note,
        resolved_at=ev.resolved_at,
        resolved_by=ev.resolved_by,
        resolved_note=ev.resolved_note,
        llm_status=ev.analysis.llm_status if ev.analysis else "disabled",
        merged_into=ev.merged_into,
        change=ev.change,
        changed_at=ev.ts,
    )


def analysis_info(ev: IncidentEvent) -> IncidentAnalysisInfo | None:
    a = ev.analysis
    if a is None:
        return None
    llm = a.llm_status == "ok"
    return IncidentAnalysisInfo(
        summary=a.summary,
        deterministic_only=not llm,
        llm_status=a.llm_status,
        llm_error=a.llm_error,
        llm_model=a.llm_model,
        hypothesis=a.hypothesis if llm else None,
        engineering_email=a.engineering_email if llm else None,
        customer_notice=a.customer_notice if llm else None,
        rules=list(a.rules),
        moves=[
            MetricMoveInfo(
                m.model,
                m.metric,
                m.baseline,
                m.observed,
                m.change_percent,
                m.deviation_sigma,
                m.prompt_id,
                rule=m.rule,
                rule_name=m.rule_name,
                run=m.run,
            )
            for m in a.moves
        ],
    )


class IncidentQueries:
    """Reads of the ``incidents`` table (and the member violations in ``violations``)."""

    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool

    async def save(self, event: IncidentEvent) -> None:
        """Store an event the alerter answered with (the persister may still bring it later)."""
        async with self._pool().acquire() as conn:
            await store_incidents(conn, [event])

    async def page(self, flt: IncidentFilter) -> IncidentPage:
        clauses: list[str] = []
        args: list[Any] = []

        def add(sql: str, value: Any) -> None:
            args.append(value)
            clauses.append(sql.format(f"${len(args)}"))

        if flt.state:
            add("state = {}", flt.state)
        if flt.model:
            add("{} = ANY(models)", flt.model)
        if flt.severities:
            add("severity = ANY({})", list(flt.severities))
        if flt.since:
            add("coalesce(last_violation_at, opened_at) >= {}", flt.since)
        if flt.cursor:
            ts, iid = decode_cursor(flt.cursor)
            args.extend([ts, iid])
            clauses.append(f"(opened_at, id) < (${len(args) - 1}, ${len(args)})")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        limit = max(1, min(flt.limit, 1000))
        rows = await self._pool().fetch(
            f"SELECT event FROM incidents{where} ORDER BY opened_at DESC, id DESC LIMIT {limit + 1}", *args
        )
        items = [incident_from_event(_event(r)) for r in rows[:limit]]
        more = len(rows) > limit
        return IncidentPage(items, encode_cursor(items[-1].opened_at, items[-1].id) if more else None)

    async def detail(self, incident_id: str) -> IncidentDetail | None:
        async with self._pool().acquire() as conn:
            row = await conn.fetchrow("SELECT event FROM incidents WHERE id = $1", incident_id)
            if row is None:
                return None
            ev = _event(row)
            violations = await conn.fetch(
                "SELECT * FROM violations WHERE episode_id = ANY($1) ORDER BY ts, id", list(ev.episode_ids)
            )
        return IncidentDetail(
            incident=incident_from_event(ev),
            analysis=analysis_info(ev),
            similar=[SimilarIncidentInfo(s.incident_id, s.title, s.score, s.opened_at) for s in ev.similar],
            episode_ids=list(ev.episode_ids),
            violations=[violation_from_row(r) for r in violations],
            resembles=None
            if (r := ev.resembles) is None
            else ResembledIncidentInfo(
                r.incident_id, r.title, r.score, r.resolved_at, r.resolved_by, r.resolved_note
            ),
            ticket=None if (t := ev.ticket) is None else TicketInfo(t.tracker, t.key, t.url, t.state),
        )

    async def for_episode(self, episode_id: str) -> str | None:
        found = await self._pool().fetchval(
            "SELECT id FROM incidents WHERE episode_ids @> ARRAY[$1::text] ORDER BY opened_at DESC LIMIT 1",
            episode_id,
        )
        return None if found is None else str(found)
