"""The comparison page (several models on one chart, 1 h to 30 d) and the report (a printable
page and CSV exports of violations and incidents over a window).

The report prints to PDF from the browser (its print stylesheet drops the navigation and keeps
tables whole), and ``/report.pdf`` prints the same page on the server with a headless Chromium
when one is installed (:mod:`llmscope.web.report_pdf`).
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import re
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.params import Depends
from fastapi.responses import HTMLResponse, JSONResponse, Response

from llmscope.config.logs import get_logger
from llmscope.web.alerting import (
    AlerterUnavailable,
    AlertingData,
    Incident,
    IncidentAnalysisInfo,
    IncidentFilter,
)
from llmscope.web.data import HEALTH_MAX_HOURS, METRICS, ChartQuery, DashboardData, Metric, ViolationFilter
from llmscope.web.maintenance_spans import maintenance_spans
from llmscope.web.pages import Pages
from llmscope.web.report_pdf import PdfPrinter, PdfUnavailable
from llmscope.web.svg import MARKS_DRAWN
from llmscope.web.trend_svg import color
from llmscope.web.trends import (
    COMPARE_BY,
    COMPARE_MAX_HOURS,
    COMPARE_WINDOWS_H,
    MAX_COMPARED,
    CompareBy,
    Comparison,
    TrendsData,
    window_label,
)

log = get_logger("llmscope.web.trends")

REPORT_WINDOWS_H: tuple[int, ...] = (24, 168, 720)
REPORT_VIOLATIONS = 500
# Each analysis is one more read of the alerter's tables: the latest incidents' are enough to read.
REPORT_ANALYSES = 20
INCIDENT_COLUMNS = (
    "id", "state", "severity", "title", "provider", "host", "models", "cascade", "violation_count",
    "opened_at", "acknowledged_at", "acknowledged_by", "resolved_at", "resolved_by",
    "seconds_to_acknowledge", "seconds_to_resolve",
)  # fmt: skip


def _split(series: str) -> tuple[str, str] | None:
    provider, sep, model = series.partition("|")
    return (provider, model) if sep and provider and model else None


def _seconds(later: datetime | None, earlier: datetime) -> float | None:
    return None if later is None else (later - earlier).total_seconds()


async def _incidents_since(
    alerting: AlertingData | None, since: datetime, model: str | None
) -> list[Incident]:
    """Every incident opened since ``since`` (all pages of them, newest first)."""
    if alerting is None:
        return []
    found: list[Incident] = []
    cursor: str | None = None
    while True:
        page = await alerting.incidents(IncidentFilter(model=model, since=since, limit=200, cursor=cursor))
        found += page.items
        if not page.next_cursor or len(found) >= 5000:
            return found
        cursor = page.next_cursor


async def _analyses(
    alerting: AlertingData | None, incidents: list[Incident]
) -> dict[str, IncidentAnalysisInfo]:
    """The analysis of each of the latest incidents (by id); one the alerter cannot give is left out."""
    if alerting is None:
        return {}
    latest = sorted(incidents, key=lambda i: i.opened_at, reverse=True)[:REPORT_ANALYSES]
    found = await asyncio.gather(*(alerting.incident(i.id) for i in latest), return_exceptions=True)
    out: dict[str, IncidentAnalysisInfo] = {}
    for incident, detail in zip(latest, found, strict=True):
        if isinstance(detail, BaseException):
            log.warning("incident analysis unavailable", incident=incident.id, error=repr(detail))
        elif detail is not None and detail.analysis is not None:
            out[incident.id] = detail.analysis
    return out


async def with_maintenance(
    query: Awaitable[Comparison], alerting: AlertingData | None, trends: TrendsData
) -> Comparison:
    """The comparison with the maintenance windows of its models (kept by the alerter, asked over
    NATS while Postgres answers); without an answer the chart says none could be drawn."""
    if alerting is None:
        return dataclasses.replace(await query, maintenance_known=False)
    asked = asyncio.ensure_future(alerting.silences(include_expired=True))
    try:
        comparison = await query
    except BaseException:
        asked.cancel()
        raise
    try:
        windows = await asked
    except AlerterUnavailable as exc:
        log.debug("no maintenance windows for the comparison", error=str(exc))
        return dataclasses.replace(comparison, maintenance_known=False)
    models = [(line.provider, line.model) for line in comparison.lines]
    spans = await maintenance_spans(windows, models, comparison.start, comparison.end, trends.hosts)
    return dataclasses.replace(comparison, maintenance=spans)


def add_trend_routes(
    router: APIRouter,
    trends: TrendsData,
    data: DashboardData,
    alerting: AlertingData | None,
    session: Depends,
    pages: Pages,
    printer: PdfPrinter | None = None,
    *,
    script: Depends | None = None,
) -> None:
    """Register /compare and /report behind the session dependency; the downloads
    (``/report.json``, ``/report.pdf``, ``/report/incidents.csv``) behind ``script`` where given
    (a bearer key or the session: login_routes.script_guard); ``printer`` defaults to a Chromium
    on the PATH."""
    download = script or session
    printer = printer or PdfPrinter()

    @router.get("/compare", response_class=HTMLResponse, dependencies=[session])
    async def compare(
        request: Request,
        series: Annotated[list[str] | None, Query()] = None,
        metric: Metric = "latency_ms",
        hours: Annotated[float, Query(gt=0, le=COMPARE_MAX_HOURS)] = 24,
        lines: CompareBy | None = None,
        by: CompareBy | None = None,
    ) -> HTMLResponse:
        """``lines``: one line per model, or per prompt or target of the first model. It was
        ``by``, the name of every "who did this" field, which the remembered name prefills: read
        still, as the fallback, so bookmarks of the old name keep working."""
        by = lines or by or "model"
        known = sorted({(s.provider, s.model) for s in await data.series()})
        chosen = [m for m in (_split(s) for s in series or []) if m is not None and m in known]
        # No choice yet: the first few models, so the page is never an empty chart.
        picked = (chosen or known)[: MAX_COMPARED if by == "model" else 1]
        comparison = await with_maintenance(trends.comparison(picked, metric, hours, by=by), alerting, trends)
        context: dict[str, Any] = {
            "models": known,
            "picked": picked,
            "comparison": comparison,
            "colors": {m: color(i) for i, m in enumerate(picked)} if by == "model" else {},
            "line_colors": [color(i) for i in range(len(comparison.lines))],
            "metrics": METRICS,
            "windows": [(h, window_label(h)) for h in COMPARE_WINDOWS_H],
            "q": {"metric": metric, "hours": f"{hours:g}", "lines": by},
            "max_compared": MAX_COMPARED,
            "compare_by": COMPARE_BY,
        }
        return pages.render(request, "compare.html", context, fragments=("compare_card",))

    async def _report_context(hours: float, series: str) -> dict[str, Any]:
        end = datetime.now(UTC)
        start = end - timedelta(hours=hours)
        one = _split(series)
        provider, model = one if one else (None, None)
        health = await data.model_health(min(hours, HEALTH_MAX_HOURS))
        rows = [h for h in health.models if one is None or (h.provider, h.model) == one]
        counts = await trends.rule_counts(start, end, provider, model)
        violations = await data.violations(
            ViolationFilter(
                provider=provider,
                model=model,
                since=start,
                severities=("critical", "warning"),
                limit=REPORT_VIOLATIONS,
            )
        )
        incidents = [
            i
            for i in await _incidents_since(alerting, start, model)
            if one is None or (model in i.models and i.provider == provider)
        ]
        all_series = await data.series()
        known = sorted({(s.provider, s.model) for s in all_series})
        picked = [one] if one else known[:MAX_COMPARED]
        comparison = await with_maintenance(
            trends.comparison(picked, "latency_ms", hours, end), alerting, trends
        )
        # Each model's control chart: the one the dashboard opens for it (its first prompt).
        first_prompt: dict[tuple[str, str], str] = {}
        for s in sorted(all_series, key=lambda s: (s.provider, s.model, s.prompt_id)):
            first_prompt.setdefault((s.provider, s.model), s.prompt_id)
        charts = [
            await data.chart(
                ChartQuery(
                    provider=p,
                    model=m,
                    prompt_id=first_prompt[(p, m)],
                    hours=hours,
                    severities=("critical", "warning"),
                ),
                # As many marks as the dashboard draws: more only overprint one another.
                marks=MARKS_DRAWN,
            )
            for p, m in picked
            if (p, m) in first_prompt
        ]
        qs = urlencode({"hours": f"{hours:g}", "series": series})
        export = {"since": start.isoformat(), "until": end.isoformat()}
        if one:
            export |= {"provider": one[0], "model": one[1]}
        return {
            "start": start,
            "end": end,
            "hours": f"{hours:g}",
            "window": window_label(hours),
            "health_hours": min(hours, HEALTH_MAX_HOURS),
            "series": series,
            "models": known,
            "rows": rows,
            "counts": counts,
            "total": sum(c.count for c in counts),
            "violations": violations.items,
            "violations_capped": violations.next_cursor is not None,
            "incidents": incidents,
            "analyses": await _analyses(alerting, incidents),
            "charts": charts,
            "comparison": comparison,
            "colors": {m: color(i) for i, m in enumerate(picked)},
            "windows": [(h, window_label(h)) for h in REPORT_WINDOWS_H],
            "violations_csv": "/api/export/violations.csv?" + urlencode(export),
            "incidents_csv": "/report/incidents.csv?" + qs,
        }

    @router.get("/report", response_class=HTMLResponse, dependencies=[session])
    async def report(
        request: Request,
        hours: Annotated[float, Query(gt=0, le=COMPARE_MAX_HOURS)] = 24,
        series: str = "",
    ) -> HTMLResponse:
        """Status, uptime, latency, violations by rule and severity, incidents with their times to
        acknowledge and resolve: one page to print (the browser saves it as PDF)."""
        return pages.render(request, "report.html", await _report_context(hours, series))

    @router.get("/report.pdf", dependencies=[download], response_model=None)
    async def report_pdf(
        request: Request,
        hours: Annotated[float, Query(gt=0, le=COMPARE_MAX_HOURS)] = 24,
        series: str = "",
    ) -> Response:
        """The report page printed to PDF on the server (503 with the reason without Chromium)."""
        context = await _report_context(hours, series)
        html = pages.env.get_template("report.html").render(
            {"request": request, "path": "/report", "live": False, **context}
        )
        try:
            pdf = await printer.print_html(html)
        except PdfUnavailable as exc:
            return Response(str(exc), status_code=503, media_type="text/plain")
        # Model names may hold anything; a file name in a header must not.
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", series or "all") + f"-{hours:g}h"
        return Response(
            pdf,
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="llmscope-report-{name}.pdf"'},
        )

    @router.get("/report.json", dependencies=[download])
    async def report_json(
        hours: Annotated[float, Query(gt=0, le=COMPARE_MAX_HOURS)] = 24, series: str = ""
    ) -> JSONResponse:
        """The report's figures as JSON: status and uptime, violations by rule and severity, the
        critical and warning violations, incidents with times to acknowledge and resolve and the
        latest ones' analyses, and each model's latency per bucket (no SVG)."""
        c = await _report_context(hours, series)
        body = {
            "start": c["start"],
            "end": c["end"],
            "hours": hours,
            "series": series,
            "status": c["rows"],
            "violations_by_rule": c["counts"],
            "violations": c["violations"],
            "violations_capped": c["violations_capped"],
            "incidents": [
                {
                    **dataclasses.asdict(i),
                    "seconds_to_acknowledge": _seconds(i.acknowledged_at, i.opened_at),
                    "seconds_to_resolve": _seconds(i.resolved_at, i.opened_at),
                    "analysis": c["analyses"].get(i.id),
                }
                for i in c["incidents"]
            ],
            "latency": c["comparison"].lines,
        }
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", series or "all") + f"-{hours:g}h"
        return JSONResponse(
            # The status rows carry the engine's availability chart, a msgspec Struct that
            # jsonable_encoder cannot take apart by itself.
            jsonable_encoder(body, custom_encoder={msgspec.Struct: msgspec.to_builtins}),
            headers={"Content-Disposition": f'attachment; filename="llmscope-report-{name}.json"'},
        )

    @router.get("/report/incidents.csv", dependencies=[download])
    async def incidents_csv(
        hours: Annotated[float, Query(gt=0, le=COMPARE_MAX_HOURS)] = 24, series: str = ""
    ) -> Response:
        start = datetime.now(UTC) - timedelta(hours=hours)
        one = _split(series)
        items = await _incidents_since(alerting, start, one[1] if one else None)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(INCIDENT_COLUMNS)
        for i in sorted(items, key=lambda i: (i.opened_at, i.id)):
            if one and (i.provider != one[0] or one[1] not in i.models):
                continue
            writer.writerow(
                [
                    i.id,
                    i.state,
                    i.severity,
                    i.title,
                    i.provider,
                    i.host,
                    " ".join(i.models),
                    i.cascade,
                    i.violation_count,
                    i.opened_at.isoformat(),
                    i.acknowledged_at.isoformat() if i.acknowledged_at else "",
                    i.acknowledged_by or "",
                    i.resolved_at.isoformat() if i.resolved_at else "",
                    i.resolved_by or "",
                    _seconds(i.acknowledged_at, i.opened_at) or "",
                    _seconds(i.resolved_at, i.opened_at) or "",
                ]
            )
        return Response(
            buf.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="incidents.csv"'},
        )
