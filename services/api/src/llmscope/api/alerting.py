"""The API's side of alerting: implements the dashboard's :class:`~llmscope.web.alerting.AlertingData`.

Incidents are read from the API's own ``incidents`` table (the persister fills it from
``incident.v1`` events). Everything the alerter owns (test sends with its secrets, incident
acknowledge/resolve, silences, the notification log) is asked of it by core NATS request/reply
(:mod:`llmscope.proto.control`); the API never imports the alerter nor reads its tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from llmscope.api.cursors import decode_cursor, encode_cursor
from llmscope.api.incidents_store import IncidentQueries, incident_from_event
from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.proto.control import (
    AlertTestReply,
    AlertTestRequest,
    IncidentActionReply,
    IncidentActionRequest,
    MonthlyWindow,
    NotificationQuery,
    NotificationReply,
    SilenceCreateRequest,
    SilenceExpireRequest,
    SilenceListRequest,
    SilenceRecord,
    SilenceReply,
    SilenceSpec,
    WeeklyWindow,
    reply_wait_s,
    send_max_s,
)
from llmscope.web.alerting import (
    AlerterRefused,
    AlerterUnavailable,
    DeliveryAttemptInfo,
    IncidentAction,
    IncidentActionResult,
    IncidentDetail,
    IncidentFilter,
    IncidentPage,
    NotificationFilter,
    NotificationInfo,
    NotificationPage,
    SilenceInfo,
    SilenceInput,
    TestSendResult,
)

log = get_logger("llmscope.api.alerting")

R = TypeVar("R", bound=msgspec.Struct)


class ViolationActor(Protocol):
    """Records a person's action on one of the API's violations (``ViolationStore``)."""

    async def acknowledge(self, violation_id: str, by: str, note: str | None) -> object: ...

    async def resolve(self, violation_id: str, by: str, note: str | None) -> object: ...


class AlerterSilent(AlerterUnavailable):
    """An alerter may be running, but none answered in time."""


class AlerterClient:
    """Core NATS requests to the alerter; :class:`AlerterUnavailable` when nobody answers."""

    def __init__(self, nc: Callable[[], NATS | None], timeout_s: float = 5.0) -> None:
        self._nc = nc
        self.timeout_s = timeout_s

    async def request(
        self, subject: str, body: msgspec.Struct, reply: type[R], wait_s: float | None = None
    ) -> R:
        nc = self._nc()
        if nc is None or not nc.is_connected:
            raise AlerterUnavailable("not connected to NATS")
        try:
            msg = await nc.request(subject, msgspec.json.encode(body), timeout=wait_s or self.timeout_s)
        except NoRespondersError:
            raise AlerterUnavailable("no alerter is running (no responders)") from None
        except TimeoutError:  # nats' TimeoutError is a TimeoutError
            raise AlerterSilent(f"no alerter answered within {wait_s or self.timeout_s:g} s") from None
        try:
            return msgspec.json.decode(msg.data, type=reply)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("unreadable alerter reply", subject=subject, error=str(exc))
            raise AlerterUnavailable(f"unreadable alerter reply: {exc}") from None


def silence_info(r: SilenceRecord) -> SilenceInfo:
    w, m = r.weekly, r.monthly
    return SilenceInfo(
        id=r.id,
        kind=r.kind,
        reason=r.reason,
        author=r.author,
        models=list(r.models),
        providers=list(r.providers),
        rules=list(r.rules),
        hosts=list(r.hosts),
        starts_at=r.starts_at,
        ends_at=r.ends_at,
        weekly_days=list(w.days) if w else [],
        weekly_start=w.start if w else None,
        weekly_end=w.end if w else None,
        timezone=w.timezone if w else m.timezone if m else "UTC",
        created_at=r.created_at,
        expired_at=r.expired_at,
        active=r.active,
        monthly_days=list(m.days) if m else [],
        monthly_weekdays=list(m.weekdays) if m else [],
        monthly_start=m.start if m else None,
        monthly_end=m.end if m else None,
    )


def silence_spec(s: SilenceInput) -> SilenceSpec:
    weekly = None
    if s.weekly_days or s.weekly_start or s.weekly_end:
        if not s.weekly_start:
            raise AlerterRefused("weekly_start", "a weekly window needs a start (HH:MM)")
        if not s.weekly_end:
            raise AlerterRefused("weekly_end", "a weekly window needs an end (HH:MM)")
        weekly = WeeklyWindow(
            days=tuple(s.weekly_days), start=s.weekly_start, end=s.weekly_end, timezone=s.timezone or "UTC"
        )
    monthly = None
    given = [
        name
        for name, value in (
            ("monthly_days", s.monthly_days),
            ("monthly_weekdays", s.monthly_weekdays),
            ("monthly_start", s.monthly_start),
            ("monthly_end", s.monthly_end),
        )
        if value
    ]
    if given:
        if weekly is not None:
            raise AlerterRefused(given[0], "a silence recurs weekly or monthly, not both")
        if not s.monthly_start:
            raise AlerterRefused("monthly_start", "a monthly window needs a start (HH:MM)")
        if not s.monthly_end:
            raise AlerterRefused("monthly_end", "a monthly window needs an end (HH:MM)")
        monthly = MonthlyWindow(
            days=tuple(s.monthly_days),
            weekdays=tuple(s.monthly_weekdays),
            start=s.monthly_start,
            end=s.monthly_end,
            timezone=s.timezone or "UTC",
        )
    return SilenceSpec(
        kind=s.kind,
        reason=s.reason,
        author=s.author,
        models=tuple(s.models),
        providers=tuple(s.providers),
        rules=tuple(s.rules),
        hosts=tuple(s.hosts),
        starts_at=s.starts_at,
        ends_at=s.ends_at,
        weekly=weekly,
        monthly=monthly,
    )


# The alerter names fields of its SilenceSpec; the API's body flattens the recurring windows.
_FIELD_NAMES = {
    "weekly.days": "weekly_days",
    "weekly.start": "weekly_start",
    "weekly.end": "weekly_end",
    "weekly.timezone": "timezone",
    "monthly.days": "monthly_days",
    "monthly.weekdays": "monthly_weekdays",
    "monthly.start": "monthly_start",
    "monthly.end": "monthly_end",
    "monthly.timezone": "timezone",
}


def _silence_reply(reply: SilenceReply) -> SilenceReply:
    if reply.status == "invalid":
        raise AlerterRefused(_FIELD_NAMES.get(reply.field, reply.field), reply.error)
    if reply.status == "error":
        raise AlerterUnavailable(reply.error)
    return reply


class Alerting:
    """Implements ``AlertingData`` over the API's pool and the alerter's control subjects."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        nc: Callable[[], NATS | None],
        *,
        timeout_s: float = 5.0,
        test_wait_s: Callable[[str], float] = reply_wait_s,
        violations: ViolationActor | None = None,
    ) -> None:
        self.pool = pool
        self.queries = IncidentQueries(pool)
        self.client = AlerterClient(nc, timeout_s)
        self.test_wait_s = test_wait_s
        self.violations = violations

    async def test_channel(self, channel: str) -> TestSendResult:
        """The alerter's answer; it takes at most ``TEST_SEND_MAX_S`` (``TICKET_TEST_MAX_S`` for
        the tracker): past that and a margin, :class:`AlerterUnavailable` says it did not answer
        and that whether the message went out is unknown."""
        wait_s = self.test_wait_s(channel)
        try:
            reply = await self.client.request(
                subjects.alerter_test(), AlertTestRequest(channel=channel), AlertTestReply, wait_s
            )
        except AlerterSilent:
            raise AlerterSilent(
                f"the alerter did not answer within {wait_s:g} s (a test send takes it at most"
                f" {send_max_s(channel):g} s): it is down or overloaded, and whether the test message"
                " went out is unknown"
            ) from None
        return TestSendResult(reply.ok, reply.channel, reply.kind, reply.status, reply.detail, reply.attempts)

    async def incidents(self, flt: IncidentFilter) -> IncidentPage:
        return await self.queries.page(flt)

    async def incident(self, incident_id: str) -> IncidentDetail | None:
        return await self.queries.detail(incident_id)

    async def incident_for_episode(self, episode_id: str) -> str | None:
        return await self.queries.for_episode(episode_id)

    async def act_on_incident(
        self, incident_id: str, action: IncidentAction, by: str, note: str | None
    ) -> IncidentActionResult:
        reply = await self.client.request(
            subjects.alerter_incident_action(),
            IncidentActionRequest(incident_id=incident_id, action=action, by=by, note=note),
            IncidentActionReply,
        )
        if reply.status == "invalid":
            raise AlerterRefused("", reply.error)
        if reply.status == "error":
            raise AlerterUnavailable(reply.error)
        if reply.incident is not None:
            # The alerter also publishes this revision; storing it now makes the answer readable at once.
            await self.queries.save(reply.incident)
            if reply.status == "ok":
                await self._act_on_violations(reply.incident.episode_ids, action, by, note)
        incident = incident_from_event(reply.incident) if reply.incident else None
        status = reply.status if reply.status in ("ok", "not_found") else "conflict"
        return IncidentActionResult(status=status, incident=incident, error=reply.error)

    async def _act_on_violations(
        self, episode_ids: Sequence[str], action: IncidentAction, by: str, note: str | None
    ) -> None:
        """The incident's violations in the API's log get the same acknowledgement or resolution:
        an incident resolved by hand left them open and unacknowledged (the overview still showed
        the model degraded by open critical episodes). Each is announced as a person's action as
        usual; the alerter, which applied the incident's action to its alerts already, finds
        nothing more to do. Best effort: the incident's action stands if this fails."""
        if self.violations is None or not episode_ids:
            return
        # A cleared violation needs no resolution, but may still want its acknowledgement.
        pending = (
            "resolved_at IS NULL AND cleared_at IS NULL" if action == "resolve" else "acknowledged_at IS NULL"
        )
        try:
            ids = await self.pool().fetch(
                f"SELECT id FROM violations WHERE episode_id = ANY($1::text[]) AND {pending} ORDER BY id",
                list(episode_ids),
            )
            for r in ids:
                if action == "resolve":
                    await self.violations.resolve(r["id"], by, note)
                else:
                    await self.violations.acknowledge(r["id"], by, note)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("incident action not applied to its violations", action=action, error=str(exc))

    async def silences(self, include_expired: bool = False) -> list[SilenceInfo]:
        reply = await self.client.request(
            subjects.alerter_silence_list(), SilenceListRequest(include_expired=include_expired), SilenceReply
        )
        return [silence_info(s) for s in _silence_reply(reply).silences]

    async def create_silence(self, silence: SilenceInput) -> SilenceInfo:
        reply = await self.client.request(
            subjects.alerter_silence_create(),
            SilenceCreateRequest(silence=silence_spec(silence)),
            SilenceReply,
        )
        created = _silence_reply(reply).silences
        if not created:
            raise AlerterUnavailable("the alerter stored the silence but did not return it")
        return silence_info(created[0])

    async def expire_silence(self, silence_id: str) -> SilenceInfo | None:
        reply = await self.client.request(
            subjects.alerter_silence_expire(), SilenceExpireRequest(id=silence_id), SilenceReply
        )
        if reply.status == "not_found":
            return None
        found = _silence_reply(reply).silences
        return silence_info(found[0]) if found else None

    async def notifications(self, flt: NotificationFilter) -> NotificationPage:
        before: datetime | None = None
        before_id: str | None = None
        if flt.cursor:
            before, before_id = decode_cursor(flt.cursor)
        limit = max(1, min(flt.limit, 1000))
        reply = await self.client.request(
            subjects.alerter_notifications(),
            NotificationQuery(
                status=flt.status,
                channel=flt.channel,
                since=flt.since,
                before=before,
                before_id=before_id,
                limit=limit + 1,
            ),
            NotificationReply,
        )
        if reply.status != "ok":
            raise AlerterUnavailable(reply.error or reply.status)
        items = [
            NotificationInfo(
                id=n.id,
                channel=n.channel,
                channel_kind=n.channel_kind,
                route=n.route,
                group_key=n.group_key,
                reason=n.reason,
                status=n.status,
                attempts=n.attempts,
                last_error=n.last_error,
                created_at=n.created_at,
                sent_at=n.sent_at,
                firing=list(n.firing),
                resolved=list(n.resolved),
                attempt_log=[
                    DeliveryAttemptInfo(a.attempt, a.at, a.ok, a.retryable, a.status_code, a.detail, a.state)
                    for a in n.attempt_log
                ],
            )
            for n in reply.notifications[:limit]
        ]
        more = len(reply.notifications) > limit
        return NotificationPage(items, encode_cursor(items[-1].created_at, items[-1].id) if more else None)
