"""The overview, the landing page: every model in one row, worst first, and a summary on top.

A row joins what three sources know of a model: its status (the status page's verdict, see
:mod:`llmscope.web.status`), its latency sparkline and open critical episodes (the store's
:class:`~llmscope.web.data.Overview`), and its active incident (the alerter's incidents, stored
in Postgres). Pure: the route gathers the inputs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from llmscope.config.logs import get_logger
from llmscope.web.alerting import Incident
from llmscope.web.data import FalseAlarmBudget, OpenEpisode, Overview, Sparkline
from llmscope.web.status import (
    LABELS,
    NOTHING_MONITORED,
    STATUSES,
    ModelStatus,
    Overall,
    Status,
    StatusReport,
    overall,
)

log = get_logger("llmscope.web.overview")
# The budget reads every chart's record: once a minute is plenty for a figure that moves with
# re-baselines, and a wall of tabs re-reading the overview on every event does not multiply it.
BUDGET_TTL_S = 60.0

# Worst first, for people deciding what to look at: a model nobody probes any more (unknown)
# (stopped) is news, planned maintenance is not.
ROW_RANK: dict[Status, int] = {
    "outage": 0,
    "degraded": 1,
    "stopped": 2,
    "unknown": 2,
    "maintenance": 3,
    "operational": 4,
}


@dataclass(frozen=True, slots=True)
class OverviewRow:
    """One model: its status, latency sparkline, open critical episodes and active incident."""

    provider: str
    model: str
    status: ModelStatus
    sparkline: Sparkline | None = None
    critical: list[OpenEpisode] = field(default_factory=list)
    incident: Incident | None = None

    @property
    def latest(self) -> float | None:
        """The sparkline's last bucket, in the metric's units."""
        return self.sparkline.points[-1].value if self.sparkline and self.sparkline.points else None


@dataclass(frozen=True, slots=True)
class Summary:
    """The card on top: how many models in each status, open incidents, pages in 24 h."""

    models: int
    by_status: dict[Status, int]
    by_label: dict[str, int]
    """Models per label, worst first (see ``LABELS``): a model whose probes stopped is counted
    as "stopped reporting", as its row says, not among the never-probed "unknown"."""
    open_incidents: int
    critical_open: int
    critical_24h: int
    budget: FalseAlarmBudget | None = None
    overall: Overall = NOTHING_MONITORED
    """The verdict on top, by the same rule as the status page and badges."""


def overview_rows(
    report: StatusReport | None, overview: Overview, incidents: Sequence[Incident] = ()
) -> list[OverviewRow]:
    """A row per model, worst first: each model the status report lists (the enabled ones, a
    model whose probes stopped included: it says so), or without a report each with a sparkline.

    A model disabled on the models page leaves the overview at once, although its sparkline
    still has points in the window: the overview follows what is monitored now.
    """
    statuses = {(m.provider, m.model): m for m in report.models} if report else {}
    lines = {(s.provider, s.model): s for s in overview.sparklines}
    episodes: dict[tuple[str, str], list[OpenEpisode]] = {}
    for e in overview.critical:
        episodes.setdefault((e.provider, e.model), []).append(e)
    active = [i for i in incidents if i.state != "resolved"]
    rows = []
    for key in statuses.keys() if report else lines.keys():
        provider, model = key
        status = statuses.get(key) or ModelStatus(provider, model, "unknown", reasons=["not enabled"])
        # The newest incident that names the model (a cascade's may name no provider).
        mine = [i for i in active if model in i.models and i.provider in ("", provider)]
        incident = max(mine, key=lambda i: i.opened_at, default=None)
        rows.append(OverviewRow(provider, model, status, lines.get(key), episodes.get(key, []), incident))
    rows.sort(
        key=lambda r: (ROW_RANK[r.status.status], -len(r.critical), r.incident is None, r.provider, r.model)
    )
    return rows


def summary(
    rows: Sequence[OverviewRow],
    overview: Overview,
    incidents: Sequence[Incident] = (),
    budget: FalseAlarmBudget | None = None,
) -> Summary:
    counts = Counter(r.status.status for r in rows)
    labels = Counter(r.status.label for r in rows)
    return Summary(
        models=len(rows),
        by_status={s: counts.get(s, 0) for s in STATUSES},
        by_label={s: labels.get(s, 0) for s in LABELS},
        open_incidents=sum(1 for i in incidents if i.state != "resolved"),
        critical_open=sum(len(r.critical) for r in rows),
        critical_24h=overview.critical_24h,
        budget=budget,
        overall=overall([r.status for r in rows]),
    )


class BudgetCache:
    """The false-alarm budget, read at most once per ``ttl_s``; None while it cannot be read
    (the overview shows the rest rather than fail with it)."""

    def __init__(
        self,
        load: Callable[[], Awaitable[FalseAlarmBudget]],
        ttl_s: float = BUDGET_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._clock = clock
        self._value: FalseAlarmBudget | None = None
        self._at: float | None = None

    async def get(self) -> FalseAlarmBudget | None:
        now = self._clock()
        if self._at is None or now - self._at >= self._ttl_s:
            try:
                self._value = await self._load()
            except Exception as exc:  # a missing figure, never a failed overview
                log.warning("false-alarm budget unavailable", error=repr(exc))
                self._value = None
            self._at = now
        return self._value
