"""Violations: the filtered, paged list, one violation with the probes around it, and people's
acknowledgements and resolutions (told to the alerter over the bus)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from llmscope.api.chart_store import METRIC_COLUMNS
from llmscope.api.cursors import decode_cursor, encode_cursor
from llmscope.api.store_base import StoreBase
from llmscope.proto.charts import AVAILABILITY
from llmscope.web.data import (
    ContextPoint,
    Violation,
    ViolationDetail,
    ViolationFilter,
    ViolationMark,
    ViolationPage,
)

# Probes around a violation: its table shows CONTEXT on each side, its mini-chart NEARBY.
CONTEXT = 10
NEARBY = 30
MARK_SLACK = timedelta(minutes=5)
"""How long after its trigger probe a violation may be stamped (the engine stamps the probe's time)."""


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
    if flt.until:
        add("ts <= {}", flt.until)
    if flt.cursor:
        cts, cid = decode_cursor(flt.cursor)
        args += [cts, cid]
        clauses.append(f"(ts, id) < (${len(args) - 1}, ${len(args)})")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


class ViolationStore(StoreBase):
    """The violations table: read by filter or id, acknowledged and resolved."""

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
            marks = await self._marks(conn, v, rows)
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
        return ViolationDetail(violation=v, context=context, nearby=nearby, marks=marks)

    @staticmethod
    async def _marks(conn: Any, v: Violation, probes: Sequence[asyncpg.Record]) -> list[ViolationMark]:
        """The violations of ``v``'s chart triggered by one of ``probes`` (the mini-chart's): the
        rules that fired at one probe are drawn as one mark naming them all."""
        if not probes:
            return []
        ids = {r["id"] for r in probes}
        rows = await conn.fetch(
            """SELECT id, ts, value, rule, severity, cleared_at, point_ids[cardinality(point_ids)] AS trigger
               FROM violations
               WHERE provider = $1 AND model = $2 AND prompt_id = $3 AND metric = $4 AND target = $5
                 AND ts >= $6 AND ts <= $7 AND cardinality(point_ids) > 0""",
            v.provider,
            v.model,
            v.prompt_id,
            v.metric,
            v.target,
            min(r["ts"] for r in probes),
            # A violation is stamped when its probe is charted, a moment after the probe.
            max(r["ts"] for r in probes) + MARK_SLACK,
        )
        return [
            ViolationMark(
                id=r["id"],
                ts=r["ts"],
                value=r["value"],
                rule=r["rule"],
                severity=r["severity"],
                state="cleared" if r["cleared_at"] else "open",
                point_id=r["trigger"],
            )
            for r in rows
            if r["trigger"] in ids
        ]

    async def _act(self, sql: str, violation_id: str, by: str, note: str | None) -> Violation | None:
        """Record a person's action (``sql`` takes id, name, note) and announce it to the outbox."""
        row = await self.pool.fetchrow(sql, violation_id, by, note)
        if row is None:
            return None
        await self.actions.announce(row)
        return violation_from_row(row)

    async def acknowledge(self, violation_id: str, by: str, note: str | None) -> Violation | None:
        return await self._act(
            """UPDATE violations SET
                   acknowledged_by = coalesce(acknowledged_by, $2),
                   acknowledged_at = coalesce(acknowledged_at, now()),
                   note = coalesce($3, note),
                   -- Counted only when the state changes: a repeat is the same event (its id
                   -- too), a duplicate the stream drops.
                   action_seq = action_seq
                       + (acknowledged_at IS NULL OR note IS DISTINCT FROM coalesce($3, note))::int,
                   action_at = CASE WHEN acknowledged_at IS NULL OR note IS DISTINCT FROM coalesce($3, note)
                                    THEN now() ELSE action_at END,
                   action_pending = true
               WHERE id = $1 RETURNING *""",
            violation_id,
            by,
            note,
        )

    async def resolve(self, violation_id: str, by: str, note: str | None) -> Violation | None:
        # Resolving also acknowledges: nobody should be reminded of a violation someone resolved.
        return await self._act(
            """UPDATE violations SET
                   resolved_by = coalesce(resolved_by, $2),
                   resolved_at = coalesce(resolved_at, now()),
                   acknowledged_by = coalesce(acknowledged_by, $2),
                   acknowledged_at = coalesce(acknowledged_at, now()),
                   note = coalesce($3, note),
                   action_seq = action_seq
                       + (resolved_at IS NULL OR note IS DISTINCT FROM coalesce($3, note))::int,
                   action_at = CASE WHEN resolved_at IS NULL OR note IS DISTINCT FROM coalesce($3, note)
                                    THEN now() ELSE action_at END,
                   action_pending = true
               WHERE id = $1 RETURNING *""",
            violation_id,
            by,
            note,
        )
