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


def _anycase(word: str) -> str:
    # ECMA regexes have no inline (?i): each letter as a class. "İ" lowers to "i" + a dot, so
    # the alerter's `lower()[:3]` reads "FRİ" as "fri".
    return "".join("[iIİ]" if c == "i" else f"[{c}{c.upper()}]" for c in word)


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_NTH = ("first", "second", "third", "fourth", "last")
# What the alerter takes, stated in the document (it still checks, and its 422 says what is
# wrong in words): a weekday is anything that starts, past blanks, with mon..sun in any case; an
# nth weekday is two words, first..fourth|last and a weekday. Never narrower than the alerter,
# or schemathesis's schema-invalid requests would be accepted.
_DAY = "(" + "|".join(_anycase(d) for d in _DAYS) + ")"
_WEEKDAY_PATTERN = r"^\s*" + _DAY
_NTH_PATTERN = (
    r"^\s*(" + "|".join("".join(f"[{c}{c.upper()}]" for c in n) for n in _NTH) + r")\s+" + _DAY + r"\S*\s*$"
)
# Not blank: the alerter strips them (NUL: the front door refuses it anywhere).
_NOT_BLANK = {"pattern": r"^[^\x00]*[^\x00\s][^\x00]*$"}


class SilenceBody(BaseModel):
    """One-off (``starts_at``/``ends_at``), weekly recurring (``weekly_days``, ``weekly_start``,
    ``weekly_end``) or monthly recurring (``monthly_days`` and/or ``monthly_weekdays``,
    ``monthly_start``, ``monthly_end``), never both weekly and monthly; ``timezone`` is the
    recurring window's. Dates bound a recurring window. Empty matchers match anything (shell
    patterns allowed)."""

    reason: Annotated[str, Field(min_length=1, max_length=2000, json_schema_extra=_NOT_BLANK), NO_NUL]
    author: Annotated[str, Field(min_length=1, max_length=200, json_schema_extra=_NOT_BLANK)]
    kind: Literal["silence", "maintenance"] = "silence"
    models: Matchers = []
    providers: Matchers = []
    rules: Matchers = []
    hosts: Matchers = []
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    weekly_days: Annotated[
        list[str],
        Field(
            max_length=7,
            description="mon..sun (a longer name is read by its first three letters)",
            json_schema_extra={"items": {"type": "string", "pattern": _WEEKDAY_PATTERN}},
        ),
    ] = []
    weekly_start: Annotated[str | None, Field(description="HH:MM, local time")] = None
    weekly_end: Annotated[str | None, Field(description="HH:MM; <= start runs past midnight")] = None
    timezone: Annotated[str, Field(description="IANA time zone of the weekly or monthly window")] = "UTC"
    # Ranges are checked by the alerter, whose 422 names the field (``monthly_days``).
    monthly_days: Annotated[
        list[int],
        Field(
            max_length=31,
            description="days of the month, 1..31; a day a month lacks does not occur in it",
            json_schema_extra={"items": {"type": "integer", "minimum": 1, "maximum": 31}},
        ),
    ] = []
    monthly_weekdays: Annotated[
        list[str],
        Field(
            max_length=35,
            description='nth weekdays: first|second|third|fourth|last mon..sun, e.g. "first sun"',
            json_schema_extra={"items": {"type": "string", "pattern": _NTH_PATTERN}},
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
