"""Requests the API sends the alerter over core NATS request/reply, and the alerter's replies.

The alerter owns channels and their secrets, incident lifecycle, silences and the notification
log; the API never reads its tables. Each request has its own subject (``subjects.alerter_*``),
a JSON body of one of the request Structs below and a JSON reply. Replicas answer in one queue
group, so each request is answered once. No answer (no responders, or a timeout) means no
alerter is running.

Every reply carries ``error`` (empty when fine) and, for a request the alerter refuses as
invalid, ``field``: the request field at fault, so the API can answer 422 naming it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from llmscope.proto.incident import IncidentEvent

ControlStatus = Literal["ok", "invalid", "not_found", "conflict", "error"]
TestStatus = Literal["sent", "failed", "expired", "not_configured", "invalid_config"]
Person = Annotated[str, Meta(max_length=200)]
Note = Annotated[str, Meta(max_length=4000)]


TEST_SEND_MAX_S = 10.0
"""The longest the alerter takes over a channel's test send: one attempt, bounded by this."""
TICKET_TEST_MAX_S = 30.0
"""The longest it takes over the ticket test (``tickets``: a ticket opened, commented on and
closed, one try of each request): the whole test is bounded by this."""
TEST_REPLY_MARGIN_S = 5.0
"""What the API waits beyond those for the reply (reading the settings, the round trip, a busy
alerter), before it says that the alerter did not answer."""


def send_max_s(channel: str) -> float:
    """The longest the alerter takes over a test send through ``channel`` (``tickets``: the tracker)."""
    return TICKET_TEST_MAX_S if channel == "tickets" else TEST_SEND_MAX_S


def reply_wait_s(channel: str) -> float:
    """How long the API waits for the alerter's answer to a test send through ``channel``."""
    return send_max_s(channel) + TEST_REPLY_MARGIN_S


class AlertTestRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``subjects.alerter_test()``: send one test message through a channel (name or kind)."""

    channel: Annotated[str, Meta(min_length=1, max_length=200)]


class AlertTestReply(msgspec.Struct, frozen=True, kw_only=True):
    """The channel's answer to the test message; never contains a secret."""

    ok: bool
    channel: str
    kind: str | None = None
    status: TestStatus
    detail: str = ""
    attempts: int = 0


class IncidentActionRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``subjects.alerter_incident_action()``: acknowledge or resolve an incident."""

    incident_id: Annotated[str, Meta(min_length=1, max_length=256)]
    action: Literal["acknowledge", "resolve"]
    by: Annotated[str, Meta(min_length=1, max_length=200)]
    note: Note | None = None


class IncidentActionReply(msgspec.Struct, frozen=True, kw_only=True):
    """``ok`` with the incident after the change (also published on its subject), or why not."""

    status: ControlStatus
    incident: IncidentEvent | None = None
    error: str = ""


DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Weekday names in recurring windows (``WeeklyWindow.days``, ``MonthlyWindow.weekdays``)."""
NTH_NAMES = ("first", "second", "third", "fourth", "last")
"""Which occurrence of a weekday in its month (``"first sun"``); ``last`` is the 4th or the 5th."""


class WeeklyWindow(msgspec.Struct, frozen=True, kw_only=True):
    """A weekly recurring window: weekdays (``mon``..``sun``), local start and end, time zone."""

    days: tuple[str, ...]
    start: Annotated[str, Meta(description="HH:MM, local time")]
    end: Annotated[str, Meta(description="HH:MM, local time; <= start runs past midnight")]
    timezone: str = "UTC"


class MonthlyWindow(msgspec.Struct, frozen=True, kw_only=True):
    """A monthly recurring window: days of the month and/or nth weekdays, local start and end, time zone.

    The window opens on every day matching ``days`` or ``weekdays`` (at least one of them). The
    alerter validates the values and names the field at fault (``monthly.days``, ...), so the
    types here stay lenient.
    """

    days: Annotated[
        tuple[int, ...],
        Meta(description="days of the month, 1..31; a day a month lacks (31 in April) does not occur in it"),
    ] = ()
    weekdays: Annotated[
        tuple[str, ...],
        Meta(description='nth weekdays: first|second|third|fourth|last and mon..sun, e.g. "first sun"'),
    ] = ()
    start: Annotated[str, Meta(description="HH:MM, local time")]
    end: Annotated[str, Meta(description="HH:MM, local time; <= start runs past midnight (and month end)")]
    timezone: Annotated[str, Meta(description="IANA time zone of start and end, e.g. Europe/Berlin")] = "UTC"


class SilenceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A silence or maintenance window to create; empty matchers match anything.

    It recurs at most one way: ``weekly`` or ``monthly`` (added later: a reader that predates it
    ignores it); ``starts_at``/``ends_at`` bound either.
    """

    kind: Literal["silence", "maintenance"] = "silence"
    reason: str
    author: str
    models: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    weekly: WeeklyWindow | None = None
    monthly: MonthlyWindow | None = None


class SilenceRecord(SilenceSpec, frozen=True, kw_only=True):
    """A stored silence, with its state now."""

    id: str
    created_at: datetime | None = None
    expired_at: datetime | None = None
    active: bool = False


class SilenceCreateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``subjects.alerter_silence_create()``."""

    silence: SilenceSpec


class SilenceListRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``subjects.alerter_silence_list()``: current and future silences, or all of them."""

    include_expired: bool = False


class SilenceExpireRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``subjects.alerter_silence_expire()``: end a silence now."""

    id: Annotated[str, Meta(min_length=1, max_length=256)]


class SilenceReply(msgspec.Struct, frozen=True, kw_only=True):
    """Answer to create, list and expire; ``field`` names the request field an ``invalid`` is about."""

    status: ControlStatus
    silences: tuple[SilenceRecord, ...] = ()
    field: str = ""
    error: str = ""


NotificationStatus = Literal["sending", "sent", "failed", "expired"]


class NotificationQuery(msgspec.Struct, frozen=True, kw_only=True):
    """``subjects.alerter_notifications()``: the notification log, newest first.

    ``before`` is the ``created_at`` and ``before_id`` the id of the last row already seen.
    """

    status: NotificationStatus | None = None
    channel: str | None = None
    since: datetime | None = None
    before: datetime | None = None
    before_id: str | None = None
    limit: Annotated[int, Meta(ge=1, le=10_000)] = 50


class DeliveryAttemptRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One try at delivering a notification."""

    attempt: int
    at: datetime
    ok: bool
    retryable: bool
    status_code: int | None = None
    detail: str = ""
    instance: str = ""
    state: Literal["in_flight", "done", "interrupted"] = "done"
    """in_flight: being sent now (or its sender died and no one took over yet); interrupted: the
    sender died during it, so the receiver may or may not have got it."""


class NotificationRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One notification of the log with its delivery attempts."""

    id: str
    route: str
    group_key: str
    channel: str
    channel_kind: str
    reason: str
    status: NotificationStatus
    attempts: int
    last_error: str | None = None
    detail: str | None = None
    firing: tuple[str, ...] = ()
    resolved: tuple[str, ...] = ()
    created_at: datetime
    sent_at: datetime | None = None
    attempt_log: tuple[DeliveryAttemptRecord, ...] = ()


class NotificationReply(msgspec.Struct, frozen=True, kw_only=True):
    status: ControlStatus
    notifications: tuple[NotificationRecord, ...] = ()
    error: str = ""
