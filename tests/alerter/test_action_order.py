"""People's actions reach the alerter in whatever order the bus brings them (a redelivery, a
replay, the API's outbox republishing while a request publishes, two API replicas): the state of
the newest (``violation_action.v1`` ``seq``) stands, every column of it.

Real NATS and Postgres; the events go through the alerter's durable consumer.
"""

from __future__ import annotations

from datetime import timedelta

from nats.js import JetStreamContext

from llmscope.alerter.service import actions_durable
from llmscope.proto import subjects
from llmscope.proto.violation import ViolationEvent
from llmscope.proto.violation_action import ViolationAction, ViolationActionEvent, action_id
from tests.alerter.api_side import api_side
from tests.alerter.factories import T0, violation
from tests.alerter.harness import Running, eventually, start_alerter

ROW = (
    "SELECT acknowledged_by, acknowledged_at, resolved_by, resolved_at, note, seq"
    " FROM alerter_violation_actions WHERE episode_id = $1"
)


def state(
    ev: ViolationEvent,
    seq: int | None,
    note: str | None,
    *,
    resolved_by: str | None = None,
) -> ViolationActionEvent:
    """The episode's state at the API after its ``seq``-th action: acknowledged by ana at T0,
    resolved by ``resolved_by`` a minute later when given."""
    action: ViolationAction = "resolved" if resolved_by else "acknowledged"
    resolved_at = T0 + timedelta(minutes=1) if resolved_by else None
    return ViolationActionEvent(
        id=action_id(ev.episode_id, action, note, seq),
        ts=resolved_at or T0,
        action=action,
        violation_id=ev.episode_id,
        episode_id=ev.episode_id,
        provider=ev.provider,
        model=ev.model,
        acknowledged_by="ana",
        acknowledged_at=T0,
        resolved_by=resolved_by,
        resolved_at=resolved_at,
        note=note,
        seq=seq,
    )


async def all_acked(js: JetStreamContext) -> bool:
    stream = await js.stream_info(subjects.STREAM_VIOLATION_ACTIONS)
    info = await js.consumer_info(subjects.STREAM_VIOLATION_ACTIONS, actions_durable("alerter"))
    return bool(info.ack_floor.stream_seq == stream.state.last_seq and info.num_ack_pending == 0)


async def deliver(run: Running, js: JetStreamContext, *events: ViolationActionEvent) -> None:
    """Publish ``events`` in this order and wait until the alerter stored and acked each one."""
    api = await api_side(js)
    for event in events:
        await api.publish_action(event)
        await eventually(lambda: all_acked(js), what=f"{event.id} stored and acked")


async def test_an_older_action_delivered_after_a_newer_one_changes_nothing(
    database_url: str, js: JetStreamContext
) -> None:
    run = await start_alerter(database_url, js, {})
    try:
        ev = violation(1)
        newer = state(ev, 2, "fixed: restarted ollama", resolved_by="bo")
        older = state(ev, 1, "looking")
        await deliver(run, js, newer, older)
        row = await run.pool.fetchrow(ROW, ev.episode_id)
        assert row is not None
        assert dict(row) == {
            "acknowledged_by": "ana",
            "acknowledged_at": T0,
            "resolved_by": "bo",
            "resolved_at": T0 + timedelta(minutes=1),
            "note": "fixed: restarted ollama",
            "seq": 2,
        }
        # A note changed back (A, B, then A again) is a new state, not a duplicate of the first.
        again = state(ev, 3, "looking", resolved_by="bo")
        assert again.id != older.id
        await deliver(run, js, again, newer)
        row = await run.pool.fetchrow(ROW, ev.episode_id)
        assert row is not None
        assert (row["note"], row["seq"], row["resolved_by"]) == ("looking", 3, "bo")
    finally:
        await run.close()


async def test_events_without_seq_are_older_than_any_with_one(
    database_url: str, js: JetStreamContext
) -> None:
    """An API from before ``seq`` published none: its events still in the stream (or replayed)
    are merged as before among themselves and never undo a numbered state."""
    run = await start_alerter(database_url, js, {})
    try:
        ev = violation(2)
        await deliver(run, js, state(ev, None, "looking"), state(ev, None, "still looking"))
        row = await run.pool.fetchrow(ROW, ev.episode_id)
        assert row is not None
        assert (row["acknowledged_by"], row["note"], row["seq"]) == ("ana", "still looking", None)
        # The first numbered event replaces it all; an unnumbered one after it changes nothing.
        await deliver(run, js, state(ev, 1, None, resolved_by="bo"), state(ev, None, "late"))
        row = await run.pool.fetchrow(ROW, ev.episode_id)
        assert row is not None
        assert (row["resolved_by"], row["note"], row["seq"]) == ("bo", None, 1)
    finally:
        await run.close()
