"""Retention of the alerter's own tables (off the ack path; why each condition is safe: retention.py):
finished records older than the cutoffs are deleted in short transactions, children first, by one
replica at a time."""

from __future__ import annotations

from dataclasses import dataclass

from llmscope.alerter.retention import Cutoffs
from llmscope.alerter.store_base import StoreBase


class RetentionStore(StoreBase):
    """The retention sweep of the alerter's tables."""

    async def sweep(self, cutoffs: Cutoffs, batch: int = 500) -> dict[str, int] | None:
        """Delete finished records older than the cutoffs: rows deleted per table, or None when
        another replica is sweeping. Short transactions of ``batch`` parent rows, in key order."""
        counts = {table: 0 for sweep in _SWEEPS for table, _ in sweep.deletes}
        async with self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_ID):
                return None
            try:
                for sweep in _SWEEPS:
                    cutoff = cutoffs.replay if sweep.replay else cutoffs.records
                    after: int | str = 0 if sweep.key == "bigint" else ""
                    while True:
                        async with conn.transaction():
                            args = (after, batch, cutoff, *((cutoffs.now,) if sweep.uses_now else ()))
                            keys = [r["k"] for r in await conn.fetch(sweep.select, *args)]
                            for table, sql in sweep.deletes:
                                if keys:
                                    counts[table] += int((await conn.execute(sql, keys)).split()[-1])
                        if len(keys) < batch:
                            break
                        after = keys[-1]
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK_ID)
        return counts


RETENTION_LOCK_ID = 0x4C4C4D_525445  # "LLM" "RTE": one sweeper at a time; the others skip a round


@dataclass(frozen=True, slots=True)
class _Sweep:
    """Parents selected in key order after $1 (limit $2, cutoff $3, now $4 if used), then deletes
    of the selected keys ($1), children first: the foreign keys have no ON DELETE CASCADE."""

    key: str
    replay: bool  # the replay cutoff (alerts, early clears) rather than the records cutoff
    select: str
    deletes: tuple[tuple[str, str], ...]
    uses_now: bool = False


# SKIP LOCKED leaves rows that a flush, a claim or an analysis holds to the next sweep.
_SWEEPS = (
    _Sweep(
        "bigint",
        False,
        "SELECT g.id AS k FROM alerter_groups g WHERE g.id > $1 AND g.state = 'closed'"
        " AND g.closed_at < $3 AND NOT EXISTS (SELECT 1 FROM"
        " alerter_notifications n WHERE n.group_id = g.id"
        " AND (n.status NOT IN ('sent', 'failed', 'expired') OR n.created_at >= $3))"
        " ORDER BY g.id LIMIT $2 FOR UPDATE OF g SKIP LOCKED",
        (
            (
                "alerter_delivery_attempts",
                "DELETE FROM alerter_delivery_attempts WHERE notification_id IN"
                " (SELECT id FROM alerter_notifications WHERE group_id = ANY($1::bigint[]))",
            ),
            ("alerter_notifications", "DELETE FROM alerter_notifications WHERE group_id = ANY($1::bigint[])"),
            ("alerter_group_alerts", "DELETE FROM alerter_group_alerts WHERE group_id = ANY($1::bigint[])"),
            (
                # A Slack thread outside any incident is keyed to its group (notifiers/slack.py).
                "alerter_threads",
                "DELETE FROM alerter_threads WHERE thread_key IN"
                " (SELECT 'group:' || k FROM unnest($1::bigint[]) AS k)",
            ),
            ("alerter_groups", "DELETE FROM alerter_groups WHERE id = ANY($1::bigint[])"),
        ),
    ),
    _Sweep(
        "text",
        False,
        "SELECT i.id AS k FROM alerter_incidents i WHERE i.id > $1 AND i.state = 'resolved'"
        " AND i.resolved_at < $3 AND i.last_violation_at < $3"
        " AND (i.analysis_lease_until IS NULL OR i.analysis_lease_until < $4)"
        " AND NOT EXISTS (SELECT 1 FROM alerter_incident_episodes e JOIN alerter_alerts a"
        " USING (episode_id) WHERE e.incident_id = i.id AND a.cleared_at IS NULL)"
        " ORDER BY i.id LIMIT $2 FOR UPDATE OF i SKIP LOCKED",
        (
            (
                "alerter_incident_similar",
                "DELETE FROM alerter_incident_similar WHERE incident_id = ANY($1::text[])"
                " OR similar_id = ANY($1::text[])",
            ),
            (
                "alerter_incident_tickets",
                "DELETE FROM alerter_incident_tickets WHERE incident_id = ANY($1::text[])",
            ),
            (
                "alerter_incident_episodes",
                "DELETE FROM alerter_incident_episodes WHERE incident_id = ANY($1::text[])",
            ),
            (
                "alerter_threads",
                "DELETE FROM alerter_threads WHERE thread_key IN"
                " (SELECT 'incident:' || k FROM unnest($1::text[]) AS k)",
            ),
            ("alerter_incidents", "DELETE FROM alerter_incidents WHERE id = ANY($1::text[])"),
        ),
        uses_now=True,
    ),
    _Sweep(
        "text",
        True,
        "SELECT a.episode_id AS k FROM alerter_alerts a WHERE a.episode_id > $1"
        " AND a.cleared_at < $3 AND a.received_at < $3"
        " AND NOT EXISTS (SELECT 1 FROM alerter_group_alerts ga WHERE ga.episode_id = a.episode_id)"
        " AND NOT EXISTS (SELECT 1 FROM alerter_incident_episodes e WHERE e.episode_id = a.episode_id)"
        " ORDER BY a.episode_id LIMIT $2 FOR UPDATE OF a SKIP LOCKED",
        (("alerter_alerts", "DELETE FROM alerter_alerts WHERE episode_id = ANY($1::text[])"),),
    ),
    _Sweep(
        "text",
        True,
        "SELECT episode_id AS k FROM alerter_early_clears WHERE episode_id > $1 AND received_at < $3"
        " ORDER BY episode_id LIMIT $2 FOR UPDATE SKIP LOCKED",
        (("alerter_early_clears", "DELETE FROM alerter_early_clears WHERE episode_id = ANY($1::text[])"),),
    ),
    _Sweep(
        # Kept while the episode's alert is (an open one still takes a hand resolution from
        # here, and a replayed violation stops at its alert), then, as early clears, as long as
        # their violation or an event of theirs may still come (again) since the last one came.
        "text",
        True,
        "SELECT v.episode_id AS k FROM alerter_violation_actions v WHERE v.episode_id > $1"
        " AND v.last_event_at < $3"
        " AND NOT EXISTS (SELECT 1 FROM alerter_alerts a WHERE a.episode_id = v.episode_id)"
        " ORDER BY v.episode_id LIMIT $2 FOR UPDATE OF v SKIP LOCKED",
        (
            (
                "alerter_violation_actions",
                "DELETE FROM alerter_violation_actions WHERE episode_id = ANY($1::text[])",
            ),
        ),
    ),
    _Sweep(
        "bigint",
        False,
        "SELECT id AS k FROM alerter_outbox WHERE id > $1 AND published_at < $3"
        " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        (("alerter_outbox", "DELETE FROM alerter_outbox WHERE id = ANY($1::bigint[])"),),
    ),
    _Sweep(
        "text",
        False,
        # Expired by hand or past its end: never active again. Open-ended silences stay.
        "SELECT id AS k FROM alerter_silences WHERE id > $1 AND (expired_at < $3 OR ends_at < $3)"
        " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        (("alerter_silences", "DELETE FROM alerter_silences WHERE id = ANY($1::text[])"),),
    ),
)
