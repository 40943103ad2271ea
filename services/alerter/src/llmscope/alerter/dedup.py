"""Whether a group must notify a channel now, and why (Alertmanager's DedupStage, as a pure function)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

NotifyReason = Literal["first", "new_violations", "repeat", "resolved"]


@dataclass(frozen=True, slots=True)
class LastNotification:
    """What a channel was last told about a group: when, and which episodes firing or resolved."""

    sent_at: datetime
    firing: frozenset[str]
    resolved: frozenset[str]


def to_announce_resolved(resolved: frozenset[str], last: LastNotification | None) -> frozenset[str]:
    """Episodes announced as firing that are resolved now and were not yet announced as such."""
    if last is None:
        return frozenset()
    return (resolved & last.firing) - last.resolved


def needs_update(
    *,
    firing: frozenset[str],
    resolved: frozenset[str],
    acknowledged: frozenset[str],
    last: LastNotification | None,
    now: datetime,
    repeat_interval: float,
    send_resolved: bool,
    paged_again: frozenset[str] = frozenset(),
) -> NotifyReason | None:
    """The reason to notify, or None.

    ``firing`` excludes muted episodes. Acknowledged episodes stop reminders, never the news of
    another violation or of the resolution. ``paged_again``: firing episodes paged again (after
    a hand resolution) since the channel's last message: news, even to a channel never told they
    resolved (``send_resolved: false``), for which they fired all along.
    """
    if last is None:
        return "first" if firing else None
    if (firing - last.firing) or (paged_again & firing):
        return "new_violations"
    if send_resolved and to_announce_resolved(resolved, last):
        return "resolved"
    unacknowledged = firing - acknowledged
    if unacknowledged and (now - last.sent_at).total_seconds() >= repeat_interval:
        return "repeat"
    return None
