"""Incidents acknowledged and resolved by a person, and violations a person resolved through the
API while they still fire here: the channels that were paged are told at once. A part of ``Store``
(store.py), on ``incident_store.IncidentStore``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from llmscope.alerter.incident_store import IncidentStore
from llmscope.alerter.store_base import Conn


class HandResolutionStore(IncidentStore):
    """Acknowledgement and resolution by hand, of whole incidents and of single violations."""

    async def acknowledge_incident(self, incident_id: str, by: str, note: str | None = None) -> bool:
        """Acknowledge an incident and all its violations (reminders stop)."""
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            ok = await conn.fetchval(
                "UPDATE alerter_incidents SET state = 'acknowledged', acknowledged_at = $2,"
                " acknowledged_by = $3, acknowledged_note = $4,"
                " revision = revision + 1 WHERE id = $1 AND state = 'open' RETURNING 1",
                incident_id,
                now,
                by,
                note,
            )
            if not ok:
                return False
            # The incident's row is held (the UPDATE above); its alerts next, in order (lock_rows).
            await self.lock_rows(
                conn, await self._incident_episodes(conn, incident_id), incidents=[incident_id]
            )
            await conn.execute(
                "UPDATE alerter_alerts SET acknowledged_at = $2, acknowledged_by = $3 WHERE"
                " acknowledged_at IS NULL"
                " AND episode_id IN (SELECT episode_id FROM alerter_incident_episodes WHERE"
                " incident_id = $1)",
                incident_id,
                now,
                by,
            )
            await self._outbox_incident(conn, incident_id, "acknowledged")
            return True

    async def resolve_incident(self, incident_id: str, by: str, note: str | None = None) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            ok = await conn.fetchval(
                "UPDATE alerter_incidents SET state = 'resolved', resolved_at = $2, resolved_by = $3,"
                " resolved_note = $4,"
                " resolved_note_at = CASE WHEN $4::text IS NULL THEN NULL ELSE $2::timestamptz END,"
                " analysis_status = 'pending', analysis_due_at = $2,"
                " revision = revision + 1 WHERE id = $1 AND state <> 'resolved' RETURNING 1",
                incident_id,
                self.clock(),
                by,
                note,
            )
            if ok:
                # Its violations (and the warnings grouped under it) that still fire are resolved
                # by this person: the channels they paged are told so now (_hand_resolved).
                episodes = await conn.fetch(
                    "SELECT episode_id FROM alerter_incident_episodes WHERE incident_id = $1"
                    " UNION SELECT ga.episode_id FROM alerter_group_alerts ga"
                    " JOIN alerter_groups g ON g.id = ga.group_id WHERE g.state = 'active'"
                    " AND g.labels @> jsonb_build_array(jsonb_build_array('incident', $1::text))",
                    incident_id,
                )
                await self._hand_resolved(conn, [r["episode_id"] for r in episodes], by, note)
                # Resolved without a note: a later note on one of its violations stands.
                await self._sync_incident_notes(
                    conn, await self._incident_episodes(conn, incident_id), publish=False
                )
                await self._outbox_incident(conn, incident_id, "resolved")
            return bool(ok)

    async def _hand_resolved(
        self, conn: Conn, episode_ids: Sequence[str], by: str, note: str | None, at: datetime | None = None
    ) -> int:
        """Mark still-firing episodes resolved by a person and flush their groups at once.

        The flush sends the usual ``resolved`` message to each channel told of them (naming who),
        and records them as told resolved: their later clear sends nothing more. A channel that
        was never told (the group still in group_wait) gets nothing: the group closes silently.
        """
        now = self.clock()
        # The caller holds the episodes' incidents; their groups, then the alerts (lock_rows).
        await self.lock_rows(conn, episode_ids, groups=True)
        marked = [
            r["episode_id"]
            for r in await conn.fetch(
                "UPDATE alerter_alerts SET resolved_at = $2, resolved_by = $3, resolved_note = $4"
                " WHERE episode_id = ANY($1::text[]) AND cleared_at IS NULL AND resolved_at IS NULL"
                " RETURNING episode_id",
                list(episode_ids),
                at or now,
                by,
                note,
            )
        ]
        if marked:
            await conn.execute(
                "UPDATE alerter_groups SET next_flush_at = least(next_flush_at, $2) WHERE state = 'active'"
                " AND id IN (SELECT group_id FROM alerter_group_alerts WHERE episode_id = ANY($1::text[]))",
                marked,
                now,
            )
        return len(marked)

    async def sync_hand_resolutions(self) -> int:
        """Violations a person resolved through the API while they still fire here (their
        action came before the violation); how many."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._apply_hand_resolutions(conn, None)

    async def _apply_hand_resolutions(self, conn: Conn, episode_ids: Sequence[str] | None) -> int:
        rows = await conn.fetch(
            "SELECT a.episode_id, v.resolved_by, v.resolved_at, v.note FROM alerter_alerts a"
            " JOIN alerter_violation_actions v ON v.episode_id = a.episode_id"
            " WHERE a.cleared_at IS NULL AND a.resolved_at IS NULL AND v.resolved_at IS NOT NULL"
            " AND ($1::text[] IS NULL OR a.episode_id = ANY($1::text[]))"
            " ORDER BY a.episode_id",
            None if episode_ids is None else list(episode_ids),
        )
        # All of them at once, in order (lock_rows): one by one, two episodes' incidents would
        # be locked in episode order, not in the incidents' own.
        await self.lock_rows(conn, [r["episode_id"] for r in rows], groups=True)
        done = 0
        for r in rows:
            done += await self._hand_resolved(
                conn, [r["episode_id"]], r["resolved_by"] or "someone", r["note"], r["resolved_at"]
            )
        return done
