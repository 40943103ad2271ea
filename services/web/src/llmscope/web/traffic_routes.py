"""The traffic pages: every traffic chart by model and service (``/traffic``), one chart with its
minutes and limits (``/traffic/chart``), and its re-baseline (the same engine request as a probe
chart's)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.params import Depends
from fastapi.responses import HTMLResponse

from llmscope.proto.charts import is_traffic_chart
from llmscope.web.data import DashboardData, RebaselineResult
from llmscope.web.pages import Pages, ask_rebaseline, rebaseline_toast, request_chart_width
from llmscope.web.traffic import TRAFFIC_LABELS, TrafficData, series_of
from llmscope.web.traffic_svg import render_traffic_chart

# A traffic chart gains a point once a minute: with live updates its page re-reads on the
# engine's new record (``traffic-<key>``) and polls only as the fallback; without them, polling
# per-minute data every 2 s would re-read the same minutes some 30 times for each new one.
MINUTE_POLL_S = 15.0


def add_traffic_routes(
    router: APIRouter,
    traffic: TrafficData,
    data: DashboardData,
    session: Depends,
    pages: Pages,
    refresh_s: float = 2.0,
) -> None:
    """Mount the traffic pages on the dashboard's router (behind its session)."""

    @router.get("/traffic", response_class=HTMLResponse, dependencies=[session])
    async def traffic_list(
        request: Request, provider: str | None = None, model: str | None = None
    ) -> HTMLResponse:
        series = series_of(await traffic.traffic_charts(provider or None, model or None))
        context: dict[str, Any] = {
            "series": series,
            "labels": TRAFFIC_LABELS,
            "provider": provider or "",
            "model": model or "",
            "refresh_s": max(refresh_s, MINUTE_POLL_S),
        }
        return pages.render(
            request, "traffic.html", context, fragments=("traffic_list",), polled=("traffic_list",)
        )

    async def chart_page(
        request: Request,
        key: str,
        rebaseline: RebaselineResult | None = None,
        status_code: int = 200,
        toast: tuple[str, str] | None = None,
    ) -> HTMLResponse:
        record = await traffic.traffic_chart(key) if is_traffic_chart(key) else None
        if record is None or record.traffic is None:
            raise HTTPException(404, "no such traffic chart (yet)")
        context: dict[str, Any] = {
            "record": record,
            "t": record.traffic,
            "v": record.view,
            "svg": render_traffic_chart(record, width=request_chart_width(request)),
            "label": TRAFFIC_LABELS.get(record.meta.metric, record.meta.metric),
            "rebaseline": rebaseline,
            "refresh_s": max(refresh_s, MINUTE_POLL_S),
        }
        return pages.render(
            request,
            "traffic.html",
            context,
            fragments=("traffic_chart", "rebaseline"),
            status_code=status_code,
            toast=toast,
            polled=("traffic_chart",),
        )

    @router.get("/traffic/chart", response_class=HTMLResponse, dependencies=[session])
    async def traffic_chart(request: Request, chart: Annotated[str, Query(max_length=2000)]) -> HTMLResponse:
        return await chart_page(request, chart)

    @router.post("/traffic/rebaseline", response_class=HTMLResponse, dependencies=[session])
    async def traffic_rebaseline(
        request: Request,
        chart_key: Annotated[str, Form(max_length=2000)],
        by: Annotated[str, Form(max_length=200)] = "",
        reason: Annotated[str, Form(max_length=2000)] = "",
    ) -> HTMLResponse:
        """Ask the SPC engine to re-baseline a traffic chart; answers with the chart page."""
        if not is_traffic_chart(chart_key):
            raise HTTPException(404, "not a traffic chart")
        result, status = await ask_rebaseline(data, request, chart_key, by, reason)
        toast = rebaseline_toast(result.status, result.error, "Traffic chart re-baselined")
        return await chart_page(request, chart_key, result, status, toast)
