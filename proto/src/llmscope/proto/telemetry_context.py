"""Requests the alerter sends the API for the telemetry around a violation, and the replies.

The API owns the telemetry table; the alerter describes a violation in a page (the probes
around it, an outage's failed probes) and analyses an incident (its points) by asking the API
over core NATS request/reply (``subjects.api_telemetry_*``, JSON bodies of the Structs below,
API replicas answering in one queue group). No answer (no responders, a timeout) means no API
is running: the page goes without context, as it did when the alerter ran without the API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

ContextStatus = Literal["ok", "error"]
MAX_QUERIES = 500
"""Queries one request may carry (a group's violations; more are asked in several requests)."""
TOO_LARGE = "reply too large"
"""How an error reply starts when its answer would not fit NATS's max payload: the asker asks
again for less (an outage reply never says it: the API shortens its error texts to fit)."""


class ContextQuery(msgspec.Struct, frozen=True, kw_only=True):
    """The chart of one violation around its last point."""

    episode_id: str
    provider: str
    model: str
    prompt_id: str = ""
    target: str = ""
    metric: Annotated[str, Meta(description="the telemetry column charted, e.g. latency_ms")]
    pivot: Annotated[datetime, Meta(description="the points at or before it and after it are read")]


class ContextRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``subjects.api_telemetry_context()``: up to ``points`` probes each side of each pivot."""

    queries: Annotated[tuple[ContextQuery, ...], Meta(max_length=MAX_QUERIES)]
    points: Annotated[int, Meta(ge=1, le=100)] = 10


class ContextPointRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    ts: datetime
    value: float | None = None
    status: str = "ok"


class ContextReply(msgspec.Struct, frozen=True, kw_only=True):
    status: ContextStatus
    context: dict[str, tuple[ContextPointRecord, ...]] = {}
    """per episode id, oldest first"""
    error: str = ""


class OutageQuery(msgspec.Struct, frozen=True, kw_only=True):
    """An availability violation's target: its failed probes since the last success at or
    before ``since``, up to ``until``."""

    episode_id: str
    provider: str
    model: str
    target: str = ""
    since: datetime
    until: datetime


class OutageRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``subjects.api_telemetry_outages()``."""

    queries: Annotated[tuple[OutageQuery, ...], Meta(max_length=MAX_QUERIES)]
    recent: Annotated[int, Meta(ge=0, le=500)] = 3


class FailedProbeRecord(msgspec.Struct, frozen=True, kw_only=True):
    ts: datetime
    status: str
    http_status: int | None = None
    error: str | None = None
    """as stored, or its start then ``…(truncated, <n> chars)`` when the whole reply would not
    have fit NATS's max payload"""


class OutageRecord(msgspec.Struct, frozen=True, kw_only=True):
    count: int
    since: datetime | None = None
    last_success: datetime | None = None
    recent: tuple[FailedProbeRecord, ...] = ()
    """the latest failed probes, newest first (fewer than asked only when even their shortened
    errors would not have fit NATS's max payload; ``count`` counts them all)"""


class OutageReply(msgspec.Struct, frozen=True, kw_only=True):
    status: ContextStatus
    outages: dict[str, OutageRecord] = {}
    """per episode id"""
    error: str = ""


class PointsRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``subjects.api_telemetry_points()``: the probes of these telemetry ids."""

    ids: Annotated[tuple[str, ...], Meta(max_length=10_000)]


class PointRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    ts: datetime
    model: str
    latency_ms: float | None = None
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    status: str = "ok"
    prompt_id: str = ""


class PointsReply(msgspec.Struct, frozen=True, kw_only=True):
    status: ContextStatus
    points: tuple[PointRecord, ...] = ()
    error: str = ""
