"""CSV exports, streamed from a server-side cursor (no size limit, constant memory)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from llmscope.api.persister import TELEMETRY_COLUMNS
from llmscope.api.routes.fields import Instant
from llmscope.api.runtime import Runtime
from llmscope.proto.charts import AVAILABILITY
from llmscope.web.data import METRIC_UNITS, failed_probes_text

VIOLATION_COLUMNS = (
    "id", "episode_id", "ts", "provider", "model", "target", "host", "prompt_id", "metric", "chart",
    "rule", "rule_name", "severity", "value", "statistic", "deviation_sigma", "transform", "center",
    "sigma", "ucl", "lcl", "baseline_id", "baseline_n", "cleared_at", "acknowledged_by",
    "acknowledged_at", "resolved_by", "resolved_at", "note",
)  # fmt: skip
VALUE_TEXT = "value_text"
"""Added after the stored columns (a reader by position keeps its columns): the value as the pages
say it. An availability chart's ``value`` is a bare count of failed probes that AVAILABILITY
counts as a run ("4 failed probes in a row") and ERROR_RATE within its window ("10 failed probes
in the last 50"); other metrics' value with its unit."""


def value_text(row: asyncpg.Record) -> str:
    """A violation row's value in the pages' words (``VALUE_TEXT``)."""
    value, metric = row["value"], row["metric"]
    if value is None:
        return ""
    if metric == AVAILABILITY:
        return failed_probes_text(value, row["rule"] or "", row["rule_name"] or "")
    unit = METRIC_UNITS.get(metric, "")
    return f"{value:.1f} {unit}" if unit else f"{value:g}"


MAX_HOURS = 24 * 365 * 100
"""A window longer than a century is a mistake (and past ``datetime``'s range): 422, not 500."""


def _filters(
    provider: str | None, model: str | None, start: datetime, end: datetime
) -> tuple[str, list[Any]]:
    clauses: list[str] = ["ts >= $1", "ts < $2"]
    args: list[Any] = [start, end]
    for column, value in (("provider", provider), ("model", model)):
        if value:
            args.append(value)
            clauses.append(f"{column} = ${len(args)}")
    return " AND ".join(clauses), args


def _csv(
    rt: Runtime,
    sql: str,
    args: Sequence[Any],
    columns: Sequence[str],
    derived: Sequence[tuple[str, Callable[[asyncpg.Record], str]]] = (),
) -> AsyncIterator[bytes]:
    """The rows of ``sql`` (``columns``), then per row each ``derived`` column computed from it."""

    async def rows() -> AsyncIterator[bytes]:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([*columns, *(name for name, _ in derived)])
        count = 0
        async for row in rt.store.stream_rows(sql, *args):
            writer.writerow(
                [v.isoformat() if isinstance(v, datetime) else ("" if v is None else v) for v in row]
                + [derive(row) for _, derive in derived]
            )
            count += 1
            if count % 500 == 0:
                yield buf.getvalue().encode()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue().encode()

    return rows()


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(prefix="/api/export", tags=["export"])

    def window(since: datetime | None, until: datetime | None, hours: float) -> tuple[datetime, datetime]:
        end = until or datetime.now(UTC)
        return since or end - timedelta(hours=hours), end

    @api.get("/violations.csv", response_class=StreamingResponse)
    async def violations_csv(
        provider: str | None = None,
        model: str | None = None,
        since: Instant | None = None,
        until: Instant | None = None,
        hours: Annotated[float, Query(gt=0, le=MAX_HOURS)] = 24 * 365,
    ) -> StreamingResponse:
        """Violation episodes in the window (default: the last year), oldest first; the last
        column, ``value_text``, is the value as the pages say it."""
        where, args = _filters(provider, model, *window(since, until, hours))
        sql = f"SELECT {', '.join(VIOLATION_COLUMNS)} FROM violations WHERE {where} ORDER BY ts, id"
        return StreamingResponse(
            _csv(rt, sql, args, VIOLATION_COLUMNS, [(VALUE_TEXT, value_text)]),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="violations.csv"'},
        )

    @api.get("/telemetry.csv", response_class=StreamingResponse)
    async def telemetry_csv(
        provider: str | None = None,
        model: str | None = None,
        since: Instant | None = None,
        until: Instant | None = None,
        hours: Annotated[float, Query(gt=0, le=MAX_HOURS)] = 24,
    ) -> StreamingResponse:
        """Raw probes in the window (default: the last 24 h), oldest first."""
        where, args = _filters(provider, model, *window(since, until, hours))
        sql = f"SELECT {', '.join(TELEMETRY_COLUMNS)} FROM telemetry WHERE {where} ORDER BY ts, id"
        return StreamingResponse(
            _csv(rt, sql, args, TELEMETRY_COLUMNS),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="telemetry.csv"'},
        )

    return api
