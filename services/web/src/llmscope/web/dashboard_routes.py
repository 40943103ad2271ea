"""The chart page (``/dashboard``): one chart with its limits and marks, the violation log, the
model's availability and traffic charts, and the re-baselines asked from it (one chart's, or
every chart of a model)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.params import Depends
from fastapi.responses import HTMLResponse

from llmscope.proto.charts import parse_chart_key
from llmscope.web.data import (
    METRICS,
    SEVERITY_AT_LEAST,
    WINDOWS_H,
    ChartData,
    ChartQuery,
    DashboardData,
    Metric,
    ModelRebaselineResult,
    RebaselineResult,
    Severity,
    Violation,
    ViolationFilter,
)
from llmscope.web.pages import Pages, ask_rebaseline, is_htmx, rebaseline_toast
from llmscope.web.svg import MARKS_DRAWN
from llmscope.web.traffic import TRAFFIC_LABELS, TrafficData, TrafficSeries, series_of
from llmscope.web.trends import COMPARE_MAX_HOURS, AvailabilityHistory, TrendsData
from llmscope.web.userinfo import stored_chart_key, stored_target, without_password


def add_dashboard_routes(
    router: APIRouter,
    data: DashboardData,
    session: Depends,
    pages: Pages,
    refresh_s: float,
    trends: TrendsData | None,
    traffic: TrafficData | None,
) -> None:
    """Register ``/dashboard`` and its re-baselines behind the session dependency (with ``trends``,
    the model's availability; with ``traffic``, its traffic charts).

    The page's links and forms carry its target, and its chart's key, as printed (a password or
    key hidden: ``userinfo``); each route here maps them back to the stored ones."""

    async def targets_of(provider: str, model: str, prompt_id: str) -> list[str]:
        """The stored targets of one prompt of a model (those the page offers), sorted as the
        chart lists them: of two printed alike, :func:`stored_target` picks the same one."""
        return sorted(await data.targets(provider, model, prompt_id))

    async def _violation_log(
        request: Request,
        provider: str | None,
        model: str | None,
        prompt_id: str | None,
        target: str | None,
        metric: Metric,
        hours: float,
        severity: Severity,
    ) -> HTMLResponse:
        log = await data.violations(ViolationFilter(severities=SEVERITY_AT_LEAST[severity], limit=15))
        query = {
            "provider": provider or "",
            "model": model or "",
            "prompt_id": prompt_id or "",
            "target": without_password(target),
            "metric": metric,
            "hours": f"{hours:g}",
            "severity": severity,
        }
        context = {"q": query, "qs": urlencode(query), "log": log.items, "refresh_s": refresh_s}
        return pages.render(
            request, "dashboard.html", context, fragments=("violation_log",), polled=("violation_log",)
        )

    async def _dashboard(
        request: Request,
        *,
        series: str | None,
        provider: str | None,
        model: str | None,
        prompt_id: str | None,
        target: str | None,
        metric: Metric,
        hours: float,
        severity: Severity = "warning",
        rebaseline: RebaselineResult | None = None,
        model_rebaseline: ModelRebaselineResult | None = None,
        status_code: int = 200,
        toast: tuple[str, str] | None = None,
    ) -> HTMLResponse:
        if series and "|" in series:
            provider, model = series.split("|", 1)
        if is_htmx(request) and request.headers.get("HX-Target") == "violation-log":
            # The log's own poll (every few seconds per open tab): its query alone, no chart.
            return await _violation_log(request, provider, model, prompt_id, target, metric, hours, severity)
        all_series = await data.series()
        models = sorted({(s.provider, s.model) for s in all_series})
        # A link to a model or prompt nobody probes (a typo, a removed model) says so: the chart
        # shown instead is another one, and must not pass for the one asked for.
        unknown = ""
        if (provider, model) not in models and models:
            if provider or model:
                unknown = f"{provider or '?'} / {model or '?'}"
            provider, model = models[0]
        prompts = sorted(s.prompt_id for s in all_series if (s.provider, s.model) == (provider, model))
        if prompt_id not in prompts and prompts:
            if prompt_id and not unknown:
                unknown = f"prompt {prompt_id} of {provider} / {model}"
            prompt_id = prompts[0]
        # Info-level tests fire by the hundred on a busy chart: shown only when asked for.
        shown = SEVERITY_AT_LEAST[severity]
        # The chart panel's own re-read (on its model's stored probes, per open tab) shows neither
        # the log nor the traffic charts: their queries and KV reads are skipped.
        panel_only = is_htmx(request) and request.headers.get("HX-Target") == "chart-panel"

        async def the_chart() -> ChartData | None:
            if not (provider and model and prompt_id):
                return None
            found = await data.chart(
                ChartQuery(provider, model, prompt_id, metric, hours, target or "", shown), marks=MARKS_DRAWN
            )
            if target and found.query.target not in found.targets:
                # A target as the pages print it and link to it (its password hidden): the stored
                # one it stands for; a target of another model: this one's default.
                stored = stored_target(target, found.targets) or ""
                found = await data.chart(
                    ChartQuery(provider, model, prompt_id, metric, hours, stored, shown), marks=MARKS_DRAWN
                )
            return found

        async def the_log() -> list[Violation]:
            if panel_only:
                return []
            return (await data.violations(ViolationFilter(severities=shown, limit=15))).items

        async def the_availability() -> AvailabilityHistory | None:
            if trends is None or not (provider and model):
                return None
            return await trends.availability(provider, model, hours)

        async def the_traffic() -> list[TrafficSeries]:
            # The model's traffic charts (real traffic, per minute) beside its probe chart.
            if traffic is None or not (provider and model) or panel_only:
                return []
            return series_of(await traffic.traffic_charts(provider, model))

        # Independent reads, each on its own pooled connection: the page waits for the slowest.
        chart, log, availability, traffic_series = await asyncio.gather(
            the_chart(), the_log(), the_availability(), the_traffic()
        )
        query = {
            "provider": provider or "",
            "model": model or "",
            "prompt_id": prompt_id or "",
            # As printed: the page's links, live URLs and forms carry it (and the address bar).
            "target": without_password(chart.query.target if chart else target),
            "metric": metric,
            "hours": f"{hours:g}",
            "severity": severity,
        }
        context: dict[str, Any] = {
            "models": models,
            "prompts": prompts,
            "metrics": METRICS,
            "windows": WINDOWS_H,
            "severities": tuple(SEVERITY_AT_LEAST),
            "q": query,
            "qs": urlencode(query),
            "chart": chart,
            "log": log,
            "refresh_s": refresh_s,
            "rebaseline": rebaseline,
            "model_rebaseline": model_rebaseline,
            "availability": availability,
            "traffic_series": traffic_series,
            "traffic_labels": TRAFFIC_LABELS,
            "unknown": unknown,
        }
        return pages.render(
            request,
            "dashboard.html",
            context,
            fragments=("panel", "chart_panel", "violation_log", "rebaseline"),
            status_code=status_code,
            toast=toast,
            polled=("panel", "chart_panel"),
        )

    @router.get("/dashboard", response_class=HTMLResponse, dependencies=[session])
    async def dashboard(
        request: Request,
        series: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        prompt_id: str | None = None,
        target: str | None = None,
        metric: Metric = "latency_ms",
        hours: Annotated[float, Query(gt=0, le=COMPARE_MAX_HOURS)] = 1,
        severity: Severity = "warning",
    ) -> HTMLResponse:
        return await _dashboard(
            request,
            series=series,
            provider=provider,
            model=model,
            prompt_id=prompt_id,
            target=target,
            metric=metric,
            hours=hours,
            severity=severity,
        )

    @router.post("/charts/rebaseline", response_class=HTMLResponse, dependencies=[session])
    async def rebaseline_chart(
        request: Request,
        chart_key: Annotated[str, Form()],
        by: Annotated[str, Form()] = "",
        reason: Annotated[str, Form()] = "",
        provider: Annotated[str, Form()] = "",
        model: Annotated[str, Form()] = "",
        prompt_id: Annotated[str, Form()] = "",
        target: Annotated[str, Form()] = "",
        metric: Annotated[Metric, Form()] = "latency_ms",
        hours: Annotated[float, Form(gt=0, le=COMPARE_MAX_HOURS)] = 1,
        severity: Annotated[Severity, Form()] = "warning",
    ) -> HTMLResponse:
        """Ask the SPC engine to re-baseline the chart (``chart_key`` as the page prints it, its
        target's password hidden: the stored key it stands for); answers the dashboard."""
        try:
            of = parse_chart_key(chart_key)
        except ValueError:
            pass  # the engine answers: no such chart
        else:
            chart_key = stored_chart_key(chart_key, await targets_of(of[0], of[1], of[3]))
        result, status = await ask_rebaseline(data, request, chart_key, by, reason)
        return await _dashboard(
            request,
            series=None,
            provider=provider,
            model=model,
            prompt_id=prompt_id,
            target=target,
            metric=metric,
            hours=hours,
            severity=severity,
            rebaseline=result,
            status_code=status,
            toast=rebaseline_toast(result.status, result.error, "Chart re-baselined"),
        )

    @router.post("/models/rebaseline", response_class=HTMLResponse, dependencies=[session])
    async def rebaseline_model(
        request: Request,
        provider: Annotated[str, Form()] = "",
        model: Annotated[str, Form()] = "",
        only_target: Annotated[str, Form()] = "",
        by: Annotated[str, Form()] = "",
        reason: Annotated[str, Form()] = "",
        prompt_id: Annotated[str, Form()] = "",
        target: Annotated[str, Form()] = "",
        metric: Annotated[Metric, Form()] = "latency_ms",
        hours: Annotated[float, Form(gt=0, le=COMPARE_MAX_HOURS)] = 1,
        severity: Annotated[Severity, Form()] = "warning",
    ) -> HTMLResponse:
        """Ask the SPC engine to re-baseline every chart of the model (``only_target``: one
        target's); answers the dashboard with the charts re-baselined."""
        fields = {"provider": provider, "model": model, "by": by, "reason": reason}
        given = {name: value.strip() for name, value in fields.items()}
        only_target = only_target.strip()
        if only_target and given["provider"] and given["model"]:
            # Offered as printed (its password hidden): the stored target it stands for.
            stored = await targets_of(given["provider"], given["model"], prompt_id)
            only_target = stored_target(only_target, stored) or only_target
        missing = [name for name, value in given.items() if not value]
        if missing:
            result = ModelRebaselineResult(
                status="refused",
                provider=given["provider"],
                model=given["model"],
                target=only_target,
                error=f"{missing[0]}: required",
            )
            status = 422
        else:
            result = await data.rebaseline_model(
                given["provider"], given["model"], only_target, given["by"], given["reason"]
            )
            status = {"ok": 200, "refused": 409, "no_engine": 504}[result.status]
        if is_htmx(request):
            status = 200  # htmx swaps only 2xx answers, and the fragment carries the outcome
        return await _dashboard(
            request,
            series=None,
            provider=provider,
            model=model,
            prompt_id=prompt_id,
            target=target,
            metric=metric,
            hours=hours,
            severity=severity,
            model_rebaseline=result,
            status_code=status,
            toast=rebaseline_toast(result.status, result.error, f"{result.model}: charts re-baselined"),
        )
