"""Retention: finished records older than ``LLMSCOPE_ALERTER_RETENTION_DAYS`` are deleted.

A sweep runs at start and then hourly in every replica (:meth:`Store.sweep` holds the SQL). What
goes, and why none of it is still needed for exactly-once delivery, reminders or muting:

- a **group** with its **notifications**, their **delivery attempts** and its alert memberships,
  once the group is ``closed`` before the cutoff and none of its notifications is still
  ``sending``. Closing is final: it happens only when nothing fires and nothing is in flight, a
  later violation opens a new group with a new id, and only active groups are flushed or deduped.
  The notification log is the idempotency record of *sending*: a claim whose sender died is taken
  over (``sending`` rows, never deleted) and dedup reads the latest notifications of an *active*
  group (kept with it). Ids embed the never-reused group id, so no message id comes back either.
- an **incident** with its episode links and similarity links, once ``resolved`` before the cutoff,
  none of its violations still firing and no analysis under way.
- an **alert**, once cleared and received before the *replay* cutoff and in no remaining group or
  incident; an **early clear** (a clear whose open never came) received before the same cutoff.
  These rows, not the notification log, are what make re-ingestion idempotent: a violation seen
  again stops at its alert row (``ON CONFLICT DO NOTHING``) before any group, notification or
  incident is touched; without it, it would notify as new. JetStream redelivers an unacked message
  for minutes, but a fresh durable (``DeliverPolicy.ALL``: a renamed ``LLMSCOPE_ALERTER_DURABLE``,
  a deleted consumer) replays the whole violations stream, and the engine re-derives violations
  from the telemetry stream after a restore. So the replay cutoff is never later than
  ``max(LLMSCOPE_VIOLATIONS_MAX_AGE_H, LLMSCOPE_TELEMETRY_MAX_AGE_H)`` plus a day for clock skew
  (the open message was stored before the alert's ``received_at``): by then no stream holds it.
- a person's **action** from the API (``alerter_violation_actions``), once no alert of its
  episode is kept and the last event of its actions came before the *replay* cutoff. While the
  alert is kept (open, or cleared within the replay window) the action stays: an open alert takes
  a hand resolution from it at the next tick, whatever the action's age (swept by its first
  arrival, an episode still open 90 days after its acknowledgement lost it). After that, the
  action stays as long as its violation or an action event (the actions stream has the violations
  stream's max age) could come again, counted from the last one that came, applied or not.
- an **outbox** event published before the cutoff (JetStream's de-duplication window on its
  ``msg_id`` is minutes); unpublished events stay until published.
- a **silence** expired by hand or ended before the cutoff; open-ended ones stay.

Anything else (open alerts, active groups, ``sending`` claims, unresolved incidents, pending
outbox rows, active or future silences) stays whatever its age.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Beyond the streams' max age: the stream's clock, Postgres's and the alerter's may differ.
REPLAY_MARGIN = timedelta(days=1)
SWEEP_EVERY_S = 3600.0
DEFAULT_REPLAY_WINDOW_S = 2160 * 3600.0  # the violations stream's default max age (90 days)
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Rows finished before these instants may be deleted."""

    now: datetime
    records: datetime  # groups (notifications, attempts), incidents, outbox, silences
    replay: datetime  # alerts and early clears: never later than ``records``


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long finished records are kept; ``days == 0`` keeps everything forever."""

    days: float = 90.0
    replay_window_s: float = DEFAULT_REPLAY_WINDOW_S  # the longest stream max age
    every_s: float = SWEEP_EVERY_S

    @property
    def enabled(self) -> bool:
        return self.days > 0

    def cutoffs(self, now: datetime) -> Cutoffs | None:
        """The cutoffs of a sweep at ``now``; None when retention is off."""
        if not self.enabled:
            return None
        records = _before(now, self.days * 86400)
        replay = min(records, _before(now, self.replay_window_s + REPLAY_MARGIN.total_seconds()))
        return Cutoffs(now=now, records=records, replay=replay)


def _before(now: datetime, seconds: float) -> datetime:
    try:
        return max(now - timedelta(seconds=seconds), _EARLIEST)
    except OverflowError:  # an age beyond year 1: nothing is that old
        return _EARLIEST
