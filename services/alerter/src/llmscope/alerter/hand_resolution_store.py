"""Incidents acknowledged and resolved by a person, and violations a person resolved through the
API while they still fire here: the channels that were paged are told at once. A part of ``Store``
(store.py), on ``incident_store.IncidentStore``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from llmscope.alerter.incident_store import IncidentStore
from llmscope.alerter.store_base import Conn
from llmscope.proto.incident import RepagedEpisode
from llmscope.proto.repage import MAX_EPISODES


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
                "UPDATE alerter_alerts SET resolved_at = $2, resolved_by = $3, resolved_note = $4,"
                " hand_resolved_applied_at = $5"
                " WHERE episode_id = ANY($1::text[]) AND cleared_at IS NULL AND resolved_at IS NULL"
                " RETURNING episode_id",
                list(episode_ids),
                at or now,
                by,
                note,
                now,
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
            # One paged again after a hand resolution is not resolved again by that same one
            # (nor the API's copy of its incident's); only by a resolution made since.
            " AND (a.repaged_at IS NULL OR v.resolved_at > a.repaged_at)"
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

    async def repage_hand_resolved(self, after_s: float, limit: int = 50) -> int:
        """Alerts resolved by hand at least ``after_s`` ago (since the alerter applied the
        resolution and told the channels) whose episode the engine has not cleared fire again:
        still failing, so their routes page again (at the next flush, now).

        The UPDATE that moves an alert back to firing is the claim: of two replicas, the second
        finds it firing already and does nothing, so each hand resolution is paged again once,
        and the message itself goes through the group's flush like any other (claimed once).
        State is in ``alerter_alerts`` (``repaged_at``, ``repage_of_*``): a restart loses none.
        """
        now = self.clock()
        cutoff = now - timedelta(seconds=after_s)
        async with self.pool.acquire() as conn, conn.transaction():
            due = [
                r["episode_id"]
                for r in await conn.fetch(
                    "SELECT episode_id FROM alerter_alerts WHERE cleared_at IS NULL"
                    " AND resolved_at IS NOT NULL AND hand_resolved_applied_at <= $1"
                    " AND (repage_of_at IS NULL OR resolved_at > repage_of_at)"
                    " ORDER BY episode_id LIMIT $2",
                    cutoff,
                    limit,
                )
            ]
            if not due:
                return 0
            # Their incidents, active groups, then the alerts, in the one order (lock_rows).
            await self.lock_rows(conn, due, groups=True)
            moved = [
                r["episode_id"]
                for r in await conn.fetch(
                    "UPDATE alerter_alerts SET repaged_at = $3, repage_of_at = resolved_at,"
                    " repage_of_by = resolved_by, repage_of_note = resolved_note,"
                    " resolved_at = NULL, resolved_by = NULL, resolved_note = NULL,"
                    # A new page, to be acknowledged afresh: an acknowledgement made before the
                    # resolution (or implied by it at the API) no longer stops its reminders.
                    " acknowledged_at = NULL, acknowledged_by = NULL"
                    " WHERE episode_id = ANY($1::text[]) AND cleared_at IS NULL"
                    " AND resolved_at IS NOT NULL AND hand_resolved_applied_at <= $2"
                    # Once per hand resolution: the one paged again, restored, is not paged twice.
                    " AND (repage_of_at IS NULL OR resolved_at > repage_of_at)"
                    " RETURNING episode_id",
                    due,
                    cutoff,
                    now,
                )
            ]
            for episode_id in sorted(moved):
                await self._regroup(conn, episode_id, now)
            await self._reopen_incidents(conn, moved)
            if moved:
                self._log.warning(
                    "violations resolved by hand still fire: paging again", episodes=sorted(moved)
                )
            return len(moved)

    async def repages_untold(self, limit: int = MAX_EPISODES) -> list[RepagedEpisode]:
        """Alerts paged again, still firing, whose page again the API has not been told of
        (``tell_api_repages``, service.py): in an incident or not, the API reopens its copy."""
        rows = await self.pool.fetch(
            "SELECT episode_id, repaged_at, repage_of_by, repage_of_at FROM alerter_alerts"
            " WHERE repaged_at IS NOT NULL AND repage_told_api_at IS DISTINCT FROM repaged_at"
            " AND cleared_at IS NULL AND resolved_at IS NULL ORDER BY repaged_at, episode_id LIMIT $1",
            limit,
        )
        return [
            RepagedEpisode(
                episode_id=r["episode_id"],
                repaged_at=r["repaged_at"],
                resolved_by=r["repage_of_by"],
                resolved_at=r["repage_of_at"],
            )
            for r in rows
        ]

    async def repages_told(self, episodes: Sequence[RepagedEpisode]) -> int:
        """The API answered for these pages again: each told once (a later page again of the
        same alert, another ``repaged_at``, is told in its turn)."""
        if not episodes:
            return 0
        return len(
            await self.pool.fetch(
                "UPDATE alerter_alerts a SET repage_told_api_at = t.repaged_at"
                " FROM unnest($1::text[], $2::timestamptz[]) AS t(episode_id, repaged_at)"
                " WHERE a.episode_id = t.episode_id AND a.repaged_at = t.repaged_at"
                " RETURNING a.episode_id",
                [e.episode_id for e in episodes],
                [e.repaged_at for e in episodes],
            )
        )

    async def _reopen_incidents(self, conn: Conn, episode_ids: Sequence[str]) -> None:
        """The incidents of alerts paged again fire again: open, neither acknowledged nor resolved
        (the dashboard offers both again), each published with the episodes paged again
        (``repaged``), from which the API reopens its copy of those violations. Their rows are
        held since lock_rows."""
        for r in await conn.fetch(
            "SELECT DISTINCT incident_id FROM alerter_incident_episodes WHERE episode_id = ANY($1::text[])"
            " ORDER BY incident_id",
            list(episode_ids),
        ):
            await conn.execute(
                "UPDATE alerter_incidents SET state = 'open', acknowledged_at = NULL,"
                " acknowledged_by = NULL, acknowledged_note = NULL, resolved_at = NULL,"
                " resolved_by = NULL, resolved_note = NULL, resolved_note_at = NULL,"
                " revision = revision + 1 WHERE id = $1 AND merged_into IS NULL",
                r["incident_id"],
            )
            await self._outbox_incident(conn, r["incident_id"], "updated")

    async def _regroup(self, conn: Conn, episode_id: str, now: datetime) -> None:
        """Put a re-fired alert in an active group of each route it was grouped by, flushed now.

        Its group may still be active (other violations fire in it: the alert is news there
        again); else it closed once its resolution was told, and the route's active group with
        the same key (a new one if none, without group_wait: the problem is not new) takes it.
        """
        groups = await conn.fetch(
            "SELECT DISTINCT ON (g.route, g.group_key) g.id, g.route, g.group_key, g.labels, g.state"
            " FROM alerter_group_alerts ga JOIN alerter_groups g ON g.id = ga.group_id"
            " WHERE ga.episode_id = $1 ORDER BY g.route, g.group_key, (g.state = 'active') DESC, g.id DESC",
            episode_id,
        )
        for g in groups:
            if g["state"] == "active":
                # Held since lock_rows: it flushes now, the alert being news in it again.
                await conn.execute(
                    "UPDATE alerter_groups SET next_flush_at = least(next_flush_at, $2) WHERE id = $1",
                    g["id"],
                    now,
                )
                continue
            while True:
                group_id = await conn.fetchval(
                    "INSERT INTO alerter_groups (route, group_key, labels, lead_episode_id, created_at,"
                    " next_flush_at) VALUES ($1, $2, $3::jsonb, $4, $5, $5)"
                    " ON CONFLICT (route, group_key) WHERE state = 'active' DO NOTHING RETURNING id",
                    g["route"],
                    g["group_key"],
                    g["labels"],
                    episode_id,
                    now,
                )
                if group_id is None:
                    # Another violation's group with that key: it takes the alert at its next
                    # flush. FOR SHARE waits for a flush holding it, as ingest's _join_group does
                    # (the same exception to the lock order, see store.py); one it closed is
                    # skipped and the loop tries again.
                    group_id = await conn.fetchval(
                        "SELECT id FROM alerter_groups WHERE route = $1 AND group_key = $2"
                        " AND state = 'active' FOR SHARE",
                        g["route"],
                        g["group_key"],
                    )
                if group_id is not None:
                    break
            await conn.execute(
                "INSERT INTO alerter_group_alerts (group_id, episode_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING",
                group_id,
                episode_id,
            )
