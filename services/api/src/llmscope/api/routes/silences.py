"""Silences and maintenance windows, kept by the alerter and managed through it over NATS."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from llmscope.api.openapi_errors import not_found
from llmscope.api.routes.alerts import alerter_error
from llmscope.api.routes.fields import NO_NUL
from llmscope.api.runtime import Runtime
from llmscope.web.alerting import AlerterRefused, AlerterUnavailable, SilenceInfo, SilenceInput

Matchers = Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=100)]


class SilenceBody(BaseModel):
    """One-off (``starts_at``/``ends_at``), weekly recurring (``weekly_days``, ``weekly_start``,
    ``weekly_end``) or monthly recurring (``monthly_days`` and/or ``monthly_weekdays``,
    ``monthly_start``, ``monthly_end``), never both weekly and monthly; ``timezone`` is the
    recurring window's. Dates bound a recurring window. Empty matchers match anything (shell
    patterns allowed)."""

    reason: Annotated[str, Field(min_length=1, max_length=2000), NO_NUL]
    author: Annotated[str, Field(min_length=1, max_length=200)]
    kind: Literal["silence", "maintenance"] = "silence"
    models: Matchers = []
    providers: Matchers = []
    rules: Matchers = []
    hosts: Matchers = []
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    weekly_days: Annotated[list[str], Field(max_length=7)] = []
    weekly_start: Annotated[str | None, Field(description="HH:MM, local time")] = None
    weekly_end: Annotated[str | None, Field(description="HH:MM; <= start runs past midnight")] = None
    timezone: Annotated[str, Field(description="IANA time zone of the weekly or monthly window")] = "UTC"
    # Ranges are checked by the alerter, whose 422 names the field (``monthly_days``).
    monthly_days: Annotated[
        list[int],
        Field(
            max_length=31, description="days of the month, 1..31; a day a month lacks does not occur in it"
        ),
    ] = []
    monthly_weekdays: Annotated[
        list[str],
        Field(
            max_length=35,
            description='nth weekdays: first|second|third|fourth|last mon..sun, e.g. "first sun"',
        ),
    ] = []
    monthly_start: Annotated[str | None, Field(description="HH:MM, local time")] = None
    monthly_end: Annotated[
        str | None, Field(description="HH:MM; <= start runs past midnight, into the next month if need be")
    ] = None


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(
        prefix="/api/silences", tags=["silences"], responses={504: {"description": "no alerter answered"}}
    )

    @api.get("", response_model=list[SilenceInfo])
    async def list_silences(include_expired: bool = False) -> list[SilenceInfo]:
        """Current and upcoming silences (all of them with ``include_expired``), newest first."""
        try:
            return await rt.alerting.silences(include_expired)
        except (AlerterUnavailable, AlerterRefused) as exc:
            alerter_error(exc)

    @api.post("", response_model=SilenceInfo, status_code=201)
    async def create_silence(body: SilenceBody) -> SilenceInfo:
        """Mute matching notifications (never the recording of violations); reason and author
        are required. 422 names the field at fault."""
        try:
            return await rt.alerting.create_silence(SilenceInput(**body.model_dump()))
        except (AlerterUnavailable, AlerterRefused) as exc:
            alerter_error(exc)

    @api.delete("/{silence_id}", response_model=SilenceInfo, responses=not_found("silence"))
    async def expire_silence(silence_id: str) -> SilenceInfo:
        """Expire a silence now (it stays in the history)."""
        try:
            found = await rt.alerting.expire_silence(silence_id)
        except (AlerterUnavailable, AlerterRefused) as exc:
            alerter_error(exc)
        if found is None:
            raise HTTPException(404, f"no silence {silence_id!r}")
        return found

    return api
