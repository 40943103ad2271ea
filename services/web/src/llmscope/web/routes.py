"""The dashboard's routes: pages, their HTMX fragments, login and static files.

Authentication: ``/login`` asks for the API key or the read-only key (or a page is opened once with
``?key=...``); the answer is a signed session cookie (HttpOnly, SameSite=Strict) of that key's scope,
issued by the injected :class:`~llmscope.web.auth.Authenticator`, and ended for good by ``/logout``.
Changes need the admin scope and the CSRF token (sent by htmx from the body's ``hx-headers``) or a
strict same-origin ``Origin`` (:func:`~llmscope.web.auth.change_refusal`); failed keys count
towards the per-client limit (429).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from llmscope.web.alerting import AlertingData, Incident, IncidentFilter
from llmscope.web.alerting_routes import add_alerting_routes
from llmscope.web.auth import (
    SESSION_COOKIE,
    Authenticator,
    RateLimited,
    change_refusal,
    client_of,
)
from llmscope.web.chart_settings import ChartSettingsData, add_chart_settings_routes
from llmscope.web.data import (
    HEALTH_MAX_HOURS,
    METRICS,
    OVERVIEW_WINDOWS_H,
    SEVERITY_AT_LEAST,
    WINDOWS_H,
    ChartData,
    ChartQuery,
    DashboardData,
    Metric,
    ModelRebaselineResult,
    RebaselineResult,
    Series,
    SettingError,
    SettingErrors,
    Severity,
    Violation,
    ViolationFilter,
)
from llmscope.web.live import Broadcaster, add_live_routes
from llmscope.web.overview import BudgetCache, overview_rows, summary
from llmscope.web.pages import Pages, ask_rebaseline, is_htmx, toast_trigger
from llmscope.web.settings_form import (
    BY_ID,
    SECTIONS,
    SectionView,
    fixed_settings,
    parse_field,
    section_changes,
    section_view,
)
from llmscope.web.status_routes import StatusData, add_status_routes
from llmscope.web.svg import MARKS_DRAWN
from llmscope.web.traffic import TRAFFIC_LABELS, TrafficData, TrafficSeries, series_of
from llmscope.web.traffic_routes import add_traffic_routes
from llmscope.web.trend_routes import add_trend_routes
from llmscope.web.trends import COMPARE_MAX_HOURS, AvailabilityHistory, TrendsData

# Query parameters of a chart: a link to "/" with any of them is an old link to the dashboard.
CHART_PARAMS = frozenset({"series", "provider", "model", "prompt_id", "target", "metric"})
SETUP_KEYS = (
    "alert.email.recipients",
    "alert.email.smtp_host",
    "alert.email.tls",
    "alert.email.verify_cert",
    "alert.email.ca_file",
    "alert.email.smtp_port",
    "alert.email.smtp_user",
    "alert.email.smtp_password",
    "alert.email.from_addr",
    "alert.slack.webhook_url",
    "alert.slack.bot_token",
    "alert.slack.channel",
    "alert.webhook.url",
    "alert.webhook.signing_secret",
    "alert.pagerduty.routing_key",
    "alert.alertmanager.url",
    "alert.teams.webhook_url",
    "alert.discord.webhook_url",
    "alert.mattermost.webhook_url",
    # The tickets as the settings page's Tickets section has them: the same keys, in its order.
    *(f.key for f in BY_ID["tickets"].fields),
    "alert.min_severity",
)
WEBHOOK_SECRET = "alert.webhook.signing_secret"
# A channel is switched on when the wizard is given the field that makes it work.
SETUP_ENABLES = {
    "alert.email.recipients": "alert.email.enabled",
    "alert.slack.webhook_url": "alert.slack.enabled",
    "alert.slack.bot_token": "alert.slack.enabled",
    "alert.webhook.url": "alert.webhook.enabled",
    "alert.pagerduty.routing_key": "alert.pagerduty.enabled",
    "alert.alertmanager.url": "alert.alertmanager.enabled",
    "alert.teams.webhook_url": "alert.teams.enabled",
    "alert.discord.webhook_url": "alert.discord.enabled",
    "alert.mattermost.webhook_url": "alert.mattermost.enabled",
}


@dataclass(frozen=True, slots=True)
class WebOptions:
    """Dashboard behaviour the API passes in from its settings."""

    refresh_s: float = 2.0
    session_max_age_s: int = 7 * 24 * 3600
    actor: str = "dashboard"
    status_public: bool = False
    """``/status`` and the badges readable without a login (names and statuses only)."""
    retention_days: dict[str, float] = field(default_factory=dict)
    """Days each kind of data is kept (``telemetry``, ``rollups``, ...; 0: forever), for Settings."""
    scoped_keys: frozenset[str] = frozenset()
    """Which keys besides the admin key are set (``read``, ``ingest``), for Settings; never the keys."""


def _safe_next(target: str | None) -> str:
    # Only same-site paths: "//evil.example" or "https://..." would be an open redirect.
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _session_cookie(token: str, request: Request, max_age: int) -> str:
    secure = "; Secure" if request.url.scheme == "https" else ""
    return f"{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"


def _rebaseline_toast(status: str, error: str, done: str) -> tuple[str, str]:
    if status == "ok":
        return f"{done}.", "ok"
    if status == "no_engine":
        return "No SPC engine answered: nothing was re-baselined.", "error"
    return f"Re-baseline refused: {error}", "error"


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

    def without_key(request: Request) -> str:
        """The page asked for, less any ``?key=``: a key in ``next`` led back to itself."""
        rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "key"])
        return request.url.path + (f"?{rest}" if rest else "")

    def login_redirect(request: Request, refused_key: bool = False) -> HTTPException:
        query = {"next": without_key(request)}
        if refused_key:
            query["refused"] = "key"
        location = "/login?" + urlencode(query)
        if is_htmx(request):
            return HTTPException(401, "login required", headers={"HX-Redirect": location})
        return HTTPException(303, "login required", headers={"Location": location})

    async def session(request: Request) -> None:
        """Require the session cookie; accept ``?key=`` once and trade it for a cookie."""
        key = request.query_params.get("key")
        if key is not None and request.method == "GET":
            scope = auth.key_scope(key, client_of(request))  # RateLimited: the app's 429
            location = without_key(request)
            if scope is None or scope == "ingest":
                # A stale link opened while signed in: its page, not the login form.
                if await auth.session(request.cookies.get(SESSION_COOKIE)) is not None:
                    raise HTTPException(303, "signed in", headers={"Location": location})
                raise login_redirect(request, refused_key=True)
            cookie = _session_cookie(auth.issue_session(scope), request, opts.session_max_age_s)
            raise HTTPException(303, "logged in", headers={"Location": location, "Set-Cookie": cookie})
        found = await auth.session(request.cookies.get(SESSION_COOKIE))
        if found is None:
            raise login_redirect(request)
        if request.method not in ("GET", "HEAD"):
            # The front door refused these already; checked again here, where the route is.
            why = change_refusal(auth, found, request)
            if why is not None:
                raise HTTPException(403, why)
        # For the page's <meta> and the body's hx-headers: every htmx request sends it back.
        request.state.csrf_token = auth.csrf_token(found)

    async def signed_in(request: Request) -> bool:
        """A reader: the read scope as a bearer key, or any session (the status page, badges)."""
        try:
            principal = await auth.principal(request)
        except RateLimited:
            return False
        if principal is not None and principal.session is not None:
            request.state.csrf_token = auth.csrf_token(principal.session)
        return principal is not None and principal.scope in ("admin", "read")

    Session = Depends(session)

    # ---- login ---------------------------------------------------------------------------
    @router.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "/", refused: str = "") -> HTMLResponse:
        error = (
            "The key in that link was not accepted: enter the API key or the read-only key."
            if refused == "key"
            else None
        )
        return pages.render(request, "login.html", {"next": _safe_next(next), "error": error})

    @router.post("/login", response_model=None)
    async def login(
        request: Request, key: Annotated[str, Form()], next: Annotated[str, Form()] = "/"
    ) -> Response:
        def refused(error: str, status_code: int, headers: dict[str, str] | None = None) -> HTMLResponse:
            context = {"next": _safe_next(next), "error": error}
            return pages.render(request, "login.html", context, status_code=status_code, headers=headers)

        try:
            scope = auth.key_scope(key, client_of(request))
        except RateLimited as exc:
            wait = str(exc.retry_after_s)
            return refused(f"Too many failed attempts: try again in {wait} s.", 429, {"Retry-After": wait})
        if scope is None:
            return refused("That is not the API key (nor the read-only key).", 401)
        if scope == "ingest":
            return refused(
                "The ingest key only sends data: log in with the API key or the read-only key.", 403
            )
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.headers["Set-Cookie"] = _session_cookie(
            auth.issue_session(scope), request, opts.session_max_age_s
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        """End the session for good: a copy of the cookie no longer works either."""
        found = await auth.session(request.cookies.get(SESSION_COOKIE))
        if found is not None:
            why = change_refusal(auth, found, request)
            if why is not None:
                raise HTTPException(403, why)
            await auth.revoke(found)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ---- dashboard -----------------------------------------------------------------------
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
            "target": target or "",
            "metric": metric,
            "hours": f"{hours:g}",
            "severity": severity,
        }
        context = {"q": query, "qs": urlencode(query), "log": log.items, "refresh_s": opts.refresh_s}
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
                # A target of another model: this one's default.
                found = await data.chart(
                    ChartQuery(provider, model, prompt_id, metric, hours, "", shown), marks=MARKS_DRAWN
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
            "target": (chart.query.target if chart else target) or "",
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
            "refresh_s": opts.refresh_s,
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

    # ---- overview (the landing page) -----------------------------------------------------
    async def _active_incidents() -> list[Incident]:
        if alerting is None:
            return []
        found: list[Incident] = []
        for state in ("open", "acknowledged"):
            found += (await alerting.incidents(IncidentFilter(state=state, limit=200))).items
        return found

    budget = BudgetCache(data.false_alarm_budget)

    @router.get("/", response_class=HTMLResponse, response_model=None, dependencies=[Session])
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
            "refresh_s": max(opts.refresh_s * 2.5, 5.0),
            # Until the wizard is saved once, the landing page points to it: a fresh install
            # records violations and tells nobody.
            "setup_due": not any(
                s.key == "setup.completed" and s.value is True for s in await data.settings()
            ),
        }
        return pages.render(request, "overview.html", context, fragments=("overview",), polled=("overview",))

    # ---- dashboard -----------------------------------------------------------------------
    @router.get("/dashboard", response_class=HTMLResponse, dependencies=[Session])
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

    async def _rebaseline(
        request: Request, chart_key: str, by: str, reason: str
    ) -> tuple[RebaselineResult, int]:
        return await ask_rebaseline(data, request, chart_key, by, reason)

    @router.post("/charts/rebaseline", response_class=HTMLResponse, dependencies=[Session])
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
        hours: Annotated[float, Form(gt=0, le=24 * 31)] = 1,
        severity: Annotated[Severity, Form()] = "warning",
    ) -> HTMLResponse:
        """Ask the SPC engine to re-baseline the chart; answers the dashboard with the outcome."""
        result, status = await _rebaseline(request, chart_key, by, reason)
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
            toast=_rebaseline_toast(result.status, result.error, "Chart re-baselined"),
        )

    @router.post("/models/rebaseline", response_class=HTMLResponse, dependencies=[Session])
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
        hours: Annotated[float, Form(gt=0, le=24 * 31)] = 1,
        severity: Annotated[Severity, Form()] = "warning",
    ) -> HTMLResponse:
        """Ask the SPC engine to re-baseline every chart of the model (``only_target``: one
        target's); answers the dashboard with the charts re-baselined."""
        fields = {"provider": provider, "model": model, "by": by, "reason": reason}
        given = {name: value.strip() for name, value in fields.items()}
        missing = [name for name, value in given.items() if not value]
        if missing:
            result = ModelRebaselineResult(
                status="refused",
                provider=given["provider"],
                model=given["model"],
                target=only_target.strip(),
                error=f"{missing[0]}: required",
            )
            status = 422
        else:
            result = await data.rebaseline_model(
                given["provider"], given["model"], only_target.strip(), given["by"], given["reason"]
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
            toast=_rebaseline_toast(result.status, result.error, f"{result.model}: charts re-baselined"),
        )

    # ---- violations ----------------------------------------------------------------------
    @router.get("/violations", response_class=HTMLResponse, dependencies=[Session])
    async def violations(
        request: Request,
        series: str | None = None,
        rule: str | None = None,
        severity: str | None = None,
        state: str | None = None,
        acknowledged: str | None = None,
        cursor: str | None = None,
    ) -> HTMLResponse:
        provider = model = None
        if series and "|" in series:
            provider, model = series.split("|", 1)
        flt = ViolationFilter(
            provider=provider,
            model=model,
            rule=rule or None,
            severity=severity or None,
            state="open" if state == "open" else "cleared" if state == "cleared" else None,
            acknowledged={"yes": True, "no": False}.get(acknowledged or ""),
            limit=50,
            cursor=cursor or None,
        )
        page = await data.violations(flt)
        all_series = await data.series()
        params = {
            "series": series or "",
            "rule": rule or "",
            "severity": severity or "",
            "state": state or "",
            "acknowledged": acknowledged or "",
        }
        context = {
            "page": page,
            "models": sorted({(s.provider, s.model) for s in all_series}),
            "f": params,
            "next_qs": urlencode({**params, "cursor": page.next_cursor}) if page.next_cursor else None,
        }
        return pages.render(request, "violations.html", context, fragments=("violation_table",))

    @router.get("/violations/{violation_id}", response_class=HTMLResponse, dependencies=[Session])
    async def violation_detail(request: Request, violation_id: str) -> HTMLResponse:
        detail = await data.violation(violation_id)
        if detail is None:
            return pages.render(request, "not_found.html", {"what": "violation"}, status_code=404)
        return pages.render(
            request, "violation.html", {"d": detail, "v": detail.violation}, fragments=("actions",)
        )

    @router.post("/violations/{violation_id}/rebaseline", response_class=HTMLResponse, dependencies=[Session])
    async def rebaseline_from_violation(
        request: Request,
        violation_id: str,
        by: Annotated[str, Form()] = "",
        reason: Annotated[str, Form()] = "",
    ) -> HTMLResponse:
        """Re-baseline the chart a violation came from (metric or availability chart): where
        people learn of a real change (a new GPU, a fixed proxy) is where they accept it."""
        detail = await data.violation(violation_id)
        if detail is None:
            return pages.render(request, "not_found.html", {"what": "violation"}, status_code=404)
        chart_key = detail.violation.chart_key
        result, status = await _rebaseline(request, chart_key, by, reason)
        return pages.render(
            request,
            "violation.html",
            {"d": detail, "v": detail.violation, "rebaseline": result},
            fragments=("rebaseline",),
            status_code=status,
            toast=_rebaseline_toast(result.status, result.error, "Chart re-baselined"),
        )

    async def _act(request: Request, violation_id: str, action: str, by: str, note: str) -> HTMLResponse:
        who = by.strip() or opts.actor
        if action == "acknowledge":
            changed = await data.acknowledge(violation_id, who, note.strip() or None)
        else:
            changed = await data.resolve(violation_id, who, note.strip() or None)
        if changed is None:
            return pages.render(request, "not_found.html", {"what": "violation"}, status_code=404)
        detail = await data.violation(violation_id)
        assert detail is not None
        done = "acknowledged" if action == "acknowledge" else "resolved"
        return pages.render(
            request,
            "violation.html",
            {"d": detail, "v": detail.violation, "acted": True},
            fragments=("actions",),
            toast=f"Violation {done} by {who}.",
        )

    @router.post(
        "/violations/{violation_id}/acknowledge", response_class=HTMLResponse, dependencies=[Session]
    )
    async def acknowledge(
        request: Request,
        violation_id: str,
        by: Annotated[str, Form()] = "",
        note: Annotated[str, Form()] = "",
    ) -> HTMLResponse:
        return await _act(request, violation_id, "acknowledge", by, note)

    @router.post("/violations/{violation_id}/resolve", response_class=HTMLResponse, dependencies=[Session])
    async def resolve(
        request: Request,
        violation_id: str,
        by: Annotated[str, Form()] = "",
        note: Annotated[str, Form()] = "",
    ) -> HTMLResponse:
        return await _act(request, violation_id, "resolve", by, note)

    # ---- models --------------------------------------------------------------------------
    models_fragments = ("models", "health_panel", "health")

    async def _models_page(
        request: Request, hours: float, status_code: int = 200, toast: tuple[str, str] | None = None
    ) -> HTMLResponse:
        block = pages.block_for(request, models_fragments)
        # Each block reads only what it shows: the polled health table skips the models query.
        context: dict[str, Any] = {
            "models": await data.models() if block in (None, "content", "models") else [],
            "health": await data.model_health(hours) if block != "models" else None,
            "windows": OVERVIEW_WINDOWS_H,
            "hours": f"{hours:g}",
            "refresh_s": opts.refresh_s,
        }
        return pages.render(
            request,
            "models.html",
            context,
            fragments=models_fragments,
            status_code=status_code,
            toast=toast,
            polled=("health",),
        )

    @router.get("/models", response_class=HTMLResponse, dependencies=[Session])
    async def models_page(
        request: Request, hours: Annotated[float, Query(gt=0, le=HEALTH_MAX_HOURS)] = 1
    ) -> HTMLResponse:
        return await _models_page(request, hours)

    @router.post("/models/toggle", response_class=HTMLResponse, dependencies=[Session])
    async def toggle_model(
        request: Request,
        provider: Annotated[str, Form()],
        model: Annotated[str, Form()],
        enabled: Annotated[str, Form()],
    ) -> HTMLResponse:
        on = enabled.lower() in {"1", "true", "on"}
        found = await data.set_model_enabled(provider, model, on)
        toast = (
            (f"{provider}/{model} {'enabled: probed again' if on else 'disabled: no more probes'}.", "ok")
            if found
            else (f"No model {provider}/{model}.", "error")
        )
        return await _models_page(request, 1, status_code=200 if found else 404, toast=toast)

    # ---- settings ------------------------------------------------------------------------
    fixed = fixed_settings(
        opts.retention_days, opts.session_max_age_s / 86400, opts.status_public, opts.scoped_keys
    )

    async def _settings_page(request: Request, views: dict[str, SectionView] | None = None) -> HTMLResponse:
        stored = await data.settings()
        sections = [(views or {}).get(s.id) or section_view(s, stored) for s in SECTIONS]
        context = {
            "sections": sections,
            "fixed": fixed,
            "models": sorted({(s.provider, s.model) for s in await data.series()}),
        }
        return pages.render(request, "settings.html", context)

    @router.get("/settings", response_class=HTMLResponse, dependencies=[Session])
    async def settings_page(request: Request) -> HTMLResponse:
        return await _settings_page(request)

    @router.post("/settings/section/{section_id}", response_class=HTMLResponse, dependencies=[Session])
    async def save_section(request: Request, section_id: str) -> HTMLResponse:
        """Save one form of the settings page whole (the fields changed, checked together);
        errors are shown under their fields."""
        section = BY_ID.get(section_id)
        if section is None:
            return pages.render(request, "not_found.html", {"what": "settings section"}, status_code=404)
        form = await request.form()
        changes = section_changes(
            section,
            {s.key: s for s in await data.settings()},
            {k: [str(v) for v in form.getlist(k)] for k in form},
        )
        typed, errors = changes.typed, changes.errors
        if not errors and (changes.values or changes.remove):
            try:
                await data.put_settings(changes.values, opts.actor, changes.remove)
            except SettingErrors as exc:
                errors = exc.errors
        if errors:
            labels = {f.key: f.label for f in section.fields}
            view = section_view(section, await data.settings(), errors=errors, typed=typed)
            named = ", ".join(labels.get(k, k) for k in errors)
            toast = (f"{section.title}: not saved, check {named}.", "error")
            status = 200 if is_htmx(request) else 422
        else:
            said = "Saved." if changes.values or changes.remove else "Saved. No field was changed."
            view = section_view(section, await data.settings(), message=said)
            toast = (f"{section.title} settings saved.", "ok")
            status = 200
        if is_htmx(request):
            return pages.render(
                request,
                "settings.html",
                {"sec": view},
                block="section",
                status_code=status,
                toast=toast,
            )
        response = await _settings_page(request, {section.id: view})
        response.status_code = status
        return response

    @router.post("/settings/{key}", response_class=HTMLResponse, dependencies=[Session])
    async def put_setting(
        request: Request, key: str, value: Annotated[str | None, Form()] = None
    ) -> HTMLResponse:
        """One setting by key (the page before the sections; kept for scripts and old tabs)."""
        known = {s.key: s for s in await data.settings()}
        try:
            if key not in known:
                raise SettingError(key, "unknown setting")
            await data.put_setting(key, parse_field(known[key], value), opts.actor)
        except SettingError as exc:
            response = await _settings_page(request)
            response.status_code = 422
            response.headers.update(toast_trigger(str(exc), "error"))
            return response
        response = await _settings_page(request)
        response.headers.update(toast_trigger(f"{key} saved"))
        return response

    # ---- first-run setup -----------------------------------------------------------------
    async def _setup_context(
        error: str | None = None,
        done: bool = False,
        saved: list[str] | None = None,
        typed: Mapping[str, str] | None = None,
        field_errors: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        known = {s.key: s for s in await data.settings()}
        switches = dict.fromkeys(SETUP_ENABLES.values())  # in order, once (Slack has two fields)
        enabled = [k.split(".")[1] for k in switches if k in known and known[k].value is True]
        return {
            "fields": [known[k] for k in SETUP_KEYS if k in known],
            "error": error,
            "done": done,
            "saved": saved or [],
            "enabled": enabled,
            "typed": typed or {},
            "field_errors": field_errors or {},
        }

    @router.get("/setup", response_class=HTMLResponse, dependencies=[Session])
    async def setup_page(request: Request) -> HTMLResponse:
        return pages.render(request, "setup.html", await _setup_context(), fragments=("wizard",))

    @router.post("/setup", response_class=HTMLResponse, dependencies=[Session])
    async def setup_submit(request: Request) -> HTMLResponse:
        form = await request.form()
        known = {s.key: s for s in await data.settings()}
        values: dict[str, object] = {}
        errors: dict[str, str] = {}
        for key in SETUP_KEYS:
            raw = form.get(key)
            if key not in known or not isinstance(raw, str) or not raw.strip():
                continue  # blank fields keep their current value (and secrets stay hidden)
            try:
                value = parse_field(known[key], raw)
            except SettingError as exc:
                errors[key] = exc.message
                continue
            if not known[key].secret and value == known[key].value:
                # The form shows every default filled in; stored back untouched they would pin
                # it and override the environment (a tracker "none" turns LLMSCOPE_TICKETS_*
                # off), and the answer would list fields nobody changed.
                continue
            values[key] = value
        generated = None
        secret = known.get(WEBHOOK_SECRET)
        if "alert.webhook.url" in values and WEBHOOK_SECRET not in values and secret and not secret.is_set:
            # A webhook without a signing key is unsigned: make one, shown once below for the
            # receiver's side (a typed one is used as given).
            generated = secrets.token_urlsafe(32)
            values[WEBHOOK_SECRET] = generated
        saved = [known[k].description for k in values]
        for field_key, enable in SETUP_ENABLES.items():
            if str(form.get(field_key) or "").strip() and enable in known:
                values[enable] = True
        if "setup.completed" in known:
            values["setup.completed"] = True
        if not errors:
            # Saved whole, as a settings page section is: settings checked together (the ticket
            # tracker's project, token and URL) are judged as they will stand, and a refusal
            # leaves nothing half saved.
            try:
                await data.put_settings(values, opts.actor)
            except SettingErrors as exc:
                errors = exc.errors
        if errors:
            named = "; ".join(
                f"{k} ({known[k].description if k in known else k}): {m}" for k, m in errors.items()
            )
            # A refused form comes back as typed, to be corrected rather than typed again; never
            # a secret (the page would carry it), and a blank field still shows what it keeps.
            typed = {
                k: raw
                for k in SETUP_KEYS
                if k in known and not known[k].secret and isinstance(raw := form.get(k), str) and raw.strip()
            }
            ctx = await _setup_context(error=f"Not saved: {named}", typed=typed, field_errors=errors)
            # htmx swaps only 2xx answers: as a settings section does, the refusal is a 200 to the
            # page's own request (the form with its errors replaces the form) and a 422 otherwise.
            return pages.render(
                request,
                "setup.html",
                ctx,
                fragments=("wizard",),
                status_code=200 if is_htmx(request) else 422,
                toast=(f"Not saved: check {', '.join(errors)}.", "error"),
            )
        # The form stays, showing what is now stored (secrets as "set"), so the next step, a
        # test message, can follow and a mistake can be corrected in place.
        ctx = await _setup_context(done=True, saved=saved)
        ctx["generated_secret"] = generated
        return pages.render(request, "setup.html", ctx, fragments=("wizard",))

    if alerting is not None:
        add_alerting_routes(router, alerting, Session, pages, opts.actor, _setup_context)
    if chart_settings is not None:
        add_chart_settings_routes(router, chart_settings, Session, pages)
    if trends is not None:
        add_trend_routes(router, trends, data, alerting, Session, pages)
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
