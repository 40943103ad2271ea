"""The alerting pages: incidents, silences, notifications, and the setup wizard's test sends.

Added to the dashboard router by :func:`llmscope.web.routes.create_router` when the API passes an
:class:`~llmscope.web.alerting.AlertingData`. When no alerter answers, a page still renders with
the reason (status 504, or 200 to HTMX, which swaps only 2xx answers).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Form, Request
from fastapi.params import Depends
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from llmscope.proto.control import DAY_NAMES, NTH_NAMES
from llmscope.web.alerting import (
    TEST_CHANNELS,
    AlerterRefused,
    AlerterUnavailable,
    AlertingData,
    IncidentAction,
    IncidentFilter,
    NotificationFilter,
    SilenceInput,
    TestSendResult,
    with_outage_rules,
)
from llmscope.web.data import SEVERITY_AT_LEAST
from llmscope.web.pages import BY_REQUIRED, Pages, is_htmx

INCIDENT_STATES = ("open", "acknowledged", "resolved")
NOTIFICATION_STATUSES = ("sending", "sent", "failed", "expired")
# What a link may fill in on the silences page (an incident's "Silence..." link), and the
# one-off silence's "for" choices, in hours (any up to 30 days is taken).
SILENCE_PREFILL = ("models", "providers", "hosts", "rules", "for_h")
SILENCE_FOR_H = (1, 4, 8, 24)
SILENCE_MAX_FOR_H = 720


def _status(request: Request, status: int) -> int:
    return 200 if is_htmx(request) else status


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]


def _local(text: str, tz: str, field: str) -> datetime | None:
    """A ``datetime-local`` form value in the form's time zone (or one with its own offset)."""
    text = text.strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise AlerterRefused(field, f"expected a date and time, got {text!r}") from None
    if value.tzinfo is None:
        try:
            value = value.replace(tzinfo=ZoneInfo(tz or "UTC"))
        except (ZoneInfoNotFoundError, ValueError):
            raise AlerterRefused("timezone", f"unknown time zone {tz!r}") from None
    return value


def _lasting(text: str) -> timedelta:
    """A one-off silence's length in hours, from the form's "for" choice (ends_at wins)."""
    try:
        hours = float(text)
    except ValueError:
        hours = math.nan
    if not 0 < hours <= SILENCE_MAX_FOR_H:
        raise AlerterRefused("for_h", f"expected hours from 0 to {SILENCE_MAX_FOR_H}, got {text!r}")
    return timedelta(hours=hours)


def _month_days(text: str) -> list[int]:
    """Days of the month typed as ``1, 15``; the alerter checks the range."""
    days = []
    for item in _items(text):
        try:
            days.append(int(item))
        except ValueError:
            raise AlerterRefused(
                "monthly_days", f"expected days of the month (1..31), got {item!r}"
            ) from None
    return days


def add_alerting_routes(
    router: APIRouter,
    data: AlertingData,
    session: Depends,
    pages: Pages,
    setup_context: Callable[[], Awaitable[dict[str, Any]]],
) -> None:
    """Register the alerting pages on the dashboard router, behind its session dependency."""

    # ---- setup wizard: test sends ----------------------------------------------------------
    @router.post("/setup/test", response_class=HTMLResponse, dependencies=[session])
    async def setup_test(request: Request, channel: Annotated[str, Form()] = "") -> HTMLResponse:
        """Send a test message through one channel; the answer fills the wizard's result box."""
        status = 200
        result: TestSendResult | None = None
        error = None
        if channel not in TEST_CHANNELS:
            error, status = f"channel: choose one of {', '.join(TEST_CHANNELS)}", 422
        else:
            try:
                result = await data.test_channel(channel)
            except AlerterUnavailable as exc:
                # "The alerter did not answer within ..." says itself what happened.
                said = str(exc)
                error = (
                    said[:1].upper() + said[1:]
                    if said.startswith("the alerter")
                    else f"No alerter answered: {said}"
                )
                status = 504
        context = {**await setup_context(), "test": result, "test_error": error, "test_channel": channel}
        toast: tuple[str, str] = (error, "error") if error else (f"Test message: {channel}", "ok")
        if result is not None:
            toast = (f"Test message via {channel}: {result.status}", "ok" if result.ok else "error")
        return pages.render(
            request,
            "setup.html",
            context,
            fragments=("test_result",),
            status_code=_status(request, status),
            toast=toast,
        )

    # ---- incidents -------------------------------------------------------------------------
    @router.get("/incidents", response_class=HTMLResponse, dependencies=[session])
    async def incidents_page(
        request: Request,
        state: str | None = None,
        model: str | None = None,
        severity: str | None = None,
        cursor: str | None = None,
    ) -> HTMLResponse:
        severity = severity if severity in SEVERITY_AT_LEAST else None
        flt = IncidentFilter(
            state=state if state in INCIDENT_STATES else None,  # type: ignore[arg-type]
            model=model or None,
            severities=SEVERITY_AT_LEAST[severity] if severity else (),
            limit=50,
            cursor=cursor or None,
        )
        page = await data.incidents(flt)
        params = {"state": state or "", "model": model or "", "severity": severity or ""}
        context = {
            "page": page,
            "states": INCIDENT_STATES,
            "severities": tuple(SEVERITY_AT_LEAST),
            "f": params,
            "next_qs": urlencode({**params, "cursor": page.next_cursor}) if page.next_cursor else None,
        }
        return pages.render(request, "incidents.html", context, fragments=("incident_table",))

    @router.get("/incidents/for-episode/{episode_id}", dependencies=[session], response_model=None)
    async def incident_for_episode(request: Request, episode_id: str) -> Response:
        """From a violation to the incident it belongs to."""
        found = await data.incident_for_episode(episode_id)
        if found is None:
            return pages.render(
                request, "not_found.html", {"what": "incident for this violation"}, status_code=404
            )
        return RedirectResponse(f"/incidents/{found}", status_code=303)

    async def _incident(
        request: Request,
        incident_id: str,
        error: str | None = None,
        status: int = 200,
        toast: str | None = None,
    ) -> HTMLResponse:
        detail = await data.incident(incident_id)
        if detail is None:
            return pages.render(request, "not_found.html", {"what": "incident"}, status_code=404)
        analysis = with_outage_rules(detail.analysis, detail.violations)
        context = {"d": detail, "i": detail.incident, "a": analysis, "error": error}
        return pages.render(
            request,
            "incident.html",
            context,
            fragments=("actions",),
            status_code=status,
            toast=(error, "error") if error else toast,
        )

    @router.get("/incidents/{incident_id}", response_class=HTMLResponse, dependencies=[session])
    async def incident_page(request: Request, incident_id: str) -> HTMLResponse:
        return await _incident(request, incident_id)

    async def _act(
        request: Request, incident_id: str, action: IncidentAction, by: str, note: str
    ) -> HTMLResponse:
        who = by.strip()
        if not who:  # refused, never signed for nobody (see violation_routes)
            done = "acknowledged" if action == "acknowledge" else "resolved"
            return await _incident(request, incident_id, BY_REQUIRED.format(done=done), _status(request, 422))
        try:
            result = await data.act_on_incident(incident_id, action, who, note.strip() or None)
        except AlerterUnavailable as exc:
            return await _incident(request, incident_id, f"No alerter answered: {exc}", _status(request, 504))
        except AlerterRefused as exc:
            return await _incident(request, incident_id, str(exc), _status(request, 422))
        if result.status == "not_found":
            return pages.render(request, "not_found.html", {"what": "incident"}, status_code=404)
        if result.status == "conflict":
            return await _incident(request, incident_id, result.error, _status(request, 409))
        done = "acknowledged" if action == "acknowledge" else "resolved"
        return await _incident(request, incident_id, toast=f"Incident {done} by {who}.")

    @router.post("/incidents/{incident_id}/acknowledge", response_class=HTMLResponse, dependencies=[session])
    async def acknowledge(
        request: Request,
        incident_id: str,
        by: Annotated[str, Form()] = "",
        note: Annotated[str, Form()] = "",
    ) -> HTMLResponse:
        return await _act(request, incident_id, "acknowledge", by, note)

    @router.post("/incidents/{incident_id}/resolve", response_class=HTMLResponse, dependencies=[session])
    async def resolve(
        request: Request,
        incident_id: str,
        by: Annotated[str, Form()] = "",
        note: Annotated[str, Form()] = "",
    ) -> HTMLResponse:
        return await _act(request, incident_id, "resolve", by, note)

    # ---- silences --------------------------------------------------------------------------
    async def _silences(
        request: Request,
        *,
        message: str | None = None,
        error: str | None = None,
        form: dict[str, Any] | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        show_expired = request.query_params.get("expired") == "1"
        silences = []
        try:
            silences = await data.silences(include_expired=show_expired)
        except AlerterUnavailable as exc:
            error, status = f"No alerter answered: {exc}", 504
        context = {
            "silences": silences,
            "message": message,
            "error": error,
            "form": form or {},
            "weekdays": DAY_NAMES,
            "for_hours": SILENCE_FOR_H,
            "nths": NTH_NAMES,
            "show_expired": show_expired,
        }
        return pages.render(
            request,
            "silences.html",
            context,
            fragments=("silence_list",),
            status_code=_status(request, status),
            toast=(error, "error") if error else message,
        )

    @router.get("/silences", response_class=HTMLResponse, dependencies=[session])
    async def silences_page(request: Request) -> HTMLResponse:
        # An incident's "Silence..." link fills in what it matches; the reason is the person's.
        q = request.query_params
        return await _silences(request, form={k: q[k] for k in SILENCE_PREFILL if q.get(k)})

    @router.post("/silences", response_class=HTMLResponse, dependencies=[session])
    async def create_silence(request: Request) -> HTMLResponse:
        raw = await request.form()
        form: dict[str, Any] = {k: str(raw.get(k) or "") for k in raw if k != "weekly_days"}
        days = [str(d) for d in raw.getlist("weekly_days")]
        form["weekly_days"] = days
        tz = form.get("timezone", "").strip() or "UTC"
        # One nth weekday from the form's two selects ("first" + "sun"); the API takes several.
        nth, weekday = form.get("monthly_nth", ""), form.get("monthly_weekday", "")
        try:
            kind = form.get("kind") or "silence"
            starts_at = _local(form.get("starts_at", ""), tz, "starts_at")
            ends_at = _local(form.get("ends_at", ""), tz, "ends_at")
            if ends_at is None and form.get("for_h", "").strip():
                ends_at = (starts_at or datetime.now(UTC)) + _lasting(form["for_h"])
            silence = SilenceInput(
                reason=form.get("reason", ""),
                author=form.get("author", ""),
                kind="maintenance" if kind == "maintenance" else "silence",
                models=_items(form.get("models", "")),
                providers=_items(form.get("providers", "")),
                rules=_items(form.get("rules", "")),
                hosts=_items(form.get("hosts", "")),
                starts_at=starts_at,
                ends_at=ends_at,
                weekly_days=days,
                weekly_start=form.get("weekly_start", "").strip() or None,
                weekly_end=form.get("weekly_end", "").strip() or None,
                timezone=tz,
                monthly_days=_month_days(form.get("monthly_days", "")),
                monthly_weekdays=[f"{nth} {weekday}"] if nth else [],
                monthly_start=form.get("monthly_start", "").strip() or None,
                monthly_end=form.get("monthly_end", "").strip() or None,
            )
            created = await data.create_silence(silence)
        except AlerterRefused as exc:
            return await _silences(request, error=str(exc), form=form, status=422)
        except AlerterUnavailable as exc:
            return await _silences(request, error=f"No alerter answered: {exc}", form=form, status=504)
        return await _silences(request, message=f"Silence {created.id} created by {created.author}.")

    @router.post("/silences/{silence_id}/expire", response_class=HTMLResponse, dependencies=[session])
    async def expire_silence(request: Request, silence_id: str) -> HTMLResponse:
        try:
            found = await data.expire_silence(silence_id)
        except AlerterUnavailable as exc:
            return await _silences(request, error=f"No alerter answered: {exc}", status=504)
        if found is None:
            return await _silences(request, error=f"No silence {silence_id}.", status=404)
        return await _silences(request, message=f"Silence {silence_id} expired.")

    # ---- notifications ---------------------------------------------------------------------
    @router.get("/notifications", response_class=HTMLResponse, dependencies=[session])
    async def notifications_page(
        request: Request, status: str | None = None, channel: str | None = None, cursor: str | None = None
    ) -> HTMLResponse:
        flt = NotificationFilter(
            status=status if status in NOTIFICATION_STATUSES else None,  # type: ignore[arg-type]
            channel=channel or None,
            limit=50,
            cursor=cursor or None,
        )
        params = {"status": status or "", "channel": channel or ""}
        code, error, items, next_qs = 200, None, [], None
        try:
            page = await data.notifications(flt)
            items = page.items
            if page.next_cursor:
                next_qs = urlencode({**params, "cursor": page.next_cursor})
        except AlerterUnavailable as exc:
            code, error = 504, f"No alerter answered: {exc}"
        context = {
            "items": items,
            "statuses": NOTIFICATION_STATUSES,
            "f": params,
            "next_qs": next_qs,
            "error": error,
        }
        return pages.render(
            request,
            "notifications.html",
            context,
            fragments=("notification_table",),
            status_code=_status(request, code),
        )
