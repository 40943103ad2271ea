"""The overview (the landing page): every model's latency sparkline with its limits, the open
criticals, and the false-alarm budget."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from llmscope.api import false_alarms
from llmscope.api.chart_store import limits_from_view
from llmscope.api.store_base import StoreBase
from llmscope.proto.charts import chart_key
from llmscope.proto.telemetry import PROBES_SQL
from llmscope.web.data import ChartPoint, FalseAlarmBudget, OpenEpisode, Overview, Sparkline

# A sparkline is a glance: about this many buckets over any window.
OVERVIEW_BUCKETS = 60


class OverviewStore(StoreBase):
    """The overview's reads: the rollups of every model at once, and the engine's limits."""

    async def overview(self, hours: float, now: datetime | None = None) -> Overview:
        """Each model's latency sparkline from the rollups (one query for all models), the
        engine's limits of those charts (one KV read each, concurrently) and open criticals
        (not cleared: one a person resolved while its chart is still out of control stays).

        A model's sparkline is the chart the dashboard opens for it: its first prompt, on the
        target probed last; probes only (an application's traffic, ``traffic:<operation>``, has
        charts of its own on the traffic page).
        """
        end = now or datetime.now(UTC)
        start = end - timedelta(hours=hours)
        bucket_s = max(60, math.ceil(hours * 3600 / OVERVIEW_BUCKETS / 60) * 60)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"""SELECT provider, model, prompt_id, target,
                          to_timestamp(floor(extract(epoch FROM minute) / $2) * $2) AS bucket,
                          sum(latency_n) AS n, sum(latency_logsum) AS ls,
                          min(latency_min) AS lo, max(latency_max) AS hi
                   FROM telemetry_minute WHERE minute >= $1 AND {PROBES_SQL}
                   GROUP BY 1, 2, 3, 4, 5 HAVING sum(latency_n) > 0 ORDER BY 5""",
                start - timedelta(seconds=bucket_s),
                bucket_s,
            )
            episodes = await conn.fetch(
                """SELECT id, ts, provider, model, target, prompt_id, metric, rule, severity,
                          event->>'detail' AS detail
                   FROM violations
                   WHERE cleared_at IS NULL AND severity = 'critical'
                   ORDER BY ts DESC LIMIT 500"""
            )
            critical_24h = await conn.fetchval(
                "SELECT count(*) FROM violations WHERE severity = 'critical' AND ts >= $1",
                end - timedelta(hours=24),
            )
        subgroups: dict[tuple[str, str, str, str], list[ChartPoint]] = {}
        for r in rows:
            mid = r["bucket"] + timedelta(seconds=bucket_s / 2)
            if mid < start:
                continue
            point = ChartPoint(
                ts=mid, value=math.exp(r["ls"] / r["n"]), n=int(r["n"]), lo=r["lo"], hi=r["hi"]
            )
            subgroups.setdefault((r["provider"], r["model"], r["prompt_id"], r["target"]), []).append(point)
        first_prompt: dict[tuple[str, str], str] = {}
        for provider, model, prompt_id, _target in sorted(subgroups):
            first_prompt.setdefault((provider, model), prompt_id)
        picks: list[tuple[str, str, str, str]] = []
        for (provider, model), prompt_id in sorted(first_prompt.items()):
            targets = [t for (p, m, pr, t) in subgroups if (p, m, pr) == (provider, model, prompt_id)]
            # Rollups written before targets were kept apart have none: a named target wins,
            # the one probed last.
            named = [t for t in targets if t] or targets
            target = max(named, key=lambda t: (subgroups[(provider, model, prompt_id, t)][-1].ts, t))
            picks.append((provider, model, prompt_id, target))
        keys = [
            chart_key(p, m, target, prompt, "latency_ms") if target else "" for p, m, prompt, target in picks
        ]
        wanted = [k for k in keys if k]
        by_key = dict(zip(wanted, await self.charts.get_many(wanted), strict=True))
        sparklines = []
        for key, (provider, model, prompt_id, target) in zip(keys, picks, strict=True):
            record = by_key.get(key)
            view = record.view if record is not None else None
            collecting = view is not None and view.phase == "collecting"
            sparklines.append(
                Sparkline(
                    provider=provider,
                    model=model,
                    prompt_id=prompt_id,
                    target=target,
                    metric="latency_ms",
                    bucket_s=bucket_s,
                    points=subgroups[(provider, model, prompt_id, target)],
                    limits=limits_from_view(view) if view is not None else None,
                    progress=view.progress if view is not None and collecting else None,
                    baseline_n=view.baseline_n if view is not None and collecting else None,
                )
            )
        return Overview(
            hours=hours,
            start=start,
            end=end,
            sparklines=sparklines,
            critical=[
                OpenEpisode(
                    id=e["id"],
                    ts=e["ts"],
                    provider=e["provider"],
                    model=e["model"],
                    target=e["target"],
                    prompt_id=e["prompt_id"],
                    metric=e["metric"],
                    rule=e["rule"],
                    severity=e["severity"],
                    detail=e["detail"] or "",
                )
                for e in episodes
            ],
            critical_24h=int(critical_24h or 0),
        )

    async def false_alarm_budget(self, now: datetime | None = None) -> FalseAlarmBudget:
        """The overview's false-alarm budget (:mod:`llmscope.api.false_alarms`)."""
        return await false_alarms.false_alarm_budget(self.pool, self.charts, now or datetime.now(UTC))
