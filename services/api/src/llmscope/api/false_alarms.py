"""The overview's false-alarm budget: how many critical signals a day the armed charts would raise
from noise alone, to set beside the pages a team actually got.

Each armed chart's engine publishes its in-control ARL of critical signals (``arl0_critical``, in
points: :class:`~llmscope.proto.charts.ChartView`); times the median spacing of its subgroup's
recent probes it is the expected time between false alarms, as the dashboard shows per chart.
The budget is the sum of the charts' rates. Availability charts publish no ARL and are not
counted; per-minute traffic charts have one point a minute.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg

from llmscope.api.charts import ChartViews
from llmscope.proto.charts import ChartRecord, is_traffic_chart
from llmscope.web.data import FalseAlarmBudget

DAY_S = 86_400.0
# Recent enough to be the pace the charts see now, long enough for a slow prober (one a minute).
SPACING_WINDOW = timedelta(hours=1)


def budget(
    records: Sequence[ChartRecord | None], spacing: dict[tuple[str, str, str, str], float]
) -> FalseAlarmBudget:
    """The budget of the armed charts among ``records``, with each probe subgroup's median
    spacing (provider, model, prompt, target -> seconds); a chart without either is left out."""
    per_day, counted, armed = 0.0, 0, 0
    for rec in records:
        view = rec.view if rec is not None else None
        if rec is None or view is None or view.phase != "armed":
            continue
        armed += 1
        arl0 = view.arl0_critical
        if is_traffic_chart(rec.key):
            every = 60.0
        else:
            m = rec.meta
            every = spacing.get((m.provider, m.model, m.prompt_id, m.target), 0.0)
        if arl0 is None or arl0 <= 0 or every <= 0:
            continue
        counted += 1
        per_day += DAY_S / (arl0 * every)
    return FalseAlarmBudget(armed_charts=armed, counted_charts=counted, per_day=per_day)


async def false_alarm_budget(pool: asyncpg.Pool, charts: ChartViews, now: datetime) -> FalseAlarmBudget:
    """Every chart's record from the engine, and the probe spacing of each subgroup (one query)."""
    records = await charts.list()
    rows = await pool.fetch(
        """SELECT provider, model, prompt_id, target,
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY dt) AS spacing
           FROM (SELECT provider, model, prompt_id, target,
                        extract(epoch FROM ts - lag(ts) OVER (
                            PARTITION BY provider, model, prompt_id, target ORDER BY ts))::float8 AS dt
                 FROM telemetry WHERE ts >= $1 AND ts <= $2 AND status = 'ok') AS gaps
           WHERE dt IS NOT NULL GROUP BY 1, 2, 3, 4""",
        now - SPACING_WINDOW,
        now,
    )
    spacing = {(r["provider"], r["model"], r["prompt_id"], r["target"]): float(r["spacing"]) for r in rows}
    return budget(records, spacing)
