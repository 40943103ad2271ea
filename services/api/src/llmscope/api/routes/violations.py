"""Violation episodes: list with keyset pagination, detail with context, acknowledge, resolve."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from llmscope.api.openapi_errors import not_found
from llmscope.api.routes.fields import NO_NUL, Cursor, Instant
from llmscope.api.runtime import Runtime
from llmscope.web.data import Violation, ViolationDetail, ViolationFilter, ViolationPage


class AckBody(BaseModel):
    acknowledged_by: Annotated[str, Field(min_length=1, max_length=200), NO_NUL]
    note: Annotated[str | None, Field(max_length=4000), NO_NUL] = None


class ResolveBody(BaseModel):
    resolved_by: Annotated[str, Field(min_length=1, max_length=200), NO_NUL]
    note: Annotated[str | None, Field(max_length=4000), NO_NUL] = None


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(prefix="/api/violations", tags=["violations"])

    @api.get("", response_model=ViolationPage)
    async def list_violations(
        provider: str | None = None,
        model: str | None = None,
        rule: str | None = None,
        severity: Literal["critical", "warning", "info"] | None = None,
        acknowledged: bool | None = None,
        state: Literal["open", "cleared"] | None = None,
        since: Instant | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        cursor: Cursor = None,
    ) -> ViolationPage:
        """Newest first. Pass ``next_cursor`` back as ``cursor`` for the next page."""
        flt = ViolationFilter(
            provider=provider,
            model=model,
            rule=rule,
            severity=severity,
            acknowledged=acknowledged,
            state=state,
            since=since,
            limit=limit,
            cursor=cursor,
        )
        return await rt.store.violations(flt)

    @api.get("/{violation_id}", response_model=ViolationDetail, responses=not_found("violation"))
    async def get_violation(violation_id: str) -> ViolationDetail:
        """One episode with its frozen statistics and the ±10 probes around its trigger point."""
        detail = await rt.store.violation(violation_id)
        if detail is None:
            raise HTTPException(404, f"no violation {violation_id!r}")
        return detail

    @api.post("/{violation_id}/acknowledge", response_model=Violation, responses=not_found("violation"))
    async def acknowledge(violation_id: str, body: AckBody) -> Violation:
        """Acknowledge (stops reminders); the first acknowledgement is kept."""
        v = await rt.store.acknowledge(violation_id, body.acknowledged_by, body.note)
        if v is None:
            raise HTTPException(404, f"no violation {violation_id!r}")
        return v

    @api.post("/{violation_id}/resolve", response_model=Violation, responses=not_found("violation"))
    async def resolve(violation_id: str, body: ResolveBody) -> Violation:
        """Mark resolved by a person (distinct from the engine's statistical ``cleared``)."""
        v = await rt.store.resolve(violation_id, body.resolved_by, body.note)
        if v is None:
            raise HTTPException(404, f"no violation {violation_id!r}")
        return v

    return api
