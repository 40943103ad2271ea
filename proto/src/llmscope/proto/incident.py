"""``incident.v1``: violations close in time, grouped into one incident with an analysis.

An incident collects the violation episodes of one model, or of several models on one host or
provider at once (a cascade). Every change publishes a new ``incident.v1`` event with a higher
``revision``; the event id is ``<incident_id>:<revision>``, so a replay is de-duplicated.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from llmscope.proto.base import Count, Event, NonEmptyStr
from llmscope.proto.violation import Severity

IncidentState = Literal["open", "acknowledged", "resolved"]
IncidentChange = Literal["opened", "updated", "acknowledged", "resolved", "analyzed"]
INCIDENT_CHANGES: tuple[IncidentChange, ...] = ("opened", "updated", "acknowledged", "resolved", "analyzed")
LlmStatus = Literal["ok", "disabled", "pending", "unreachable", "timeout", "invalid"]


class MetricMove(msgspec.Struct, frozen=True, kw_only=True):
    """How far one metric of one model moved from its frozen baseline center."""

    model: str
    metric: str
    baseline: Annotated[float, Meta(description="chart center of the baseline, metric units")]
    observed: Annotated[float, Meta(description="worst value seen in the incident, metric units")]
    change_percent: float | None = None
    deviation_sigma: float
    prompt_id: Annotated[
        str, Meta(description="the prompt whose chart moved: prompts differ in length, so in baseline")
    ] = ""
    # Added later in v1: a reader had to guess an outage's rule from the incident's violations.
    rule: Annotated[
        str,
        Meta(
            description="the rule of the violation whose figure `observed` is (AVAILABILITY counts a run of "
            "failed probes, ERROR_RATE failures in its window); empty in messages from before it"
        ),
    ] = ""
    rule_name: Annotated[
        str, Meta(description="that violation's rule in words, e.g. '>= 10 failures in the last 50 probes'")
    ] = ""
    # Added later in v1: an ERROR_RATE count raised to a run was worded as failures in its window.
    run: Annotated[
        bool,
        Meta(
            description="`observed` is the failed probes since the last success (a run: 'N failed probes"
            " in a row'), raised by the alerter above its violation's count, whatever `rule` is;"
            " false in messages from before it"
        ),
    ] = False


class SimilarIncident(msgspec.Struct, frozen=True, kw_only=True):
    """A past incident whose title and summary resemble this one's."""

    incident_id: str
    title: str
    score: Annotated[float, Meta(ge=0, le=1, description="text similarity, 0-1")]
    opened_at: datetime | None = None


class ResembledIncident(msgspec.Struct, frozen=True, kw_only=True):
    """A resolved incident this one closely resembles (same models, metrics, directions, sizes)."""

    incident_id: str
    title: str
    score: Annotated[float, Meta(ge=0, le=1, description="resemblance, 0-1")]
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolved_note: Annotated[str, Meta(description="how it was resolved, as its resolver wrote")] | None = (
        None
    )


class TicketRef(msgspec.Struct, frozen=True, kw_only=True):
    """The ticket opened for the incident in the team's tracker."""

    tracker: Annotated[str, Meta(description="github, jira or gitlab")]
    key: Annotated[str, Meta(description="issue number (GitHub, GitLab) or key (Jira)")]
    url: str = ""
    state: Literal["open", "closed"] = "open"


class RepagedEpisode(msgspec.Struct, frozen=True, kw_only=True):
    """One of the incident's violations resolved by hand that the engine never cleared, firing
    and paged again: the resolution it undid no longer stands (its copy at the API reopens)."""

    episode_id: str
    repaged_at: Annotated[datetime, Meta(description="when the alerter paged it again")]
    resolved_by: Annotated[str | None, Meta(description="who had resolved it by hand")] = None
    resolved_at: Annotated[datetime | None, Meta(description="when that resolution was made")] = None


class IncidentAnalysis(msgspec.Struct, frozen=True, kw_only=True):
    """The deterministic summary, always present, and the LLM's writing when it answered."""

    summary: Annotated[str, Meta(description="computed from the data; stands alone when the LLM fails")]
    moves: tuple[MetricMove, ...] = ()
    rules: tuple[str, ...] = ()
    llm_status: LlmStatus = "disabled"
    llm_error: str | None = None
    llm_model: str | None = None
    hypothesis: str | None = None
    engineering_email: str | None = None
    customer_notice: Annotated[str, Meta(description="only for critical incidents")] | None = None


class IncidentEvent(Event, frozen=True, kw_only=True, tag="incident.v1"):
    """One state of an incident after a change (``change``)."""

    incident_id: NonEmptyStr
    revision: Annotated[int, Meta(ge=1)]
    change: IncidentChange
    state: IncidentState
    title: str
    severity: Severity
    provider: str
    host: str = ""
    models: tuple[str, ...]
    cascade: Annotated[bool, Meta(description="several models on one host or provider at once")] = False
    episode_ids: tuple[str, ...] = ()
    violation_count: Count = 0
    opened_at: datetime
    last_violation_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    acknowledged_note: str | None = None
    resolved_note: str | None = None
    analysis: IncidentAnalysis | None = None
    similar: tuple[SimilarIncident, ...] = ()
    resembles: ResembledIncident | None = None
    ticket: TicketRef | None = None
    merged_into: (
        Annotated[str, Meta(description="the incident this one was merged into (resolved then)")] | None
    ) = None
    # Added later in v1 (events of older alerters have none).
    repaged: Annotated[
        tuple[RepagedEpisode, ...],
        Meta(
            description="its violations firing again after a hand resolution the engine never"
            " cleared (paged again), until resolved again or cleared"
        ),
    ] = ()
