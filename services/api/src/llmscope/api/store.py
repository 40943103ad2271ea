"""Queries over the store; implements the dashboard's :class:`~llmscope.web.data.DashboardData`.

Charts read raw probes for short windows and per-minute rollups, regrouped into at most
~360 buckets, for long ones (PERFORMANCE.md: a 24 h chart never reads 43,200 rows).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from llmscope.api import false_alarms, health_overview, known_settings, ticket_settings
from llmscope.api.charts import ChartViews
from llmscope.api.settings_mirror import SettingsMirror
from llmscope.api.switches import ModelSwitchWriter, SwitchesUnavailable
from llmscope.api.violation_actions import ViolationActions
from llmscope.config.outbound import DestinationRefused, OutboundPolicy
from llmscope.proto.charts import AVAILABILITY, ChartRecord, ChartView, chart_key
from llmscope.web.data import (
    BaselineInfo,
    ChartData,
    ChartPoint,
    ChartQuery,
    ContextPoint,
    FalseAlarmBudget,
    HealthOverview,
    Limits,
    ModelInfo,
    ModelRebaselineResult,
    OpenEpisode,
    Overview,
    RebaselineMark,
    RebaselineResult,
    Series,
    SettingError,
    SettingErrors,
    SettingInfo,
    Sparkline,
    Violation,
    ViolationDetail,
    ViolationFilter,
    ViolationMark,
    ViolationPage,
)

RAW_MAX_HOURS = 2.0
MAX_BUCKETS = 360
RAW_POINT_CAP = 20_000
# Violation marks of one chart read at most: past it, the most severe and then the newest. The
# dashboard draws fewer (``llmscope.web.svg.MARKS_DRAWN``), and ``GET /api/stats/spc`` answers
# with as many unless its ``marks`` asks for more, up to this.
MARKS_BUDGET = 1000
SEVERITY_ORDER = ("critical", "warning", "info")
# A sparkline is a glance: about this many buckets over any window.
OVERVIEW_BUCKETS = 60
# Probe spacing for "one false alarm per ..." is the median gap over this many recent probes.
SPACING_POINTS = 200
# Probes around a violation: its table shows CONTEXT on each side, its mini-chart NEARBY.
CONTEXT = 10
NEARBY = 30

# metric -> (telemetry column, rollup prefix, charted on the log scale)
METRIC_COLUMNS: dict[str, tuple[str, str, bool]] = {
    "latency_ms": ("latency_ms", "latency", True),
    "ttft_ms": ("ttft_ms", "ttft", True),
    "tokens_per_s": ("tokens_per_s", "tps", False),
}


class NotReady(RuntimeError):
    """The database pool is not open yet (the app is starting or stopping)."""


class BadCursor(ValueError):
    """A pagination cursor this API did not issue."""


CURSOR_PATTERN = r"^[0-9]{1,16}~[^\x00]*$"
"""A page cursor: the last item's time in microseconds since the epoch, ``~``, its id. Not
opaque, so the document can state exactly which strings are cursors (issue 9: a base64 cursor
of any string was "valid" to the schema and refused by the API)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(ts: datetime, vid: str) -> str:
    return f"{(ts - _EPOCH) // timedelta(microseconds=1)}~{vid}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    micros, sep, vid = cursor.partition("~")
    if not sep or not micros.isascii() or not micros.isdigit() or len(micros) > 16:
        raise BadCursor("invalid cursor: pass back a `next_cursor` as it was given")
    return _EPOCH + timedelta(microseconds=int(micros)), vid


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


def _parse_ts(values: Any) -> list[datetime]:
    out = []
    for v in values or ():
        try:
            out.append(datetime.fromisoformat(str(v)))
        except ValueError:
            continue
    return out


def violation_from_row(row: asyncpg.Record) -> Violation:
    event: dict[str, Any] = row["event"] or {}
    system = event.get("system") or {}
    return Violation(
        id=row["id"],
        episode_id=row["episode_id"],
        ts=row["ts"],
        provider=row["provider"],
        model=row["model"],
        target=row["target"],
        host=row["host"],
        prompt_id=row["prompt_id"],
        metric=row["metric"],
        chart=row["chart"],
        chart_key=row["chart_key"],
        rule=row["rule"],
        rule_name=row["rule_name"],
        severity=row["severity"],
        value=row["value"],
        statistic=row["statistic"],
        deviation_sigma=row["deviation_sigma"],
        limits={
            k: row[k]
            for k in (
                "transform",
                "center",
                "sigma",
                "ucl",
                "lcl",
                "zone_a_upper",
                "zone_a_lower",
                "zone_b_upper",
                "zone_b_lower",
            )
        },
        baseline=dict(event.get("baseline") or {"id": row["baseline_id"], "n": row["baseline_n"]}),
        point_ids=list(row["point_ids"]),
        point_values=[float(v) for v in event.get("point_values") or ()],
        point_ts=_parse_ts(event.get("point_ts")),
        system={
            k: system.get(k) for k in ("cpu_percent", "memory_percent", "gpu_percent", "gpu_memory_percent")
        },
        state="cleared" if row["cleared_at"] is not None else "open",
        cleared_at=row["cleared_at"],
        acknowledged_by=row["acknowledged_by"],
        acknowledged_at=row["acknowledged_at"],
        resolved_by=row["resolved_by"],
        resolved_at=row["resolved_at"],
        note=row["note"],
        system_scope="target" if system.get("scope") == "target" else "prober",
        detail=str(event.get("detail") or ""),
        direction=str(event.get("direction") or ""),
        better=bool(event.get("better")),
    )


def _model_from_row(row: asyncpg.Record) -> ModelInfo:
    return ModelInfo(
        provider=row["provider"],
        model=row["model"],
        enabled=row["enabled"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        target=row["target"],
        host=row["host"],
        last_status=row["last_status"],
        cpu_percent=row["cpu_percent"],
        memory_percent=row["memory_percent"],
        gpu_percent=row["gpu_percent"],
        gpu_memory_percent=row["gpu_memory_percent"],
    )


def _where(flt: ViolationFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []

    def add(sql: str, value: Any) -> None:
        args.append(value)
        clauses.append(sql.format(f"${len(args)}"))

    if flt.provider:
        add("provider = {}", flt.provider)
    if flt.model:
        add("model = {}", flt.model)
    if flt.rule:
        add("rule = {}", flt.rule)
    if flt.severity:
        add("severity = {}", flt.severity)
    if flt.severities:
        add("severity = ANY({})", list(flt.severities))
    if flt.acknowledged is True:
        clauses.append("acknowledged_at IS NOT NULL")
    elif flt.acknowledged is False:
        clauses.append("acknowledged_at IS NULL")
    if flt.state == "open":
        clauses.append("cleared_at IS NULL")
    elif flt.state == "cleared":
        clauses.append("cleared_at IS NOT NULL")
    if flt.since:
        add("ts >= {}", flt.since)
    if flt.cursor:
        cts, cid = decode_cursor(flt.cursor)
        args += [cts, cid]
        clauses.append(f"(ts, id) < (${len(args) - 1}, ${len(args)})")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


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


class Store:
    """The API's data access over an asyncpg pool."""

    def __init__(
        self,
        pool: asyncpg.Pool | None = None,
        *,
        charts: ChartViews | None = None,
        switches: ModelSwitchWriter | None = None,
        outbound: OutboundPolicy | None = None,
        actions: ViolationActions | None = None,
        settings_mirror: SettingsMirror | None = None,
    ) -> None:
        self._pool = pool
        self.charts = charts or ChartViews()
        self.switches = switches or ModelSwitchWriter()
        self.outbound = outbound or OutboundPolicy()
        # People's actions on violations and the settings, told to the alerter over the bus.
        self.actions = actions or ViolationActions(lambda: self._pool)
        self.settings_mirror = settings_mirror or SettingsMirror(lambda: self._pool)

    def attach(self, pool: asyncpg.Pool | None) -> None:
        """Set (or clear) the pool; the app opens it in its lifespan, after routes exist."""
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise NotReady("database pool is not open")
        return self._pool

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    # ---- charts ----------------------------------------------------------------------------
    async def series(self) -> list[Series]:
        """The probe charts' subgroups. Real traffic (prompt ``traffic:<operation>``) is charted per
        minute, on the dashboard's Traffic page, not request by request here."""
        rows = await self.pool.fetch(
            """SELECT provider, model, prompt_id, last_seen FROM series
               WHERE prompt_id NOT LIKE 'traffic:%' ORDER BY provider, model, prompt_id"""
        )
        return [Series(r["provider"], r["model"], r["prompt_id"], r["last_seen"]) for r in rows]

    async def targets(self, provider: str, model: str, prompt_id: str) -> list[str]:
        """Targets that served this subgroup, most recently probed first."""
        rows = await self.pool.fetch(
            """SELECT target FROM series_targets WHERE provider = $1 AND model = $2 AND prompt_id = $3
               ORDER BY last_seen DESC, target""",
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
                rows = await conn.fetch(
                    f"""SELECT to_timestamp(floor(extract(epoch FROM minute) / $5) * $5) AS bucket,
                               sum({prefix}_n) AS n, min({prefix}_min) AS lo, max({prefix}_max) AS hi,
                               sum({prefix}_sum) AS s, sum({prefix}_logsum) AS ls,
                               coalesce(sum(n - n_ok) FILTER (WHERE minute >= $6), 0) AS failed
                        FROM telemetry_minute
                        WHERE provider = $1 AND model = $2 AND prompt_id = $3 AND minute >= $4
                          {tcond.format(7)}
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

    # ---- violations ------------------------------------------------------------------------
    async def violations(self, flt: ViolationFilter) -> ViolationPage:
        where, args = _where(flt)
        limit = max(1, min(flt.limit, 1000))
        rows = await self.pool.fetch(
            f"SELECT * FROM violations{where} ORDER BY ts DESC, id DESC LIMIT {limit + 1}", *args
        )
        items = [violation_from_row(r) for r in rows[:limit]]
        next_cursor = encode_cursor(items[-1].ts, items[-1].id) if len(rows) > limit else None
        return ViolationPage(items=items, next_cursor=next_cursor)

    async def violation(self, violation_id: str) -> ViolationDetail | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM violations WHERE id = $1 OR cleared_id = $1 LIMIT 1", violation_id
            )
            if row is None:
                return None
            v = violation_from_row(row)
            trigger_id = v.point_ids[-1] if v.point_ids else None
            anchor = v.ts
            if trigger_id is not None:
                found = await conn.fetchval("SELECT ts FROM telemetry WHERE id = $1", trigger_id)
                anchor = found or (v.point_ts[-1] if v.point_ts else v.ts)
            if v.metric == AVAILABILITY:
                # An availability chart spans the target's prompts (its violations have none):
                # the probes around it are the target's, failed ones with their error.
                where = "provider = $1 AND model = $2 AND ($3 = '' OR target = $3)"
                scope = v.target
            else:
                where = "provider = $1 AND model = $2 AND prompt_id = $3"
                scope = v.prompt_id
            cols = "id, ts, status, error, prompt_id, latency_ms, ttft_ms, tokens_per_s"
            rows = await conn.fetch(
                f"""(SELECT {cols} FROM telemetry WHERE {where} AND ts <= $4
                    ORDER BY ts DESC LIMIT {NEARBY + 1})
                   UNION ALL
                   (SELECT {cols} FROM telemetry WHERE {where} AND ts > $4
                    ORDER BY ts LIMIT {NEARBY})""",
                v.provider,
                v.model,
                scope,
                anchor,
            )
        pattern = set(v.point_ids)
        column = METRIC_COLUMNS.get(v.metric, (None, "", False))[0]
        nearby = [
            ContextPoint(
                id=r["id"],
                ts=r["ts"],
                status=r["status"],
                value=r[column] if column else None,
                latency_ms=r["latency_ms"],
                ttft_ms=r["ttft_ms"],
                tokens_per_s=r["tokens_per_s"],
                in_pattern=r["id"] in pattern,
                trigger=r["id"] == trigger_id,
                error=r["error"],
                prompt_id=r["prompt_id"],
            )
            for r in sorted(rows, key=lambda r: (r["ts"], r["id"]))
        ]
        # The table shows ±CONTEXT of them around the anchor (the last probe at or before it).
        at = sum(1 for p in nearby if p.ts <= anchor) - 1
        context = nearby[max(0, at - CONTEXT) : at + CONTEXT + 1]
        return ViolationDetail(violation=v, context=context, nearby=nearby)

    async def acknowledge(self, violation_id: str, by: str, note: str | None) -> Violation | None:
        row = await self.pool.fetchrow(
            """UPDATE violations SET
                   acknowledged_by = coalesce(acknowledged_by, $2),
                   acknowledged_at = coalesce(acknowledged_at, now()),
                   note = coalesce($3, note),
                   -- Counted only when the state changes: a repeat is the same event (its id
                   -- too), a duplicate the stream drops.
                   action_seq = action_seq
                       + (acknowledged_at IS NULL OR note IS DISTINCT FROM coalesce($3, note))::int,
                   action_pending = true
               WHERE id = $1 RETURNING *""",
            violation_id,
            by,
            note,
        )
        if row is None:
            return None
        await self.actions.announce(row)
        return violation_from_row(row)

    async def resolve(self, violation_id: str, by: str, note: str | None) -> Violation | None:
        # Resolving also acknowledges: nobody should be reminded of a violation someone resolved.
        row = await self.pool.fetchrow(
            """UPDATE violations SET
                   resolved_by = coalesce(resolved_by, $2),
                   resolved_at = coalesce(resolved_at, now()),
                   acknowledged_by = coalesce(acknowledged_by, $2),
                   acknowledged_at = coalesce(acknowledged_at, now()),
                   note = coalesce($3, note),
                   action_seq = action_seq
                       + (resolved_at IS NULL OR note IS DISTINCT FROM coalesce($3, note))::int,
                   action_pending = true
               WHERE id = $1 RETURNING *""",
            violation_id,
            by,
            note,
        )
        if row is None:
            return None
        await self.actions.announce(row)
        return violation_from_row(row)

    # ---- overview --------------------------------------------------------------------------
    async def overview(self, hours: float, now: datetime | None = None) -> Overview:
        """Each model's latency sparkline from the rollups (one query for all models), the
        engine's limits of those charts (one KV read each, concurrently) and open criticals.

        A model's sparkline is the chart the dashboard opens for it: its first prompt, on the
        target probed last.
        """
        end = now or datetime.now(UTC)
        start = end - timedelta(hours=hours)
        bucket_s = max(60, math.ceil(hours * 3600 / OVERVIEW_BUCKETS / 60) * 60)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT provider, model, prompt_id, target,
                          to_timestamp(floor(extract(epoch FROM minute) / $2) * $2) AS bucket,
                          sum(latency_n) AS n, sum(latency_logsum) AS ls,
                          min(latency_min) AS lo, max(latency_max) AS hi
                   FROM telemetry_minute WHERE minute >= $1
                   GROUP BY 1, 2, 3, 4, 5 HAVING sum(latency_n) > 0 ORDER BY 5""",
                start - timedelta(seconds=bucket_s),
                bucket_s,
            )
            episodes = await conn.fetch(
                """SELECT id, ts, provider, model, target, prompt_id, metric, rule, severity,
                          event->>'detail' AS detail
                   FROM violations
                   WHERE cleared_at IS NULL AND resolved_at IS NULL AND severity = 'critical'
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

    # ---- models and system -----------------------------------------------------------------
    async def models(self) -> list[ModelInfo]:
        rows = await self.pool.fetch("SELECT * FROM models ORDER BY provider, model")
        return [_model_from_row(r) for r in rows]

    async def model_health(self, hours: float, now: datetime | None = None) -> HealthOverview:
        """The overview from Postgres, each target with its availability chart from the engine."""
        overview = await health_overview.model_health(self.pool, hours, now)
        targets = sorted({(m.provider, m.model, m.target) for m in overview.models})
        keys = [chart_key(provider, model, target, "*", AVAILABILITY) for provider, model, target in targets]
        records: dict[tuple[str, str, str], ChartRecord | None] = dict(
            zip(targets, await self.charts.get_many(keys), strict=True)
        )
        rows = []
        for row in overview.models:
            record = records.get((row.provider, row.model, row.target))
            rows.append(dataclasses.replace(row, availability=record.availability if record else None))
        return dataclasses.replace(overview, models=rows)

    async def set_model_enabled(self, provider: str, model: str, enabled: bool) -> ModelInfo | None:
        """Record the switch and tell the probers; neither happens unless both can."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """UPDATE models SET enabled = $3, updated_at = now()
                   WHERE provider = $1 AND model = $2 RETURNING *""",
                provider,
                model,
                enabled,
            )
            if row is None:
                return None
            try:
                await self.switches.put(row["provider"], model, enabled)
            except SwitchesUnavailable as exc:
                raise NotReady(str(exc)) from exc
        return _model_from_row(row)

    # ---- settings --------------------------------------------------------------------------
    async def settings(self) -> list[SettingInfo]:
        rows = {r["key"]: r for r in await self.pool.fetch("SELECT * FROM settings")}
        out = []
        for spec in known_settings.SPECS:
            row = rows.get(spec.key)
            value = spec.default if row is None else row["value"]
            out.append(
                SettingInfo(
                    key=spec.key,
                    kind=spec.kind,
                    description=spec.description,
                    secret=spec.secret,
                    is_set=row is not None and value not in ("", None),
                    value=None if spec.secret else value,
                    default=None if spec.secret else spec.default,
                    choices=list(spec.choices),
                    updated_at=None if row is None else row["updated_at"],
                    updated_by=None if row is None else row["updated_by"],
                )
            )
        return out

    async def put_setting(self, key: str, value: object, by: str) -> SettingInfo:
        spec = known_settings.spec(key)
        clean = spec.validate(value)
        await self._check_destination(key, clean)
        for field, message in (await self._ticket_errors({key: clean})).items():
            raise ticket_settings.TicketConflict(field, message)
        await self.pool.execute(
            """INSERT INTO settings (key, value, updated_at, updated_by) VALUES ($1, $2, now(), $3)
               ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now(),
                   updated_by = EXCLUDED.updated_by""",
            key,
            clean,
            by,
        )
        await self.settings_mirror.sync()
        return next(s for s in await self.settings() if s.key == key)

    async def _check_destination(self, key: str, value: object) -> None:
        """A channel URL or SMTP host that reaches a non-public address is refused when saved
        (the alerter checks again at every send and connection: llmscope.config.outbound)."""
        if key not in known_settings.DESTINATIONS or not isinstance(value, str) or not value:
            return
        try:
            if known_settings.DESTINATIONS[key] == "url":
                await self.outbound.check_url(value)
            else:
                await self.outbound.check(value)
        except DestinationRefused as exc:
            raise SettingError(key, str(exc)) from None

    async def _ticket_errors(
        self, changes: Mapping[str, object], removed: Collection[str] = ()
    ) -> dict[str, str]:
        """The ticket settings as they would stand after ``changes`` (and ``removed`` gone),
        checked together."""
        if not any(k.startswith(ticket_settings.PREFIX) for k in (*changes, *removed)):
            return {}
        rows = await self.pool.fetch(
            "SELECT key, value FROM settings WHERE starts_with(key, $1)", ticket_settings.PREFIX
        )
        stored = {r["key"]: r["value"] for r in rows if r["key"] not in removed}
        return ticket_settings.ticket_errors({**stored, **changes})

    async def put_settings(
        self, values: dict[str, object], by: str, remove: Collection[str] = ()
    ) -> list[SettingInfo]:
        """Validate every value first, then store them and delete the stored ``remove`` keys
        (the environment's or the default value applies again) in one transaction: a form
        saves whole."""
        clean: dict[str, object] = {}
        errors: dict[str, str] = {}
        for key in remove:
            if key not in known_settings.BY_KEY:
                errors[key] = "unknown setting"
        for key, value in values.items():
            try:
                clean[key] = known_settings.spec(key).validate(value)
                await self._check_destination(key, clean[key])
            except SettingError as exc:
                errors[key] = exc.message
        if not errors:
            errors = await self._ticket_errors(clean, remove)
        if errors:
            raise SettingErrors(errors)
        async with self.pool.acquire() as conn, conn.transaction():
            if remove:
                await conn.execute("DELETE FROM settings WHERE key = ANY($1::text[])", list(remove))
            for key, value in clean.items():
                await conn.execute(
                    """INSERT INTO settings (key, value, updated_at, updated_by) VALUES ($1, $2, now(), $3)
                       ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now(),
                           updated_by = EXCLUDED.updated_by""",
                    key,
                    value,
                    by,
                )
        await self.settings_mirror.sync()
        return await self.settings()

    # ---- dead letters and exports ----------------------------------------------------------
    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            f"SELECT * FROM dead_letters ORDER BY ts DESC LIMIT {max(1, min(limit, 1000))}"
        )
        return [dict(r) for r in rows]

    async def stream_rows(self, sql: str, *args: Any, prefetch: int = 1000) -> AsyncIterator[asyncpg.Record]:
        """Rows of a query through a server-side cursor, for exports that do not fit in memory."""
        async with self.pool.acquire() as conn, conn.transaction():
            async for row in conn.cursor(sql, *args, prefetch=prefetch):
                yield row
