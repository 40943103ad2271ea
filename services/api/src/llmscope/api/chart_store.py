"""A chart's points, limits, marks and re-baselines for the dashboard and ``/api/stats/spc``.

Charts read raw probes for short windows and per-minute rollups, regrouped into at most
~360 buckets, for long ones (PERFORMANCE.md: a 24 h chart never reads 43,200 rows).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from llmscope.api.series_seen import target_last_seen
from llmscope.api.store_base import StoreBase
from llmscope.proto.charts import ChartView, chart_key
from llmscope.proto.telemetry import PROBES_SQL
from llmscope.web.data import (
    BaselineInfo,
    ChartData,
    ChartPoint,
    ChartQuery,
    Limits,
    ModelRebaselineResult,
    RebaselineMark,
    RebaselineResult,
    Series,
    ViolationMark,
)

RAW_MAX_HOURS = 2.0
MAX_BUCKETS = 360
RAW_POINT_CAP = 20_000
# Violation marks of one chart read at most: past it, the most severe and then the newest. The
# dashboard draws fewer (``llmscope.web.svg.MARKS_DRAWN``), and ``GET /api/stats/spc`` answers
# with as many unless its ``marks`` asks for more, up to this.
MARKS_BUDGET = 1000
SEVERITY_ORDER = ("critical", "warning", "info")
# Probe spacing for "one false alarm per ..." is the median gap over this many recent probes.
SPACING_POINTS = 200

# metric -> (telemetry column, rollup prefix, charted on the log scale)
METRIC_COLUMNS: dict[str, tuple[str, str, bool]] = {
    "latency_ms": ("latency_ms", "latency", True),
    "ttft_ms": ("ttft_ms", "ttft", True),
    "tokens_per_s": ("tokens_per_s", "tps", False),
}


def bucket_seconds(hours: float) -> int:
    """0 (raw probes) for short windows, else a whole number of minutes giving <= MAX_BUCKETS."""
    if hours <= RAW_MAX_HOURS:
        return 0
    minutes = math.ceil(hours * 60 / MAX_BUCKETS)
    return max(1, minutes) * 60


def limits_from_view(view: ChartView) -> Limits | None:
    """The engine's frozen limits (metric units, asymmetric on the log scale), if armed."""
    lim = view.limits
    if view.phase != "armed" or lim is None:
        return None
    return Limits(
        center=lim.center,
        ucl=lim.ucl,
        lcl=lim.lcl,
        zone_a_upper=lim.zone_a_upper,
        zone_a_lower=lim.zone_a_lower,
        zone_b_upper=lim.zone_b_upper,
        zone_b_lower=lim.zone_b_lower,
        sigma=lim.sigma,
        transform=lim.transform,
        baseline_id=view.baseline.id if view.baseline else None,
        baseline_n=view.baseline.n if view.baseline else None,
    )


def baseline_from_view(view: ChartView) -> BaselineInfo | None:
    b = view.baseline
    if b is None:
        return None
    return BaselineInfo(
        id=b.id,
        n=b.n,
        number=b.number,
        n_excluded=b.n_excluded,
        created_by=b.created_by,
        reason=b.reason,
        started_at=b.started_at,
        ended_at=b.ended_at,
    )


def rebaseline_marks(
    history: Sequence[asyncpg.Record], view: ChartView | None, start: datetime, end: datetime
) -> list[RebaselineMark]:
    """The chart's re-baselines in its window: those recorded in ``baseline_history`` and its
    current baseline (which the history may not have recorded yet)."""
    marks = {
        r["number"]: RebaselineMark(r["started_at"], r["number"], r["created_by"], r["reason"])
        for r in history
    }
    b = view.baseline if view is not None else None
    if b is not None and b.number > 0 and b.started_at is not None and start <= b.started_at < end:
        marks.setdefault(b.number, RebaselineMark(b.started_at, b.number, b.created_by, b.reason))
    return sorted(marks.values(), key=lambda m: m.ts)


class ChartStore(StoreBase):
    """The probe charts: their subgroups and targets, one chart's data, its re-baselines."""

    async def series(self) -> list[Series]:
        """The probe charts' subgroups. Real traffic (prompt ``traffic:<operation>``) is charted per
        minute, on the dashboard's Traffic page, not request by request here."""
        rows = await self.pool.fetch(
            f"""SELECT provider, model, prompt_id, last_seen FROM series
               WHERE {PROBES_SQL} ORDER BY provider, model, prompt_id"""
        )
        return [Series(r["provider"], r["model"], r["prompt_id"], r["last_seen"]) for r in rows]

    async def targets(self, provider: str, model: str, prompt_id: str) -> list[str]:
        """Targets that served this subgroup, most recently probed first (to the microsecond:
        ``series_targets`` holds the minute, telemetry the time within it)."""
        rows = await self.pool.fetch(
            f"""SELECT target FROM series_targets s WHERE provider = $1 AND model = $2 AND prompt_id = $3
               ORDER BY {target_last_seen("s")} DESC, target""",
            provider,
            model,
            prompt_id,
        )
        return [r["target"] for r in rows]

    async def chart(
        self, query: ChartQuery, now: datetime | None = None, *, marks: int = MARKS_BUDGET
    ) -> ChartData:
        """Points from Postgres; phase, limits and expected false-alarm rate from the engine's chart.

        ``marks``: the violation marks read at most (the most severe, then the newest, of the
        window); ``violations_total`` counts them all.

        The engine charts each target apart: with one target the model's probes are its points;
        with several, the points are those of ``query.target`` (default: the most recently
        probed target), raw or from the per-minute rollups (windows over 2 h) alike.
        """
        if query.metric not in METRIC_COLUMNS:
            raise ValueError(f"metric: unknown metric {query.metric!r}")
        col, prefix, log_scale = METRIC_COLUMNS[query.metric]
        end = now or datetime.now(UTC)
        start = end - timedelta(hours=query.hours)
        key = (query.provider, query.model, query.prompt_id)
        targets = await self.targets(*key)
        target = query.target or (targets[0] if targets else "")
        by_target = len(targets) > 1
        # One more bind parameter: the target, only where it narrows anything.
        tcond = "AND target = ${}" if by_target else ""
        targs = [target] if by_target else []
        bucket_s = bucket_seconds(query.hours)
        ckey = chart_key(query.provider, query.model, target, query.prompt_id, query.metric) if target else ""
        # The chart's record, read once per request (issue 13: it was read twice).
        record = await self.charts.get(ckey) if ckey else None
        view = record.view if record is not None else None
        async with self.pool.acquire() as conn:
            if bucket_s == 0:
                rows = await conn.fetch(
                    f"""SELECT id, ts, {col} AS v FROM telemetry
                        WHERE provider = $1 AND model = $2 AND prompt_id = $3 AND ts >= $4
                          AND status = 'ok' AND {col} IS NOT NULL {tcond.format(5)}
                        ORDER BY ts LIMIT {RAW_POINT_CAP}""",
                    *key,
                    start,
                    *targs,
                )
                points = [ChartPoint(ts=r["ts"], value=r["v"], id=r["id"]) for r in rows]
                failed = await conn.fetchval(
                    f"""SELECT coalesce(sum(n - n_ok), 0) FROM telemetry_minute
                        WHERE provider = $1 AND model = $2 AND prompt_id = $3 AND minute >= $4
                          {tcond.format(5)}""",
                    *key,
                    start,
                    *targs,
                )
            else:
                # The failed probes of the window from the same rows (the bucket before the window
                # is read for its points only): one scan of the rollups, not two.
                # An hour whose minutes retention deleted (kept for less time than the hours:
                # migration 0020) from its row, plus any late event's minute there, which the
                # fold has not added to it yet (none where every minute is kept).
                cols = ", ".join(f"{prefix}_{c}" for c in ("n", "min", "max", "sum", "logsum"))
                rows = await conn.fetch(
                    f"""SELECT to_timestamp(floor(extract(epoch FROM minute) / $5) * $5) AS bucket,
                               sum({prefix}_n) AS n, min({prefix}_min) AS lo, max({prefix}_max) AS hi,
                               sum({prefix}_sum) AS s, sum({prefix}_logsum) AS ls,
                               coalesce(sum(n - n_ok) FILTER (WHERE minute >= $6), 0) AS failed
                        FROM (SELECT minute, n, n_ok, {cols} FROM telemetry_minute
                              WHERE provider = $1 AND model = $2 AND prompt_id = $3 AND minute >= $4
                                {tcond.format(7)}
                              UNION ALL
                              SELECT hour, n, n_ok, {cols} FROM telemetry_series_hour
                              WHERE provider = $1 AND model = $2 AND prompt_id = $3 AND hour >= $4
                                AND minutes_pruned {tcond.format(7)}) AS r
                        GROUP BY 1 ORDER BY 1""",
                    *key,
                    start - timedelta(seconds=bucket_s),
                    bucket_s,
                    start,
                    *targs,
                )
                points = []
                failed = 0
                for r in rows:
                    failed += r["failed"]
                    n = int(r["n"] or 0)
                    if n == 0:
                        continue  # every probe of the bucket failed: no point, its failures count
                    value = math.exp(r["ls"] / n) if log_scale else r["s"] / n
                    mid = r["bucket"] + timedelta(seconds=bucket_s / 2)
                    points.append(ChartPoint(ts=mid, value=value, n=n, lo=r["lo"], hi=r["hi"]))
            # A noisy chart has more marks than are drawn: the most severe, and of those the
            # newest, of the severities asked for (never the oldest). Each severity's newest from
            # the marks index (migration 0012): work in proportion to the marks, not the window.
            severities = [sv for sv in SEVERITY_ORDER if not query.severities or sv in query.severities]
            tsev = "AND v.target = $7" if by_target else ""
            drawn = await conn.fetch(
                f"""SELECT m.*, (SELECT count(*) FROM violations v
                                 WHERE v.provider = $1 AND v.model = $2 AND v.prompt_id = $3
                                   AND v.metric = $4 AND v.severity = ANY($6) AND v.ts >= $5 {tsev}) AS total
                    FROM (SELECT m.* FROM unnest($6::text[]) WITH ORDINALITY AS s(severity, rank)
                          CROSS JOIN LATERAL (
                              SELECT v.id, v.ts, v.value, v.rule, v.severity, v.cleared_at FROM violations v
                              WHERE v.provider = $1 AND v.model = $2 AND v.prompt_id = $3 AND v.metric = $4
                                AND v.severity = s.severity AND v.ts >= $5 {tsev}
                              ORDER BY v.ts DESC LIMIT {max(0, int(marks))}) AS m
                          ORDER BY s.rank, m.ts DESC LIMIT {max(0, int(marks))}) AS m
                    ORDER BY m.ts""",
                *key,
                query.metric,
                start,
                severities,
                *targs,
            )
            history = await conn.fetch(
                """SELECT number, started_at, created_by, reason FROM baseline_history
                   WHERE chart_key = $1 AND number > 0 AND started_at >= $2 AND started_at < $3
                   ORDER BY started_at LIMIT 200""",
                ckey,
                start,
                end,
            )
            spacing = None
            if view is not None and view.arl0_critical is not None:
                spacing = await conn.fetchval(
                    f"""SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY dt) FROM (
                            SELECT extract(epoch FROM ts - lag(ts) OVER (ORDER BY ts))::float8 AS dt
                            FROM (SELECT ts FROM telemetry
                                  WHERE provider = $1 AND model = $2 AND prompt_id = $3
                                    AND status = 'ok' AND {col} IS NOT NULL {tcond.format(4)}
                                  ORDER BY ts DESC LIMIT {SPACING_POINTS + 1}) AS recent
                        ) AS gaps WHERE dt IS NOT NULL""",
                    *key,
                    *targs,
                )
        arl0 = view.arl0_critical if view is not None else None
        return ChartData(
            query=dataclasses.replace(query, target=target),
            start=start,
            end=end,
            bucket_s=bucket_s,
            points=points,
            limits=limits_from_view(view) if view is not None else None,
            violations=[
                ViolationMark(
                    id=m["id"],
                    ts=m["ts"],
                    value=m["value"],
                    rule=m["rule"],
                    severity=m["severity"],
                    state="cleared" if m["cleared_at"] else "open",
                )
                for m in drawn
            ],
            violations_total=int(drawn[0]["total"]) if drawn else 0,
            failed_probes=int(failed),
            chart_key=ckey,
            phase=view.phase if view is not None else "unknown",
            progress=view.progress if view is not None else 0,
            baseline_n=view.baseline_n if view is not None else None,
            baseline=baseline_from_view(view) if view is not None else None,
            arl0_critical=arl0,
            probe_interval_s=spacing,
            false_alarm_every_s=arl0 * spacing if arl0 is not None and spacing else None,
            open_episodes=list(view.open_episodes) if view is not None else [],
            targets=sorted(targets),
            note=view.note if view is not None else "",
            ar_order=view.ar_order if view is not None else 0,
            autocorrelation=view.autocorrelation if view is not None else None,
            tail_rate=view.tail_rate if view is not None else None,
            rebaselines=rebaseline_marks(history, view, start, end),
        )

    async def rebaseline(self, chart_key: str, by: str, reason: str) -> RebaselineResult:
        return await self.charts.rebaseline(chart_key, by, reason)

    async def rebaseline_model(
        self, provider: str, model: str, target: str, by: str, reason: str
    ) -> ModelRebaselineResult:
        return await self.charts.rebaseline_model(provider, model, target, by, reason)
