"""What people did on the API, mirrored in the alerter: acknowledgements, hand resolutions and notes
(``violation_action.v1``), and the acknowledgements a notification carries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from llmscope.alerter.hand_resolution_store import HandResolutionStore
from llmscope.alerter.store_base import Conn
from llmscope.proto.violation_action import ViolationActionEvent

_INSERT_ACTION = (
    "INSERT INTO alerter_violation_actions AS v (episode_id, acknowledged_by, acknowledged_at,"
    " resolved_by, resolved_at, note, seq, note_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    " ON CONFLICT (episode_id)"
)
# A note's time is the event's that changed it (the same note in a later state keeps its time).
_NOTE_AT = (
    " note_at = CASE WHEN v.note IS NOT DISTINCT FROM EXCLUDED.note THEN v.note_at ELSE EXCLUDED.note_at END,"
)
# A violation_action.v1 event is the episode's whole state at the API, numbered by ``seq``: it
# replaces the row only when it is newer (an older one delivered late, a redelivery, a replay or
# the second of two API replicas' publishes, changes nothing), every column of it. A row with no
# seq holds only events of an API from before seq: all older.
_NEWER_ACTION = (
    _INSERT_ACTION + " DO UPDATE SET acknowledged_by = EXCLUDED.acknowledged_by,"
    " acknowledged_at = EXCLUDED.acknowledged_at, resolved_by = EXCLUDED.resolved_by,"
    " resolved_at = EXCLUDED.resolved_at," + _NOTE_AT + " note = EXCLUDED.note, seq = EXCLUDED.seq"
    " WHERE v.seq IS NULL OR v.seq < EXCLUDED.seq"
)
# An event without seq (an API from before it; still in the stream, or replayed) is older than
# any with one: it changes nothing of a row a numbered event wrote. Among themselves they merge
# as before seq: the first acknowledgement and resolution kept (the API never changes them), the
# note of the one that came last (their order is unknown).
_UNSEQUENCED_ACTION = (
    _INSERT_ACTION + " DO UPDATE SET"
    " acknowledged_by = coalesce(v.acknowledged_by, EXCLUDED.acknowledged_by),"
    " acknowledged_at = coalesce(v.acknowledged_at, EXCLUDED.acknowledged_at),"
    " resolved_by = coalesce(v.resolved_by, EXCLUDED.resolved_by),"
    " resolved_at = coalesce(v.resolved_at, EXCLUDED.resolved_at),"
    " note_at = CASE WHEN EXCLUDED.note IS NULL OR EXCLUDED.note IS NOT DISTINCT FROM v.note THEN v.note_at"
    " ELSE EXCLUDED.note_at END,"
    " note = coalesce(EXCLUDED.note, v.note) WHERE v.seq IS NULL"
)


class ActionStore(HandResolutionStore):
    """The alerter's copy of each episode's state at the API (``alerter_violation_actions``)."""

    async def _sync_acks(self, conn: Conn, episode_ids: Sequence[str], *, skip_locked: bool = False) -> None:
        """Copy acknowledgements made through the API, as its violation_action.v1 events brought
        them (the alerter's own ``alerter_violation_actions``; never the API's tables). With
        ``skip_locked``, only to alerts no other transaction holds (a flush holding its group)."""
        if not episode_ids:
            return
        await conn.execute(
            "UPDATE alerter_alerts a SET acknowledged_at = v.acknowledged_at,"
            " acknowledged_by = v.acknowledged_by"
            " FROM alerter_violation_actions v WHERE v.episode_id = a.episode_id AND a.episode_id = ANY($1)"
            " AND v.acknowledged_at IS NOT NULL AND a.acknowledged_at IS NULL"
            # One made before the alert was paged again acknowledged the page it undid.
            " AND (a.repaged_at IS NULL OR v.acknowledged_at > a.repaged_at)"
            + (
                " AND a.episode_id IN (SELECT episode_id FROM alerter_alerts WHERE episode_id = ANY($1)"
                " FOR NO KEY UPDATE SKIP LOCKED)"
                if skip_locked
                else ""
            ),
            list(episode_ids),
        )

    async def _sync_resolution_notes(self, conn: Conn, episode_ids: Sequence[str]) -> None:
        """A newer note on a resolution already applied (a later action event, higher ``seq``)
        replaces the one copied when the alert was resolved: the alert's record, and any message
        built from it afterwards, show the person's latest word. Nothing is sent for the change
        itself: the channels were told of the resolution. Only alerts this resolution resolved
        (the same ``resolved_at``): one resolved otherwise (an incident, a merge) keeps its note."""
        if not episode_ids:
            return
        await conn.execute(
            "UPDATE alerter_alerts a SET resolved_note = v.note"
            " FROM alerter_violation_actions v WHERE v.episode_id = a.episode_id AND a.episode_id = ANY($1)"
            " AND a.resolved_at = v.resolved_at AND a.resolved_note IS DISTINCT FROM v.note",
            list(episode_ids),
        )

    async def record_violation_actions(self, events: Sequence[ViolationActionEvent]) -> int:
        """Keep what people did through the API (violation_action.v1) and apply it to the alerts
        this alerter holds: acknowledgements stop reminders, a hand resolution tells the paged
        channels at once. Committed before the events are acked; how many alerts were resolved.
        An action whose violation has not come yet waits in ``alerter_violation_actions``.

        Each event is the episode's whole state; the one with the highest ``seq`` stands, every
        column of it, whatever order they come in (``_NEWER_ACTION``)."""
        if not events:
            return 0
        async with self.pool.acquire() as conn, conn.transaction():
            # In episode order: concurrent batches of replicas lock the rows in the same order.
            for ev in sorted(events, key=lambda e: e.episode_id):
                await conn.execute(
                    _NEWER_ACTION if ev.seq is not None else _UNSEQUENCED_ACTION,
                    ev.episode_id,
                    ev.acknowledged_by,
                    ev.acknowledged_at,
                    ev.resolved_by,
                    ev.resolved_at,
                    ev.note,
                    ev.seq,
                    ev.ts if ev.note is not None else None,
                )
            episodes = sorted({ev.episode_id for ev in events})
            # The episodes' incidents, groups and alerts, in the one order (lock_rows): the note
            # synced to a resolved incident below must not take its row after its alerts.
            await self.lock_rows(conn, episodes, groups=True)
            # Activity, applied or not (an old event may come again): retention counts from it.
            await conn.execute(
                "UPDATE alerter_violation_actions SET last_event_at = now() WHERE episode_id = ANY($1)",
                episodes,
            )
            await self._sync_acks(conn, episodes)
            await self._sync_resolution_notes(conn, episodes)
            resolved = await self._apply_hand_resolutions(conn, episodes)
            await self._sync_incident_notes(conn, episodes)
            return resolved

    async def acknowledge(self, episode_ids: Iterable[str], by: str) -> int:
        """Acknowledge episodes: reminders stop; new violations and resolutions still notify."""
        result = await self.pool.execute(
            "UPDATE alerter_alerts SET acknowledged_at = $2, acknowledged_by = $3"
            " WHERE episode_id = ANY($1) AND acknowledged_at IS NULL",
            list(episode_ids),
            self.clock(),
            by,
        )
        return int(result.split()[-1])
