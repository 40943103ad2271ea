"""``violation.v1``: a control chart signalled, with the statistics frozen at that moment.

A violation is an episode: one ``open`` event at the point that completes the pattern, and one
``cleared`` event (same ``episode_id``) when the chart is back in control. Further points of the
same run publish nothing. Ids are derived from chart, rule and point, so a replay after a crash
republishes the same ids and JetStream's duplicate window drops them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from llmscope.proto.base import Count, Event, NonEmptyStr
from llmscope.proto.telemetry import ProviderKind, SystemMetrics

Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")
ChartKind = Literal["individuals", "ewma", "cusum", "availability", "p", "subgroup"]
"""``p`` (an error-rate chart of traffic minutes) and ``subgroup`` (a quantile of traffic minutes)
were added later in v1: readers must be upgraded before the SPC engine that sends them."""
Transform = Literal["none", "log"]
ViolationState = Literal["open", "cleared"]
Direction = Literal["up", "down", ""]


class ChartLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Chart statistics frozen when the signal fired.

    ``center``, limits and zone bounds are in the metric's own units (ms for latency) even when
    the chart runs on the log scale, so they are asymmetric around the center there. ``sigma``
    is in chart units: ms for ``transform="none"``, natural-log units for ``"log"``.
    """

    transform: Transform = "none"
    center: float
    sigma: Annotated[float, Meta(ge=0)]
    ucl: float
    lcl: float
    zone_a_upper: Annotated[float, Meta(description="center + 2 sigma")]
    zone_a_lower: Annotated[float, Meta(description="center - 2 sigma")]
    zone_b_upper: Annotated[float, Meta(description="center + 1 sigma")]
    zone_b_lower: Annotated[float, Meta(description="center - 1 sigma")]


class BaselineRef(msgspec.Struct, frozen=True, kw_only=True):
    """The Phase I baseline a chart's limits came from."""

    id: NonEmptyStr
    n: Count
    started_at: datetime | None = None
    ended_at: datetime | None = None
    created_by: str = "engine"
    reason: str = "initial baseline"


class ViolationEvent(Event, frozen=True, kw_only=True, tag="violation.v1"):
    """A control-chart signal (``state="open"``) or its end (``state="cleared"``)."""

    state: ViolationState = "open"
    episode_id: Annotated[str, Meta(description="id of the open event; equal to id when state=open")]
    provider: ProviderKind
    model: NonEmptyStr
    target: str = ""
    host: str = ""
    prompt_id: str = ""
    metric: Annotated[NonEmptyStr, Meta(description="telemetry field charted, e.g. latency_ms")]
    chart: ChartKind = "individuals"
    chart_key: Annotated[str, Meta(description="stable id of the chart: provider/model/prompt/metric")] = ""
    rule: Annotated[NonEmptyStr, Meta(description="R1-R8 (Nelson tests), EWMA, CUSUM, AVAILABILITY")]
    rule_name: str = ""
    severity: Severity = "warning"
    value: Annotated[float, Meta(description="the value of the point that completed the pattern")]
    statistic: Annotated[float, Meta(description="EWMA value or CUSUM sum")] | None = None
    deviation_sigma: Annotated[float, Meta(description="(value - center) / sigma, in chart units")]
    limits: ChartLimits
    baseline: BaselineRef
    point_ids: Annotated[
        tuple[str, ...], Meta(description="telemetry ids of the points that formed the pattern")
    ]
    point_values: tuple[float, ...] = ()
    point_ts: tuple[datetime, ...] = ()
    system: SystemMetrics = SystemMetrics()
    opened_at: datetime | None = None
    direction: Annotated[
        Direction,
        Meta(description='which way the metric moved: "up", "down", "" (no direction: a trend or run test)'),
    ] = ""
    better: Annotated[
        bool,
        Meta(description="the move is an improvement (latency down, tokens/s up): recorded, worded 'faster'"),
    ] = False
    level: Annotated[
        float | None,
        Meta(description="the process's estimated level now, in the metric's units (null: not estimated)"),
    ] = None
    change_pct: Annotated[
        float | None,
        Meta(description="(level / baseline center - 1) * 100, signed in the metric's units"),
    ] = None
    detail: Annotated[
        str,
        Meta(
            description="what the chart saw, in words: 'p50 latency 1.63 s, +85 % over the 0.88 s baseline'"
        ),
    ] = ""
