"""The overview, the landing page (``/``): every model's health at a glance, the open criticals and
incidents, and the false-alarm budget."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.params import Depends
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from llmscope.web.alerting import AlertingData, Incident, IncidentFilter
from llmscope.web.data import HEALTH_MAX_HOURS, OVERVIEW_WINDOWS_H, DashboardData
from llmscope.web.overview import BudgetCache, overview_rows, summary
from llmscope.web.pages import Pages
from llmscope.web.status_routes import StatusData

# Query parameters of a chart: a link to "/" with any of them is an old link to the dashboard.
CHART_PARAMS = frozenset({"series", "provider", "model", "prompt_id", "target", "metric"})


def add_overview_routes(
    router: APIRouter,
    data: DashboardData,
    session: Depends,
    pages: Pages,
    refresh_s: float,
    alerting: AlertingData | None,
    status: StatusData | None,
) -> None:
    """Register ``GET /`` behind the session dependency (with ``alerting``, its incidents; with
    ``status``, its statuses)."""

    async def _active_incidents() -> list[Incident]:
        if alerting is None:
            return []
        found: list[Incident] = []
        for state in ("open", "acknowledged"):
            found += (await alerting.incidents(IncidentFilter(state=state, limit=200))).items
        return found

    budget = BudgetCache(data.false_alarm_budget)

    @router.get("/", response_class=HTMLResponse, response_model=None, dependencies=[session])
    async def overview(
        request: Request, hours: Annotated[float, Query(gt=0, le=HEALTH_MAX_HOURS)] = 1
    ) -> Response:
        if CHART_PARAMS & set(request.query_params):
            # A link from before the overview was the landing page: the chart it meant.
            return RedirectResponse(f"/dashboard?{request.url.query}", status_code=303)
        report = await status.status() if status is not None else None
        view = await data.overview(hours)
        incidents = await _active_incidents()
        rows = overview_rows(report, view, incidents)
        # One x range for every row (they compare at a glance), from the first point shown: a
        # fresh install would otherwise squeeze each sparkline into its right edge.
        firsts = [line.points[0].ts for line in view.sparklines if line.points]
        x_start = max(view.start, min(firsts, default=view.start))
        context: dict[str, Any] = {
            "rows": rows,
            "summary": summary(rows, view, incidents, await budget.get()),
            "view": view,
            "x_start": x_start,
            "windows": OVERVIEW_WINDOWS_H,
            "hours": f"{hours:g}",
            # A wall screen: fresh within ~10 s of an outage, without a query storm per tab.
            "refresh_s": max(refresh_s * 2.5, 5.0),
            # Until the wizard is saved once, the landing page points to it: a fresh install
            # records violations and tells nobody.
            "setup_due": await data.setting_value("setup.completed") is not True,
        }
        return pages.render(request, "overview.html", context, fragments=("overview",), polled=("overview",))
