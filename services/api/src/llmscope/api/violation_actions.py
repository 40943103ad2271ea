"""Announces people's actions on violations (acknowledged, resolved by hand) on the bus.

The API owns the ``violations`` table; the alerter learns of an action only from its
``violation_action.v1`` event (architecture rule: each service owns its tables). The row's
``action_pending`` is the outbox: the UPDATE that records the action sets it, and it is cleared
only once JetStream stored the event (and only if the row did not change meanwhile). A publish
that fails (NATS away) leaves it set, and :meth:`ViolationActions.run` publishes it again: an
action recorded is announced, at least once; the event's deterministic id makes a repeat a
duplicate the stream drops. The same UPDATE counts the episode's actions (``action_seq``, the
event's ``seq``): a request's own publish and this republishing may send two states of an episode
in either order, and the alerter keeps the one with the higher ``seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import asyncpg

from llmscope.bus.publisher import Publisher, PublishFailed
from llmscope.config.logs import get_logger
from llmscope.config.startup import log_failure
from llmscope.proto import subjects
from llmscope.proto.violation_action import ViolationAction, ViolationActionEvent, action_id

log = get_logger("llmscope.api.violation_actions")

REPUBLISH_S = 5.0
"""How often the pending actions are looked for (after a failed publish or a crash)."""
BATCH = 200


def action_event(row: asyncpg.Record) -> ViolationActionEvent:
    """The event of a ``violations`` row as it stands (its whole human state)."""
    action: ViolationAction = "resolved" if row["resolved_at"] is not None else "acknowledged"
    at = row["resolved_at"] if action == "resolved" else row["acknowledged_at"]
    return ViolationActionEvent(
        id=action_id(row["episode_id"], action, row["note"], row["action_seq"] or None),
        # When this state was made (a later note's time, not the first resolution's): the alerter
        # dates the note by it. A row changed by hand has none.
        ts=row["action_at"] or at,
        action=action,
        violation_id=row["id"],
        episode_id=row["episode_id"],
        provider=row["provider"],
        model=row["model"],
        acknowledged_by=row["acknowledged_by"],
        acknowledged_at=row["acknowledged_at"],
        resolved_by=row["resolved_by"],
        resolved_at=row["resolved_at"],
        note=row["note"],
        # 0: no action counted (a row changed by hand): sent as from an API before seq.
        seq=row["action_seq"] or None,
    )


class ViolationActions:
    """Publishes pending actions; attached to the API's publisher while NATS is connected."""

    def __init__(self, pool: Callable[[], asyncpg.Pool | None]) -> None:
        self._pool = pool
        self._publisher: Publisher | None = None

    def attach(self, publisher: Publisher | None) -> None:
        self._publisher = publisher

    async def announce(self, row: asyncpg.Record) -> bool:
        """Publish the action just recorded in ``row``; False (left pending for :meth:`run`)
        when it could not be published now. Never raises for the bus's sake: the action is
        recorded, the person's request succeeded."""
        try:
            return await self._publish([row], deadline=2.0) == 1
        except Exception:
            # The mark's clearing after the publish (PostgreSQL gone meanwhile) or anything
            # else: the action is recorded and still pending, so :meth:`run` publishes it again;
            # raising here answered 500 for an action the API had recorded.
            log_failure(log, "violation action not announced yet; tried again", id=row["id"])
            return False

    async def publish_pending(self) -> int:
        """Publish every pending action (oldest first, in batches); how many were."""
        pool = self._pool()
        if pool is None or self._publisher is None:
            return 0
        done = 0
        while True:
            rows = await pool.fetch(
                "SELECT id, episode_id, provider, model, acknowledged_by, acknowledged_at, resolved_by,"
                " resolved_at, note, action_seq, action_at FROM violations WHERE action_pending"
                " ORDER BY id LIMIT $1",
                BATCH,
            )
            published = await self._publish(rows)
            done += published
            if len(rows) < BATCH or published < len(rows):
                return done

    async def _publish(self, rows: Sequence[asyncpg.Record], deadline: float | None = None) -> int:
        pool, publisher = self._pool(), self._publisher
        if pool is None or publisher is None or not rows:
            return 0
        published = 0
        for row in rows:
            ev = action_event(row)
            try:
                await publisher.publish(
                    subjects.violation_actions(ev.provider, ev.action), ev, deadline=deadline
                )
            except PublishFailed as exc:
                log.warning("violation action not announced yet; tried again", id=ev.id, error=str(exc))
                return published
            # Cleared only if no action came since the read: a newer one stays pending.
            await pool.execute(
                "UPDATE violations SET action_pending = false WHERE id = $1 AND action_pending"
                " AND action_seq = $2",
                row["id"],
                row["action_seq"],
            )
            published += 1
        return published

    async def run(self, stop: asyncio.Event, every: float = REPUBLISH_S) -> None:
        """Publish what is pending every ``every`` s until ``stop`` (the first round at once:
        what a crash left)."""
        while not stop.is_set():
            try:
                await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                log_failure(log, "publishing pending violation actions failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
