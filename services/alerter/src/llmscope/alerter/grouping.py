"""Grouping and throttling of one alert group (Alertmanager's aggregation groups), as pure code.

A group collects the violations of one route with equal ``group_by`` labels. It first flushes
``group_wait`` after its first violation, then every ``group_interval``; at each flush every
channel is asked, through :func:`dedup.needs_update`, whether it must be told anything. Muted
episodes are left out of the message (they stay recorded). A group whose episodes are all resolved
closes at the first flush after its resolved message was sent (or failed for good); a later
violation opens a new group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from llmscope.alerter.dedup import LastNotification, NotifyReason, needs_update, to_announce_resolved
from llmscope.alerter.model import Alert
from llmscope.alerter.routing import Route
from llmscope.alerter.silences import Silence, muting


@dataclass(frozen=True, slots=True)
class ChannelView:
    """What grouping needs to know of a channel."""

    name: str
    send_resolved: bool = True
    kind: str = ""


@dataclass(frozen=True, slots=True)
class FlushPlan:
    """One message to send to one channel, and what it records as told."""

    channel: str
    reason: NotifyReason
    firing: tuple[Alert, ...]
    resolved: tuple[Alert, ...]
    record_firing: frozenset[str]
    record_resolved: frozenset[str]


@dataclass(frozen=True, slots=True)
class GroupDecision:
    plans: tuple[FlushPlan, ...]
    muted: Mapping[str, str]
    """episode id -> id of the silence muting it"""
    close: bool
    next_flush_at: datetime


def first_flush_at(route: Route, created_at: datetime) -> datetime:
    return created_at + timedelta(seconds=route.group_wait)


def mute(
    alerts: Iterable[Alert], silences: Sequence[Silence], now: datetime
) -> tuple[list[Alert], dict[str, str]]:
    """Stage 1: the firing alerts left after silences and maintenance windows, and who muted what."""
    kept: list[Alert] = []
    muted: dict[str, str] = {}
    for alert in alerts:
        silence = muting(silences, alert.labels, now) if alert.firing else None
        if silence is None:
            kept.append(alert)
        else:
            muted[alert.episode_id] = silence.id
    return kept, muted


def paged_again_since(firing: Iterable[Alert], since: datetime | None) -> frozenset[str]:
    """The firing alerts paged again (after a hand resolution) since a channel's last message of
    the group at ``since`` (None: it has none): what that channel has not been told yet."""
    return frozenset(
        a.episode_id for a in firing if a.repaged_at is not None and (since is None or a.repaged_at > since)
    )


def decide(
    *,
    route: Route,
    alerts: Sequence[Alert],
    channels: Sequence[ChannelView],
    last: Mapping[str, LastNotification | None],
    in_flight: frozenset[str] = frozenset(),
    silences: Sequence[Silence] = (),
    now: datetime,
) -> GroupDecision:
    """Stages mute -> dedup for every channel of a group at one flush."""
    kept, muted = mute(alerts, silences, now)
    firing = [a for a in kept if a.firing]
    resolved = [a for a in kept if not a.firing]
    firing_ids = frozenset(a.episode_id for a in firing)
    resolved_ids = frozenset(a.episode_id for a in resolved)
    acked = frozenset(a.episode_id for a in firing if a.acknowledged)
    plans: list[FlushPlan] = []
    for channel in channels:
        if channel.name in in_flight:
            continue  # its previous message is still being delivered; look again next flush
        previous = last.get(channel.name)
        reason = needs_update(
            firing=firing_ids,
            resolved=resolved_ids,
            acknowledged=acked,
            last=previous,
            now=now,
            repeat_interval=route.repeat_interval,
            send_resolved=channel.send_resolved,
            paged_again=paged_again_since(firing, previous.sent_at if previous else None),
        )
        if reason is None:
            continue
        announce = to_announce_resolved(resolved_ids, previous) if channel.send_resolved else frozenset()
        # An episode firing again (paged again after a hand resolution) is no longer told
        # resolved: its clear is news to announce.
        told_resolved = (previous.resolved - firing_ids) if previous else frozenset()
        plans.append(
            FlushPlan(
                channel=channel.name,
                reason=reason,
                firing=tuple(firing),
                resolved=tuple(a for a in resolved if a.episode_id in announce),
                record_firing=firing_ids,
                record_resolved=told_resolved | announce,
            )
        )
    # Close only once nothing is left to tell: a resolved message planned now must first be sent
    # (or fail for good); if it expires, the next flush plans it again from the last message sent.
    close = not in_flight and not plans and not any(a.firing for a in alerts)
    return GroupDecision(
        plans=tuple(plans),
        muted=muted,
        close=close,
        next_flush_at=now + timedelta(seconds=route.group_interval),
    )
