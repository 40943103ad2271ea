"""``notification.v1``: what the alerter sends to generic webhooks (and anything that wants it).

One notification is one grouped message for one channel: the violation events that are firing
in the group and those it announces as resolved, with why it was sent. The ``id`` is the
alerter's idempotency key: a receiver that sees the same id twice has seen the same message.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from llmscope.proto.base import Event
from llmscope.proto.violation import ViolationEvent

NotifyReason = Literal["first", "new_violations", "repeat", "resolved", "test", "merged"]
"""``merged``: the closing message of an incident folded into its host's cascade (no alerts)."""
NotificationStatus = Literal["firing", "resolved"]


class NotificationEvent(Event, frozen=True, kw_only=True, tag="notification.v1"):
    """A grouped alert message: the firing and newly resolved violations of one group."""

    reason: NotifyReason
    status: Annotated[NotificationStatus, Meta(description="resolved when nothing in the group fires")]
    route: str
    group_key: str
    group_labels: dict[str, str] = msgspec.field(default_factory=dict)
    channel: str
    firing: tuple[ViolationEvent, ...] = ()
    resolved: tuple[ViolationEvent, ...] = ()
    acknowledged: Annotated[tuple[str, ...], Meta(description="episode ids acknowledged")] = ()
    dashboard_url: str = ""
    title: Annotated[str, Meta(description="the message's title: state, models, what moved")] = ""
    text: Annotated[
        str,
        Meta(description="the message in plain text: what, since when, how sure, what else, links"),
    ] = ""
    incident_id: Annotated[str, Meta(description="the incident the group belongs to ('' if none)")] = ""
    incident_url: str = ""
    cascade_models: Annotated[
        tuple[str, ...], Meta(description="every model of the incident when it is a cascade")
    ] = ()
    merged_into: Annotated[
        str, Meta(description="reason merged: the incident this one continues as ('' otherwise)")
    ] = ""
    merged_into_url: str = ""
