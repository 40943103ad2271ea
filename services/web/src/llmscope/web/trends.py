"""What the comparison chart, the availability chart and the report read: plain data and one
Protocol the API implements over the rollups (per minute, and per hour by model and by prompt and
target) and violations.

Rollups keep per minute or hour the count, the successes, and for each metric the sum of logs, min and
max; a bucket's typical value is their geometric mean, which for latencies (close to lognormal)
sits near the median. Percentiles would need the raw probes, which a 30-day chart must not read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from llmscope.web.data import ChartPoint, Metric
from llmscope.web.userinfo import without_password

# Windows of the comparison chart, in hours: an hour to 30 days (the API serves 744 h).
COMPARE_WINDOWS_H: tuple[int, ...] = (1, 6, 24, 168, 720)
COMPARE_MAX_HOURS = 744
COMPARE_BUCKETS = 240
MAX_COMPARED = 8
CompareBy = Literal["model", "prompt", "target"]
"""What one line of the comparison is: a model (every prompt and target of its probes pooled), or one prompt
or one target of a single model."""
COMPARE_BY: tuple[CompareBy, ...] = ("model", "prompt", "target")
# A bucket where most probes failed is drawn as an outage band.
OUTAGE_SHARE = 0.5


def compare_bucket_s(hours: float) -> int:
    """Whole minutes, at most ~COMPARE_BUCKETS buckets over the window; whole hours once a bucket
    would exceed half an hour, so that long windows read the hourly rollups (7 days: 168 points)."""
    minutes = max(1, math.ceil(hours * 60 / COMPARE_BUCKETS))
    return (minutes if minutes <= 30 else math.ceil(minutes / 60) * 60) * 60


def span_bucket_s(hours: float, start: datetime, end: datetime, first: datetime | None) -> int:
    """The buckets of a chart over ``start``..``end`` (``hours``) whose data begins at ``first``:
    :func:`compare_bucket_s` of the data's span, not of the window, so a short history (10 minutes
    in a 24 h report) draws about as many points as a full one instead of 2 or 3. Bounded: never
    finer than a minute (the rollups), never coarser than the window's buckets (a span as long as
    the window, or no data, is the window)."""
    if first is None or first <= start:
        return compare_bucket_s(hours)
    span_h = max((end - first).total_seconds(), 0.0) / 3600
    return min(compare_bucket_s(hours), compare_bucket_s(min(span_h, hours)))


def window_label(hours: float) -> str:
    return f"{hours / 24:g} d" if hours >= 48 and hours % 24 == 0 else f"{hours:g} h"


@dataclass(frozen=True, slots=True)
class ComparedLine:
    """One model's typical value per bucket (``value``), with the bucket's min and max; ``part``
    names the prompt or target when the comparison splits one model."""

    provider: str
    model: str
    points: list[ChartPoint]
    part: str = ""

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}" + (f" · {without_password(self.part)}" if self.part else "")


@dataclass(frozen=True, slots=True)
class ChartEvent:
    """Something to mark on a time chart: a violation episode or a re-baseline."""

    ts: datetime
    kind: str
    """``violation`` or ``rebaseline``."""
    provider: str
    model: str
    label: str
    severity: str = ""
    id: str = ""


@dataclass(frozen=True, slots=True)
class MaintenanceSpan:
    """A maintenance window's occurrence over a chart's window (recurring ones, each time)."""

    start: datetime
    end: datetime
    label: str
    """The window's reason and what it covers (``model=… host=…``)."""


@dataclass(frozen=True, slots=True)
class Comparison:
    metric: Metric
    hours: float
    start: datetime
    end: datetime
    bucket_s: int
    lines: list[ComparedLine]
    events: list[ChartEvent] = field(default_factory=list)
    maintenance: list[MaintenanceSpan] = field(default_factory=list)
    maintenance_known: bool = True
    """False when the alerter (which keeps the windows) did not answer: none could be drawn."""


@dataclass(frozen=True, slots=True)
class AvailabilityBucket:
    ts: datetime
    """The bucket's start."""
    probes: int
    ok: int

    @property
    def failed(self) -> int:
        return self.probes - self.ok

    @property
    def success(self) -> float:
        return self.ok / self.probes if self.probes else 1.0

    @property
    def outage(self) -> bool:
        return self.probes > 0 and self.failed / self.probes > OUTAGE_SHARE


@dataclass(frozen=True, slots=True)
class AvailabilityLine:
    """One target of a model: its probes and successes per bucket."""

    target: str
    buckets: list[AvailabilityBucket]

    @property
    def probes(self) -> int:
        return sum(b.probes for b in self.buckets)

    @property
    def failed(self) -> int:
        return sum(b.failed for b in self.buckets)


@dataclass(frozen=True, slots=True)
class AvailabilityHistory:
    provider: str
    model: str
    hours: float
    start: datetime
    end: datetime
    bucket_s: int
    lines: list[AvailabilityLine]


@dataclass(frozen=True, slots=True)
class RuleCount:
    rule: str
    severity: str
    count: int


class TrendsData(Protocol):
    """History over long windows, from the rollups; the API implements it over Postgres."""

    async def comparison(
        self,
        models: list[tuple[str, str]],
        metric: Metric,
        hours: float,
        end: datetime | None = None,
        by: CompareBy = "model",
    ) -> Comparison: ...

    async def availability(
        self, provider: str, model: str, hours: float, end: datetime | None = None
    ) -> AvailabilityHistory: ...

    async def rule_counts(
        self, start: datetime, end: datetime, provider: str | None = None, model: str | None = None
    ) -> list[RuleCount]: ...

    async def hosts(self, models: list[tuple[str, str]], start: datetime, end: datetime) -> set[str]:
        """The hosts these models' probes ran on within start..end (host-scoped maintenance)."""
        ...
