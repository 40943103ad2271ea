"""Incidents: list and detail from the API's table; acknowledge and resolve through the alerter."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from llmscope.api.openapi_errors import not_found
from llmscope.api.routes.alerts import alerter_error
from llmscope.api.routes.fields import NO_NUL, Cursor, Instant
from llmscope.api.runtime import Runtime
from llmscope.proto.violation import SEVERITIES, Severity
from llmscope.web.alerting import (
    AlerterRefused,
    AlerterUnavailable,
    Incident,
    IncidentAction,
    IncidentDetail,
    IncidentFilter,
    IncidentPage,
)


class ActionBody(BaseModel):
    by: Annotated[str, Field(min_length=1, max_length=200), NO_NUL]
    note: Annotated[str | None, Field(max_length=4000), NO_NUL] = None


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(prefix="/api/incidents", tags=["incidents"])

    @api.get("", response_model=IncidentPage)
    async def list_incidents(
        state: Literal["open", "acknowledged", "resolved"] | None = None,
        model: str | None = None,
        severity: Annotated[
            Severity | None, Query(description="this severity and the ones above it (info: every one)")
        ] = None,
        since: Instant | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        cursor: Cursor = None,
    ) -> IncidentPage:
        """Newest first (by opening time); ``since`` keeps incidents active since then.
        Pass ``next_cursor`` back as ``cursor`` for the next page."""
        shown = SEVERITIES[: SEVERITIES.index(severity) + 1] if severity else ()
        flt = IncidentFilter(
            state=state, model=model, severities=shown, since=since, limit=limit, cursor=cursor
        )
        return await rt.alerting.incidents(flt)

    @api.get("/{incident_id}", response_model=IncidentDetail, responses=not_found("incident"))
    async def get_incident(incident_id: str) -> IncidentDetail:
        """One incident with its analysis (the deterministic summary, and the LLM's hypothesis,
        draft email and customer notice when it answered; ``deterministic_only`` otherwise),
        similar past incidents with their score, and its member violations."""
        detail = await rt.alerting.incident(incident_id)
        if detail is None:
            raise HTTPException(404, f"no incident {incident_id!r}")
        return detail

    async def act(incident_id: str, action: IncidentAction, body: ActionBody) -> Incident:
        try:
            result = await rt.alerting.act_on_incident(
                incident_id, action, body.by.strip(), (body.note or "").strip() or None
            )
        except (AlerterUnavailable, AlerterRefused) as exc:
            alerter_error(exc)
        if result.status == "not_found":
            raise HTTPException(404, f"no incident {incident_id!r}")
        if result.status == "conflict":
            raise HTTPException(409, result.error)
        assert result.incident is not None
        return result.incident

    responses: dict[int | str, dict[str, Any]] = {
        **not_found("incident"),
        409: {"description": "the incident's state does not allow it"},
        504: {"description": "no alerter answered"},
    }

    @api.post("/{incident_id}/acknowledge", response_model=Incident, responses=responses)
    async def acknowledge(incident_id: str, body: ActionBody) -> Incident:
        """Acknowledge an open incident (its reminders stop); the alerter owns the change."""
        return await act(incident_id, "acknowledge", body)

    @api.post("/{incident_id}/resolve", response_model=Incident, responses=responses)
    async def resolve(incident_id: str, body: ActionBody) -> Incident:
        """Resolve an incident by hand; the alerter owns the change."""
        return await act(incident_id, "resolve", body)

    return api
