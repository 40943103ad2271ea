"""The dashboard's router: each page's routes (one module each, ``*_routes.py``), registered in
order behind the session dependency of :mod:`llmscope.web.login_routes`, and its static files."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from importlib.resources import files

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.staticfiles import StaticFiles

from llmscope.web.alerting import AlertingData
from llmscope.web.alerting_routes import add_alerting_routes
from llmscope.web.auth import SESSION_COOKIE, Authenticator
from llmscope.web.chart_settings import ChartSettingsData, add_chart_settings_routes
from llmscope.web.dashboard_routes import add_dashboard_routes
from llmscope.web.data import DashboardData, Series
from llmscope.web.live import Broadcaster, add_live_routes
from llmscope.web.login_routes import add_login_routes, reader_check, script_guard, session_guard
from llmscope.web.model_routes import add_model_routes
from llmscope.web.overview_routes import add_overview_routes
from llmscope.web.pages import Pages
from llmscope.web.remembered_by import RememberBy
from llmscope.web.settings_form import fixed_settings
from llmscope.web.settings_routes import add_settings_routes
from llmscope.web.setup_routes import add_setup_routes, setup_context
from llmscope.web.status_routes import StatusData, add_status_routes
from llmscope.web.traffic import TrafficData
from llmscope.web.traffic_routes import add_traffic_routes
from llmscope.web.trend_routes import add_trend_routes
from llmscope.web.trends import TrendsData
from llmscope.web.violation_routes import add_violation_routes


@dataclass(frozen=True, slots=True)
class WebOptions:
    """Dashboard behaviour the API passes in from its settings."""

    refresh_s: float = 2.0
    session_max_age_s: int = 7 * 24 * 3600
    status_public: bool = False
    """``/status`` and the badges readable without a login (names and statuses only)."""
    retention_days: dict[str, float | None] = field(default_factory=dict)
    """Days each kind of data is kept (``telemetry``, ``rollups``, ...; 0: forever), for Settings;
    None: not set (``minute_rollups``: kept as long as the hourly ``rollups``)."""
    scoped_keys: frozenset[str] = frozenset()
    """Which keys besides the admin key are set (``read``, ``ingest``), for Settings; never the keys."""


def create_router(
    data: DashboardData,
    auth: Authenticator,
    options: WebOptions | None = None,
    pages: Pages | None = None,
    alerting: AlertingData | None = None,
    chart_settings: ChartSettingsData | None = None,
    status: StatusData | None = None,
    trends: TrendsData | None = None,
    live: Broadcaster | None = None,
    traffic: TrafficData | None = None,
) -> APIRouter:
    """All dashboard routes, bound to the injected data access and authenticator (and, with
    ``alerting``, the incidents, silences and notifications pages and the overview's incident
    links; with ``status``, the status page, badges and the overview's statuses)."""
    opts = options or WebOptions()
    pages = pages or Pages(live=live is not None)
    router = APIRouter(include_in_schema=False)

    session = session_guard(auth, opts.session_max_age_s)
    signed_in = reader_check(auth)
    Session = Depends(session)

    # Registered in this order: a path matches the first route that fits it.
    add_login_routes(router, auth, pages, opts.session_max_age_s)
    add_overview_routes(router, data, Session, pages, opts.refresh_s, alerting, status)
    add_dashboard_routes(router, data, Session, pages, opts.refresh_s, trends, traffic)
    add_violation_routes(router, data, Session, pages)
    add_model_routes(router, data, Session, pages, opts.refresh_s)
    fixed = fixed_settings(
        opts.retention_days, opts.session_max_age_s / 86400, opts.status_public, opts.scoped_keys
    )
    add_settings_routes(router, data, Session, pages, fixed)
    add_setup_routes(router, data, Session, pages)
    if alerting is not None:
        add_alerting_routes(router, alerting, Session, pages, partial(setup_context, data))
    if chart_settings is not None:
        add_chart_settings_routes(router, chart_settings, Session, pages)
    if trends is not None:
        add_trend_routes(
            router, trends, data, alerting, Session, pages, script=Depends(script_guard(auth, session))
        )
    if live is not None:

        async def still_signed_in(request: Request) -> bool:
            return await auth.session(request.cookies.get(SESSION_COOKIE)) is not None

        add_live_routes(router, live, Session, still_signed_in)
    if status is not None:
        add_status_routes(
            router, status, pages, public=opts.status_public, signed_in=signed_in, session=session
        )
    if traffic is not None:
        add_traffic_routes(router, traffic, data, Session, pages, opts.refresh_s)
    return router


def install(
    app: FastAPI,
    data: DashboardData,
    auth: Authenticator,
    options: WebOptions | None = None,
    alerting: AlertingData | None = None,
    chart_settings: ChartSettingsData | None = None,
    status: StatusData | None = None,
    trends: TrendsData | None = None,
    live: Broadcaster | None = None,
    traffic: TrafficData | None = None,
) -> None:
    """Mount the dashboard and its static files (htmx, CSS) on an application."""
    static_dir = files("llmscope.web") / "static"
    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")
    app.add_middleware(RememberBy)
    app.include_router(
        create_router(
            data,
            auth,
            options,
            alerting=alerting,
            chart_settings=chart_settings,
            status=status,
            trends=trends,
            live=live,
            traffic=traffic,
        )
    )


__all__ = ["SESSION_COOKIE", "Series", "WebOptions", "create_router", "install"]
