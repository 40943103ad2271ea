"""The dashboard's long-window history over the per-minute rollups: implements
:class:`llmscope.web.trends.TrendsData` (comparison chart, availability chart, report counts).

Every query reads rollups and regroups them in SQL into at most ~240 buckets, so a 30-day chart of
several models never reads raw probes: ``telemetry_minute`` for buckets of minutes, and for
buckets of whole hours (windows over 5 days) the comparison reads ``telemetry_series_hour``, one
row per prompt, target and hour (an hour not folded yet: from its minutes, :data:`SERIES_HOURS`),
summed per model or kept apart for one model's prompts or
targets (``make bench``'s compare_bench measures them). Its key begins with the model and the
hour, so a model's window is one range of it.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

from asyncpg import Record

from llmscope.api.chart_store import METRIC_COLUMNS
from llmscope.api.charts import ChartFilter
from llmscope.api.persister.sql import ROLLUP_COLUMNS
from llmscope.api.store import Store
from llmscope.proto.telemetry import PROBES_SQL
from llmscope.web.data import ChartPoint, Metric
from llmscope.web.trend_svg import PALETTE
from llmscope.web.trends import (
    AvailabilityBucket,
    AvailabilityHistory,
    AvailabilityLine,
    ChartEvent,
    CompareBy,
    ComparedLine,
    Comparison,
    RuleCount,
    compare_bucket_s,
    span_bucket_s,
)

MAX_EVENTS = 200
Z95 = 1.6448536269514722  # the standard normal's 95th percentile


def lognormal_p95(mean_log: float, logsq: float, n: int, hi: float | None) -> float | None:
    """A bucket's p95 from its rollups: the logs' mean and spread (``logsq`` their sum of squares),
    as a lognormal, never above the bucket's max. None for fewer than 2 values or a spread the
    sums cannot have (rows rolled up before the sum of squares was kept count 0 in it)."""
    if n < 2:
        return None
    var = logsq / n - mean_log * mean_log
    # Rounding of equal values can leave a hair below zero; more means missing sums of squares.
    if var < -1e-9 * max(1.0, mean_log * mean_log):
        return None
    p95 = math.exp(mean_log + Z95 * math.sqrt(max(var, 0.0) * n / (n - 1)))
    return min(p95, hi) if hi is not None else p95


_ROLLUP_COLS = ", ".join(ROLLUP_COLUMNS)

# The hours of each series of the models in $4/$5 within $1..$2, as telemetry_series_hour's rows:
# an hour whose minutes are all folded (migration 0019) from that table, one with a minute not
# folded yet (the current hour, one just over, one a late event reached) as its minutes, which
# the query grouping them sums (sums, minima and maxima: the same buckets either way). The
# unfolded minutes are few, found per model through their partial index. An hour whose minutes
# retention deleted (``minutes_pruned``, migration 0020) is its row, and a late event's minute
# there (never folded: the fold adds it to the row and deletes it) is added to it. Hours are UTC
# hours whatever the session's time zone (date_trunc's third argument): in a +05:30 session they
# ran from :30 to :30, matched no hourly row, and an hour was counted twice.
SERIES_HOURS = f"""(
    WITH m AS (SELECT * FROM unnest($4::text[], $5::text[]) AS m(provider, model)),
    fresh AS MATERIALIZED (
        SELECT DISTINCT u.provider, u.model, u.prompt_id, u.target,
               date_trunc('hour', u.minute, 'UTC') AS hour
        FROM m JOIN telemetry_minute u ON u.provider = m.provider AND u.model = m.model
        WHERE NOT u.folded AND u.minute >= date_trunc('hour', $1::timestamptz, 'UTC') AND u.minute < $2
    )
    SELECT h.provider, h.model, h.prompt_id, h.target, h.hour, h.n, h.n_ok, {_ROLLUP_COLS}
    FROM m JOIN telemetry_series_hour h ON h.provider = m.provider AND h.model = m.model
    WHERE h.hour >= date_trunc('hour', $1::timestamptz, 'UTC') AND h.hour < $2
      AND (h.minutes_pruned OR NOT EXISTS (SELECT 1 FROM fresh f
                      WHERE f.provider = h.provider AND f.model = h.model AND f.hour = h.hour
                        AND f.prompt_id = h.prompt_id AND f.target = h.target))
    UNION ALL
    SELECT t.provider, t.model, t.prompt_id, t.target, f.hour, t.n, t.n_ok, {_ROLLUP_COLS}
    FROM fresh f JOIN telemetry_minute t
      ON t.provider = f.provider AND t.model = f.model AND t.prompt_id = f.prompt_id
     AND t.target = f.target AND t.minute >= f.hour AND t.minute < f.hour + interval '1 hour'
)"""


# One model's prompts or targets: as many lines as there are distinct colours.
MAX_PARTS = len(PALETTE)
# The charts of one model re-baselined together freeze their new baselines a few probes apart.
REBASELINE_GROUP = timedelta(minutes=1)


class TrendQueries:
    """Rollup queries for the comparison and availability charts and the report."""

    def __init__(self, store: Store) -> None:
        self.store = store  # its pool opens with the app's lifespan

    async def bucket_s(
        self, providers: list[str], names: list[str], hours: float, start: datetime, end: datetime
    ) -> int:
        """The buckets for these models' data within start..end (:func:`span_bucket_s`); a window
        whose buckets are already a minute (an hour's) asks nothing."""
        if compare_bucket_s(hours) <= 60:
            return 60
        return span_bucket_s(hours, start, end, await self.first_data(providers, names, start, end))

    async def first_data(
        self, providers: list[str], names: list[str], start: datetime, end: datetime
    ) -> datetime | None:
        """The first minute of these models' rollups within start..end (None: no data). The hourly
        rollups (keyed by model and hour first) find its hour; the minute rollups of that hour alone,
        the minute. The minute is the last column of their key (after prompt and target), so a
        lower bound alone read every minute from there to the window's end: 30 days of minutes
        per chart, 50x the chart's own query (``bench/compare_bench.py``)."""
        models = "unnest($3::text[], $4::text[]) AS m(provider, model)"
        # Each model's first hour by one descent of the key (provider, model, hour, ...): a min()
        # over the join read every prompt's and target's hours of the window.
        # An hour not folded yet (the current one, a series new within it: migration 0019) has
        # no hourly row: its first unfolded minute's hour, found the same way (LEAST skips NULL),
        # from the start's hour as the hourly rows are (its minutes before the start included);
        # a UTC hour, as the buckets' (in a +05:30 session it was the half hour before).
        hour: datetime | None = await self.store.pool.fetchval(
            f"""SELECT least(
                  (SELECT min(f.hour) FROM {models}
                   CROSS JOIN LATERAL (
                       SELECT t.hour FROM telemetry_series_hour t
                       WHERE t.provider = m.provider AND t.model = m.model
                         AND t.hour >= date_bin('1 hour', $1::timestamptz, 'epoch') AND t.hour < $2
                       ORDER BY t.hour LIMIT 1) AS f),
                  (SELECT date_trunc('hour', min(f.minute), 'UTC') FROM {models}
                   CROSS JOIN LATERAL (
                       SELECT t.minute FROM telemetry_minute t
                       WHERE t.provider = m.provider AND t.model = m.model AND NOT t.folded
                         AND t.minute >= date_bin('1 hour', $1::timestamptz, 'epoch') AND t.minute < $2
                       ORDER BY t.minute LIMIT 1) AS f))""",
            start,
            end,
            providers,
            names,
        )
        if hour is None:
            return None
        # An hour whose minutes retention deleted (kept for less time than the hours) has at
        # most a late event's: its first minute is not the hour's first data.
        minute: datetime | None = await self.store.pool.fetchval(
            f"""SELECT CASE WHEN EXISTS (
                           SELECT 1 FROM {models} JOIN telemetry_series_hour h
                             ON h.provider = m.provider AND h.model = m.model
                           WHERE h.hour = $5 AND h.minutes_pruned)
                       THEN NULL ELSE (
                           SELECT min(t.minute) FROM {models}
                           JOIN telemetry_minute t ON t.provider = m.provider AND t.model = m.model
                           WHERE t.minute >= $1 AND t.minute < $2) END""",
            max(hour, start),
            min(hour + timedelta(hours=1), end),
            providers,
            names,
            hour,
        )
        return minute or hour

    async def comparison(
        self,
        models: list[tuple[str, str]],
        metric: Metric,
        hours: float,
        end: datetime | None = None,
        by: CompareBy = "model",
    ) -> Comparison:
        """One line per model; ``by`` prompt or target: one line per prompt or target of the first
        model (over 5 days, either way from the hourly rollups of each series)."""
        end = end or datetime.now(UTC)
        start = end - timedelta(hours=hours)
        prefix = METRIC_COLUMNS[metric][1]
        if by != "model":
            models = models[:1]
        providers = [p for p, _ in models]
        names = [m for _, m in models]
        bucket_s = await self.bucket_s(providers, names, hours, start, end)
        # The engine's chart records are read while Postgres answers the two queries.
        rebaselines = asyncio.ensure_future(self.rebaselines(models, start, end))
        # By model, every prompt and target pooled: the model's typical value over the bucket.
        # Probes only, as the overview's sparkline: an application's requests (its own prompts,
        # a span's empty answer "ok") are no like-with-like measurement; they have their charts.
        # date_bin, not floor(extract(epoch ...)): numeric arithmetic per row cost 3x the time.
        # Buckets of whole hours read the hourly rollups of each series (a model's prompts and
        # targets pooled by the GROUP BY, or lines of their own): a model-level hourly table
        # (0008) cost the persister a row write per event and is gone (0018).
        hourly = bucket_s % 3600 == 0
        table, column = (SERIES_HOURS, "hour") if hourly else ("telemetry_minute", "minute")
        part = {"model": "''", "prompt": "t.prompt_id", "target": "t.target"}[by]
        sql = f"""SELECT t.provider, t.model, {part} AS part,
                       date_bin(make_interval(secs => $3), t.{column}, 'epoch') AS bucket,
                       sum({prefix}_n) AS n, sum({prefix}_logsum) AS ls, sum({prefix}_logsq) AS lq,
                       min({prefix}_min) AS lo, max({prefix}_max) AS hi
                FROM unnest($4::text[], $5::text[]) AS m(provider, model)
                JOIN {table} t ON t.provider = m.provider AND t.model = m.model
                WHERE t.{column} >= $1 AND t.{column} < $2 AND t.{PROBES_SQL}
                GROUP BY 1, 2, 3, 4 HAVING sum({prefix}_n) > 0 ORDER BY 4"""
        args = (start - timedelta(seconds=bucket_s), end, bucket_s, providers, names)
        rows = await self._rollups(sql, args, hourly)
        events = await self.store.pool.fetch(
            f"""SELECT id, ts, provider, model, rule, severity FROM violations
                WHERE ts >= $1 AND ts < $2 AND severity IN ('critical', 'warning')
                  AND (provider, model) IN (SELECT * FROM unnest($3::text[], $4::text[]))
                ORDER BY (severity = 'critical') DESC, ts DESC LIMIT {MAX_EVENTS}""",
            start,
            end,
            providers,
            names,
        )
        by_line: dict[tuple[str, str, str], list[ChartPoint]] = (
            {(p, m, ""): [] for p, m in models} if by == "model" else {}
        )
        for r in rows:
            mid = r["bucket"] + timedelta(seconds=bucket_s / 2)
            if mid < start:
                continue
            mean = r["ls"] / r["n"]
            by_line.setdefault((r["provider"], r["model"], r["part"]), []).append(
                ChartPoint(
                    ts=mid,
                    value=math.exp(mean),
                    n=int(r["n"]),
                    lo=r["lo"],
                    hi=r["hi"],
                    p95=lognormal_p95(mean, r["lq"], int(r["n"]), r["hi"]),
                )
            )
        if by != "model":
            # One line per prompt or target, by name, as many as there are colours.
            by_line = dict(sorted(by_line.items())[:MAX_PARTS])
        return Comparison(
            metric=metric,
            hours=hours,
            start=start,
            end=end,
            bucket_s=bucket_s,
            lines=[ComparedLine(p, m, pts, part) for (p, m, part), pts in by_line.items()],
            events=sorted(
                [
                    ChartEvent(
                        ts=e["ts"],
                        kind="violation",
                        provider=e["provider"],
                        model=e["model"],
                        label=e["rule"],
                        severity=e["severity"],
                        id=e["id"],
                    )
                    for e in events
                ]
                + await rebaselines,
                key=lambda e: e.ts,
            ),
        )

    async def _rollups(self, sql: str, args: tuple[object, ...], hourly: bool) -> list[Record]:
        """Rows of a query over the minute rollups, or over :data:`SERIES_HOURS` (``hourly``)."""
        if not hourly:
            return await self.store.pool.fetch(sql, *args)
        # Planned for its values each time: from its sixth run on a connection (asyncpg
        # prepares each statement once) Postgres may keep a generic plan, which for this
        # union of the hour rows and the unfolded minutes took 2.5x to 25x the time
        # (bench/compare_bench.py's store: 30 days by model 17 ms, generic 44 to 388 ms).
        async with self.store.pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            return await conn.fetch(sql, *args)

    async def rebaselines(
        self, models: list[tuple[str, str]], start: datetime, end: datetime
    ) -> list[ChartEvent]:
        """Re-baselines started within the window, one mark per model and re-baseline (a model's
        re-baseline restarts all its charts at once: their marks within a minute of each other,
        by the same person for the same reason, are one).

        From ``baseline_history`` (every baseline the API saw the engine freeze) and the engine's
        chart records (each chart's current baseline, for one the history has not recorded yet).
        """
        current = asyncio.gather(
            *(self.store.charts.list(ChartFilter(provider=p, model=m)) for p, m in models)
        )
        try:
            rows = await self.store.pool.fetch(
                """SELECT provider, model, number, started_at, created_by, reason
                   FROM baseline_history
                   WHERE number > 0 AND started_at >= $1 AND started_at < $2
                     AND (provider, model) IN (SELECT * FROM unnest($3::text[], $4::text[]))
                   ORDER BY started_at LIMIT 2000""",
                start,
                end,
                [p for p, _ in models],
                [m for _, m in models],
            )
        except BaseException:
            current.cancel()
            raise
        seen = [
            (r["provider"], r["model"], r["number"], r["started_at"], r["created_by"], r["reason"])
            for r in rows
        ]
        for chunk in await current:
            for rec in chunk:
                b = rec.view.baseline if rec.view else None
                at = b.started_at if b is not None else None
                if b is not None and b.number > 0 and at is not None and start <= at < end:
                    seen.append((rec.meta.provider, rec.meta.model, b.number, at, b.created_by, b.reason))
        marks: list[ChartEvent] = []
        last: dict[tuple[str, str, str, str], datetime] = {}
        for provider, model, number, started, by, reason in sorted(seen, key=lambda x: x[3]):
            who = (provider, model, by, reason)
            if who in last and started - last[who] < REBASELINE_GROUP:
                continue
            last[who] = started
            marks.append(
                ChartEvent(
                    ts=started,
                    kind="rebaseline",
                    provider=provider,
                    model=model,
                    label=f"re-baseline #{number} by {by}: {reason}",
                )
            )
        return marks

    async def hosts(self, models: list[tuple[str, str]], start: datetime, end: datetime) -> set[str]:
        # By time first (telemetry_ts_idx): a maintenance occurrence is hours, the models' whole
        # history (the chart index's prefix) may be weeks.
        rows = await self.store.pool.fetch(
            """SELECT DISTINCT host FROM telemetry
               WHERE ts >= $1 AND ts < $2
                 AND (provider, model) IN (SELECT * FROM unnest($3::text[], $4::text[]))""",
            start,
            end,
            [p for p, _ in models],
            [m for _, m in models],
        )
        return {r["host"] for r in rows}

    async def availability(
        self, provider: str, model: str, hours: float, end: datetime | None = None
    ) -> AvailabilityHistory:
        end = end or datetime.now(UTC)
        start = end - timedelta(hours=hours)
        bucket_s = await self.bucket_s([provider], [model], hours, start, end)
        # Buckets of whole hours from the hourly rollups, as the comparison's: the minutes of a
        # long window may be gone (LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS).
        hourly = bucket_s % 3600 == 0
        table, column = (SERIES_HOURS, "hour") if hourly else ("telemetry_minute", "minute")
        rows = await self._rollups(
            f"""SELECT t.target, date_bin(make_interval(secs => $3), t.{column}, 'epoch') AS bucket,
                      sum(t.n) AS n, sum(t.n_ok) AS ok
               FROM unnest($4::text[], $5::text[]) AS m(provider, model)
               JOIN {table} t ON t.provider = m.provider AND t.model = m.model
               WHERE t.{column} >= $1 AND t.{column} < $2 AND t.{PROBES_SQL}
               GROUP BY 1, 2 ORDER BY 1, 2""",
            (start - timedelta(seconds=bucket_s), end, bucket_s, [provider], [model]),
            hourly,
        )
        lines: dict[str, list[AvailabilityBucket]] = {}
        for r in rows:
            if r["bucket"] + timedelta(seconds=bucket_s) <= start:
                continue
            lines.setdefault(r["target"], []).append(
                AvailabilityBucket(ts=r["bucket"], probes=int(r["n"]), ok=int(r["ok"]))
            )
        return AvailabilityHistory(
            provider=provider,
            model=model,
            hours=hours,
            start=start,
            end=end,
            bucket_s=bucket_s,
            lines=[AvailabilityLine(t, b) for t, b in sorted(lines.items())],
        )

    async def rule_counts(
        self, start: datetime, end: datetime, provider: str | None = None, model: str | None = None
    ) -> list[RuleCount]:
        rows = await self.store.pool.fetch(
            """SELECT rule, severity, count(*) AS n FROM violations
               WHERE ts >= $1 AND ts < $2 AND ($3::text IS NULL OR provider = $3)
                 AND ($4::text IS NULL OR model = $4)
               GROUP BY 1, 2
               ORDER BY array_position(ARRAY['critical', 'warning', 'info'], severity), 3 DESC, 1""",
            start,
            end,
            provider,
            model,
        )
        return [RuleCount(r["rule"], r["severity"], int(r["n"])) for r in rows]
