"""What the alerter reads from other services' tables to describe a violation: the API's settings,
the telemetry around a violation, an outage's failed probes and the points of an incident. Each
read answers empty when the table is not there (the alerter runs without the API) or fails."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from llmscope.alerter.analysis import TelemetryPoint
from llmscope.alerter.messages import FailedProbe, Outage, is_outage, since
from llmscope.alerter.model import Alert
from llmscope.alerter.notifiers.base import ContextPoint
from llmscope.alerter.store_base import StoreBase
from llmscope.proto.telemetry import NUMERIC_METRICS
from llmscope.proto.violation import ViolationEvent

# Numeric telemetry columns a violation's metric may name (the context table reads one of them).
TELEMETRY_METRICS = frozenset(NUMERIC_METRICS)
CONTEXT_POINTS = 10


class ContextStore(StoreBase):
    """Reads of the API's tables that describe a violation."""

    async def read_settings(self) -> dict[str, object]:
        """The API's ``settings`` table as key -> value; empty when the table is not there."""
        async with self.pool.acquire() as conn:
            if await conn.fetchval("SELECT to_regclass('settings')") is None:
                return {}
            try:
                rows = await conn.fetch("SELECT key, value FROM settings")
            except asyncpg.PostgresError as exc:
                self._log.warning("cannot read the API's settings table", error=str(exc))
                return {}
        return {r["key"]: r["value"] for r in rows}

    async def context_for(self, events: Sequence[ViolationEvent]) -> dict[str, tuple[ContextPoint, ...]]:
        """+/-10 telemetry points around each violation from the API's table; {} without it."""
        out: dict[str, tuple[ContextPoint, ...]] = {}
        async with self.pool.acquire() as conn:
            if await conn.fetchval("SELECT to_regclass('telemetry')") is None:
                return out
            for ev in events:
                if ev.metric not in TELEMETRY_METRICS:
                    continue
                pivot = max(ev.point_ts) if ev.point_ts else ev.ts
                col = ev.metric  # whitelisted above: safe to splice
                try:
                    # Charts are per target (endpoint); a violation without one (older engines)
                    # reads every target's points, as before.
                    series = "provider = $1 AND model = $2 AND prompt_id = $3 AND ($7 = '' OR target = $7)"
                    rows = await conn.fetch(
                        f"(SELECT id, ts, {col}::float8 AS value, status FROM telemetry"
                        f"  WHERE {series} AND ts <= $4 ORDER BY ts DESC LIMIT $5)"
                        f" UNION ALL (SELECT id, ts, {col}::float8 AS value, status FROM telemetry"
                        f"  WHERE {series} AND ts > $4 ORDER BY ts LIMIT $6)",
                        ev.provider,
                        ev.model,
                        ev.prompt_id,
                        pivot,
                        CONTEXT_POINTS + 1,
                        CONTEXT_POINTS,
                        ev.target,
                    )
                except asyncpg.PostgresError as exc:
                    self._log.warning("cannot read telemetry context", error=str(exc))
                    return out
                pattern = set(ev.point_ids)
                points = sorted(rows, key=lambda r: r["ts"])
                out[ev.episode_id] = tuple(
                    ContextPoint(r["ts"], r["value"], r["id"], r["id"] in pattern, r["status"])
                    for r in points
                )
        return out

    async def outages_for(
        self, alerts: Sequence[Alert], until: datetime, recent: int = 3
    ) -> dict[str, Outage]:
        """For availability violations: the target's failed probes since its last success up to
        ``until``, from the API's telemetry table (read as context_for does; {} without it)."""
        out: dict[str, Outage] = {}
        wanted = [a for a in alerts if is_outage(a.event)]
        if not wanted:
            return out
        series = "provider = $1 AND model = $2 AND ($3 = '' OR target = $3)"
        async with self.pool.acquire() as conn:
            if await conn.fetchval("SELECT to_regclass('telemetry')") is None:
                return out
            for alert in wanted:
                ev = alert.event
                # A cleared outage is described up to its clear, an open one up to now.
                end = alert.cleared.ts if alert.cleared is not None else until
                try:
                    last_ok = await conn.fetchval(
                        f"SELECT max(ts) FROM telemetry WHERE {series} AND status = 'ok' AND ts <= $4",
                        ev.provider,
                        ev.model,
                        ev.target,
                        since(ev),
                    )
                    after = last_ok or datetime.min.replace(tzinfo=end.tzinfo)
                    stats = await conn.fetchrow(
                        f"SELECT count(*) AS n, min(ts) AS first FROM telemetry WHERE {series}"
                        " AND status <> 'ok' AND ts > $4 AND ts <= $5",
                        ev.provider,
                        ev.model,
                        ev.target,
                        after,
                        end,
                    )
                    rows = await conn.fetch(
                        f"SELECT ts, status, http_status, error FROM telemetry WHERE {series}"
                        " AND status <> 'ok' AND ts > $4 AND ts <= $5 ORDER BY ts DESC LIMIT $6",
                        ev.provider,
                        ev.model,
                        ev.target,
                        after,
                        end,
                        recent,
                    )
                except asyncpg.PostgresError as exc:
                    self._log.warning("cannot read failed probes", error=str(exc))
                    return out
                assert stats is not None
                out[ev.episode_id] = Outage(
                    count=int(stats["n"]),
                    since=stats["first"],
                    last_success=last_ok,
                    recent=tuple(
                        FailedProbe(r["ts"], r["status"], r["http_status"], r["error"]) for r in rows
                    ),
                )
        return out

    async def telemetry_points(self, events: Sequence[ViolationEvent]) -> list[TelemetryPoint]:
        ids = sorted({pid for ev in events for pid in ev.point_ids})
        async with self.pool.acquire() as conn:
            if not ids or await conn.fetchval("SELECT to_regclass('telemetry')") is None:
                return []
            try:
                rows = await conn.fetch(
                    "SELECT id, ts, model, latency_ms, ttft_ms, tokens_per_s, status,"
                    " coalesce(prompt_id, '') AS prompt_id FROM telemetry WHERE id = ANY($1)",
                    ids,
                )
            except asyncpg.PostgresError:
                return []
        return [
            TelemetryPoint(
                r["id"],
                r["ts"],
                r["model"],
                r["latency_ms"],
                r["ttft_ms"],
                r["tokens_per_s"],
                r["status"],
                r["prompt_id"],
            )
            for r in rows
        ]
