"""Answers the API's control requests: test sends, incident actions, silences, the notification log.

The alerter owns channel secrets, incident lifecycle, silences and the notification log; the API
asks for them over core NATS request/reply (``llmscope.proto.control``) and never reads the
alerter's tables. Replicas answer in one queue group. Handlers are plain coroutines from a request
Struct to a reply Struct; :meth:`ControlResponder.start` binds them to their subjects.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, time
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llmscope.alerter.service import Alerter
from llmscope.alerter.silences import (
    DAY_NAMES,
    NTH_NAMES,
    Monthly,
    Silence,
    Weekly,
    nth_weekday_names,
    parse_days,
    parse_nth_weekdays,
)
from llmscope.alerter.store import Store
from llmscope.alerter.testsend import TEST_ATTEMPT_TIMEOUT_S, send_test
from llmscope.alerter.tickets.testsend import TICKETS, send_ticket_test
from llmscope.bus.connection import subscriptions_in_place
from llmscope.bus.responders import Responders
from llmscope.config.env import Env
from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.proto.control import (
    AlertTestReply,
    AlertTestRequest,
    DeliveryAttemptRecord,
    IncidentActionReply,
    IncidentActionRequest,
    MonthlyWindow,
    NotificationQuery,
    NotificationRecord,
    NotificationReply,
    SilenceCreateRequest,
    SilenceExpireRequest,
    SilenceListRequest,
    SilenceRecord,
    SilenceReply,
    SilenceSpec,
    WeeklyWindow,
)
from llmscope.proto.incident import IncidentChange

log = get_logger("llmscope.alerter.control")

Req = TypeVar("Req", bound=msgspec.Struct)
R = TypeVar("R")

CONFLICT_TRIES = 5
"""Tries of a person's change that Postgres aborted for a deadlock or a serialization failure."""
CONFLICT_BACKOFF_S = 0.05
"""First wait before such a try again, doubled each time and jittered (0.5x to 1.5x)."""
_CONFLICTS = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)


async def retry_conflicts(change: Callable[[], Awaitable[R]], *, what: str) -> R:
    """``change`` (one transaction), tried again when Postgres aborted it to let a concurrent one
    go on (SQLSTATE 40P01, 40001): nothing of it was committed, and the next try usually goes
    through at once. A person acknowledging or resolving, or adding or expiring a silence, sees
    success, not "alerter error"; after ``CONFLICT_TRIES`` the error stands."""
    for attempt in range(1, CONFLICT_TRIES + 1):
        try:
            return await change()
        except _CONFLICTS as exc:
            if attempt == CONFLICT_TRIES:
                raise
            delay = CONFLICT_BACKOFF_S * 2 ** (attempt - 1) * (0.5 + random.random())
            log.info(
                "store conflict; trying again",
                what=what,
                attempt=attempt,
                error_class=type(exc).__name__,
                delay_s=round(delay, 3),
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


_PATH = re.compile(r"at `\$\.([A-Za-z0-9_.\[\]]+)`")


class InvalidSilence(ValueError):
    """A silence the alerter refuses; ``field`` is the request field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _aware(value: datetime | None, field: str) -> None:
    if value is not None and value.tzinfo is None:
        raise InvalidSilence(field, "needs a time zone (e.g. 2026-03-02T12:00:00Z)")


def _clock(text: str, field: str) -> time:
    try:
        return time.fromisoformat(text.strip())
    except ValueError:
        raise InvalidSilence(field, f"expected HH:MM, got {text!r}") from None


def _window_times(start: str, end: str, timezone: str, prefix: str) -> tuple[time, time]:
    """A recurring window's local start and end, checked with its time zone."""
    begin, finish = _clock(start, f"{prefix}.start"), _clock(end, f"{prefix}.end")
    if begin == finish:
        raise InvalidSilence(f"{prefix}.end", "the window would be empty (end equals start)")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSilence(f"{prefix}.timezone", f"unknown time zone {timezone!r}") from None
    return begin, finish


def _monthly(m: MonthlyWindow) -> Monthly:
    bad = [d for d in m.days if not 1 <= d <= 31]
    if bad:
        raise InvalidSilence("monthly.days", f"{bad[0]} is not a day of the month (1..31)")
    try:
        weekdays = parse_nth_weekdays(m.weekdays)
    except ValueError as exc:
        raise InvalidSilence("monthly.weekdays", str(exc)) from None
    if not m.days and not weekdays:
        raise InvalidSilence(
            "monthly.days",
            f"name days of the month (1..31) or nth weekdays ({'|'.join(NTH_NAMES)} mon..sun)",
        )
    start, end = _window_times(m.start, m.end, m.timezone, "monthly")
    return Monthly(days=frozenset(m.days), weekdays=weekdays, start=start, end=end, timezone=m.timezone)


def silence_from_spec(spec: SilenceSpec, silence_id: str, now: datetime) -> Silence:
    """Validate a requested silence (pure); raises :class:`InvalidSilence` naming the field."""
    if not spec.reason.strip():
        raise InvalidSilence("reason", "a silence needs a reason")
    if not spec.author.strip():
        raise InvalidSilence("author", "a silence needs an author")
    _aware(spec.starts_at, "starts_at")
    _aware(spec.ends_at, "ends_at")
    weekly = None
    if spec.weekly is not None:
        w = spec.weekly
        try:
            days = parse_days(w.days)
        except ValueError as exc:
            raise InvalidSilence("weekly.days", str(exc)) from None
        if not days:
            raise InvalidSilence("weekly.days", f"name at least one weekday ({', '.join(DAY_NAMES)})")
        start, end = _window_times(w.start, w.end, w.timezone, "weekly")
        weekly = Weekly(days, start, end, w.timezone)
    if spec.monthly is not None and weekly is not None:
        raise InvalidSilence("monthly", "a silence recurs weekly or monthly, not both")
    monthly = _monthly(spec.monthly) if spec.monthly is not None else None
    if weekly is None and monthly is None and spec.ends_at is None:
        raise InvalidSilence("ends_at", "a one-off silence needs an end (or give a weekly or monthly window)")
    if spec.starts_at and spec.ends_at and spec.ends_at <= spec.starts_at:
        raise InvalidSilence("ends_at", "ends before it starts")
    if spec.ends_at is not None and spec.ends_at <= now:
        raise InvalidSilence("ends_at", "is already past")

    def clean(values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.strip() for v in values if v.strip())

    try:
        return Silence(
            id=silence_id,
            reason=spec.reason.strip(),
            author=spec.author.strip(),
            kind=spec.kind,
            providers=clean(spec.providers),
            models=clean(spec.models),
            rules=clean(spec.rules),
            hosts=clean(spec.hosts),
            starts_at=spec.starts_at,
            ends_at=spec.ends_at,
            weekly=weekly,
            monthly=monthly,
        )
    except ValueError as exc:  # the dataclass's own checks; the ones above come first
        raise InvalidSilence("silence", str(exc)) from None


def silence_record(s: Silence, expired_at: datetime | None, now: datetime) -> SilenceRecord:
    w, m = s.weekly, s.monthly
    return SilenceRecord(
        id=s.id,
        kind=s.kind,
        reason=s.reason,
        author=s.author,
        models=s.models,
        providers=s.providers,
        rules=s.rules,
        hosts=s.hosts,
        starts_at=s.starts_at,
        ends_at=s.ends_at,
        weekly=WeeklyWindow(
            days=tuple(DAY_NAMES[d] for d in sorted(w.days)),
            start=w.start.strftime("%H:%M"),
            end=w.end.strftime("%H:%M"),
            timezone=w.timezone,
        )
        if w
        else None,
        monthly=MonthlyWindow(
            days=tuple(sorted(m.days)),
            weekdays=tuple(nth_weekday_names(m.weekdays)),
            start=m.start.strftime("%H:%M"),
            end=m.end.strftime("%H:%M"),
            timezone=m.timezone,
        )
        if m
        else None,
        created_at=s.created_at,
        expired_at=expired_at,
        active=expired_at is None and s.active_at(now),
    )


def _field_of(exc: msgspec.ValidationError) -> str:
    match = _PATH.search(str(exc))
    return match.group(1) if match else ""


@dataclass
class ControlResponder:
    """The alerter's side of ``subjects.alerter_*``; secrets never leave this process."""

    alerter: Alerter
    env: Env
    config_path: Path | None = None
    public_url: str = "http://127.0.0.1:8000"
    session: aiohttp.ClientSession | None = None
    test_attempt_timeout: float = TEST_ATTEMPT_TIMEOUT_S

    def __post_init__(self) -> None:
        self._responders = Responders()

    @property
    def store(self) -> Store:
        return self.alerter.store

    # -- handlers (no NATS) -----------------------------------------------------------------

    async def on_test(self, req: AlertTestRequest) -> AlertTestReply:
        runtime = await self.alerter.runtime()
        settings = await self.alerter.api.settings()
        if req.channel == TICKETS:
            result = await send_ticket_test(
                settings, env=self.env, public_url=runtime.public_url or self.public_url, session=self.session
            )
        else:
            result = await send_test(
                req.channel,
                settings,
                env=self.env,
                config_path=self.config_path,
                public_url=runtime.public_url or self.public_url,
                session=self.session,
                attempt_timeout=self.test_attempt_timeout,
            )
        log.info("test message", channel=result.channel, kind=result.kind, status=result.status)
        return AlertTestReply(
            ok=result.ok,
            channel=result.channel,
            kind=result.kind,
            status=result.status,
            detail=result.detail,
            attempts=result.attempts,
        )

    async def on_incident(self, req: IncidentActionRequest) -> IncidentActionReply:
        note = (req.note or "").strip() or None
        if req.action == "acknowledge":
            done = await retry_conflicts(
                lambda: self.store.acknowledge_incident(req.incident_id, req.by, note), what=req.action
            )
        else:
            done = await retry_conflicts(
                lambda: self.store.resolve_incident(req.incident_id, req.by, note), what=req.action
            )
        change: IncidentChange = "acknowledged" if req.action == "acknowledge" else "resolved"
        incident = await self.store.incident(req.incident_id, change)
        if incident is None:
            return IncidentActionReply(status="not_found", error=f"no incident {req.incident_id!r}")
        if not done:
            return IncidentActionReply(
                status="conflict", incident=incident, error=f"cannot {req.action} a {incident.state} incident"
            )
        self.alerter.wake_outbox()
        log.info("incident changed", incident=req.incident_id, action=req.action, by=req.by)
        return IncidentActionReply(status="ok", incident=incident)

    async def on_silence_create(self, req: SilenceCreateRequest) -> SilenceReply:
        now = self.store.clock()
        try:
            silence = silence_from_spec(req.silence, f"sil-{secrets.token_hex(8)}", now)
        except InvalidSilence as exc:
            return SilenceReply(status="invalid", field=exc.field, error=exc.message)
        await retry_conflicts(lambda: self.store.add_silence(silence), what="add silence")
        log.info("silence added", silence=silence.id, author=silence.author, kind=silence.kind)
        stored = [s for s in await self.store.silences(include_expired=True) if s[0].id == silence.id]
        return SilenceReply(status="ok", silences=tuple(silence_record(s, e, now) for s, e in stored))

    async def on_silence_list(self, req: SilenceListRequest) -> SilenceReply:
        now = self.store.clock()
        rows = await self.store.silences(include_expired=req.include_expired)
        return SilenceReply(status="ok", silences=tuple(silence_record(s, e, now) for s, e in rows))

    async def on_silence_expire(self, req: SilenceExpireRequest) -> SilenceReply:
        now = self.store.clock()
        expired = await retry_conflicts(lambda: self.store.expire_silence(req.id), what="expire silence")
        stored = [s for s in await self.store.silences(include_expired=True) if s[0].id == req.id]
        if not stored:
            return SilenceReply(status="not_found", error=f"no silence {req.id!r}")
        if expired:
            log.info("silence expired", silence=req.id)
        return SilenceReply(status="ok", silences=tuple(silence_record(s, e, now) for s, e in stored))

    async def on_notifications(self, req: NotificationQuery) -> NotificationReply:
        before = (req.before, req.before_id or "") if req.before is not None else None
        rows = await self.store.notifications(
            status=req.status, channel=req.channel, since=req.since, before=before, limit=req.limit
        )
        return NotificationReply(
            status="ok",
            notifications=tuple(
                NotificationRecord(
                    id=r["id"],
                    route=r["route"],
                    group_key=r["group_key"],
                    channel=r["channel"],
                    channel_kind=r["channel_kind"],
                    reason=r["reason"],
                    status=r["status"],
                    attempts=r["attempts"],
                    last_error=r["last_error"],
                    detail=r["detail"],
                    firing=tuple(r["firing"]),
                    resolved=tuple(r["resolved"]),
                    created_at=r["created_at"],
                    sent_at=r["sent_at"],
                    attempt_log=tuple(
                        DeliveryAttemptRecord(
                            attempt=a["attempt"],
                            at=a["at"],
                            ok=a["ok"],
                            retryable=a["retryable"],
                            status_code=a["status_code"],
                            detail=a["detail"],
                            instance=a["instance"],
                            state=a["state"],
                        )
                        for a in attempts
                    ),
                )
                for r, attempts in rows
            ),
        )

    # -- the NATS edge ----------------------------------------------------------------------

    async def start(self, nc: NATS) -> None:
        """Subscribe every control subject in the replicas' queue group."""
        await self._bind(nc, subjects.alerter_test(), AlertTestRequest, self.on_test, _test_error)
        await self._bind(
            nc,
            subjects.alerter_incident_action(),
            IncidentActionRequest,
            self.on_incident,
            lambda field, error: IncidentActionReply(status="invalid" if field else "error", error=error),
        )
        await self._bind(
            nc,
            subjects.alerter_silence_create(),
            SilenceCreateRequest,
            self.on_silence_create,
            _silence_error,
        )
        await self._bind(
            nc, subjects.alerter_silence_list(), SilenceListRequest, self.on_silence_list, _silence_error
        )
        await self._bind(
            nc,
            subjects.alerter_silence_expire(),
            SilenceExpireRequest,
            self.on_silence_expire,
            _silence_error,
        )
        await self._bind(
            nc,
            subjects.alerter_notifications(),
            NotificationQuery,
            self.on_notifications,
            lambda field, error: NotificationReply(status="invalid" if field else "error", error=error),
        )
        # Until the server has the subscriptions, a request gets "no responders": a caller told
        # the alerter is up (the readiness probe, a test) must be able to reach it at once.
        await subscriptions_in_place(nc)

    async def _bind(
        self,
        nc: NATS,
        subject: str,
        req_type: type[Req],
        handler: Callable[[Req], Awaitable[msgspec.Struct]],
        on_error: Callable[[str, str], msgspec.Struct],
    ) -> None:
        decoder = msgspec.json.Decoder(req_type)

        async def answer(msg: Msg) -> None:
            try:
                req = decoder.decode(msg.data)
            except msgspec.ValidationError as exc:
                reply = on_error(_field_of(exc) or "body", f"bad request: {exc}")
            except msgspec.DecodeError as exc:
                reply = on_error("body", f"bad request: {exc}")
            else:
                try:
                    reply = await handler(req)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("control request failed", subject=subject)
                    reply = on_error("", f"alerter error: {type(exc).__name__}: {exc}")
            if msg.reply:
                await msg.respond(msgspec.json.encode(reply))

        await self._responders.serve(nc, subject, subjects.ALERTER_CONTROL_QUEUE, answer)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests; give those in hand ``grace`` seconds to be answered."""
        await self._responders.stop(grace)


def _test_error(field: str, error: str) -> AlertTestReply:
    return AlertTestReply(ok=False, channel="", status="failed", detail=error)


def _silence_error(field: str, error: str) -> SilenceReply:
    return SilenceReply(status="invalid" if field else "error", field=field, error=error)
