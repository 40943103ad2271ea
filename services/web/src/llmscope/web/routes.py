"""The dashboard's routes: pages, their HTMX fragments, login and static files.

Authentication: the API key is the only credential. ``/login`` asks for it (or a page is opened
once with ``?key=...``); the answer is a signed session cookie (HttpOnly, SameSite=Strict) issued by
the injected :class:`Authenticator`. Changing requests also check ``Origin`` against ``Host``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from llmscope.web.alerting import AlertingData, Incident, IncidentFilter
from llmscope.web.alerting_routes import add_alerting_routes
from llmscope.web.chart_settings import ChartSettingsData, add_chart_settings_routes
from llmscope.web.data import (
    HEALTH_MAX_HOURS,
    METRICS,
    OVERVIEW_WINDOWS_H,
    SEVERITY_AT_LEAST,
    WINDOWS_H,
    Authenticator,
    ChartQuery,
    DashboardData,
    Metric,
    ModelRebaselineResult,
    RebaselineResult,
    Series,
    SettingError,
    SettingInfo,
    Severity,
    ViolationFilter,
)
from llmscope.web.overview import overview_rows, summary
from llmscope.web.pages import Pages, is_htmx
from llmscope.web.status_routes import StatusData, add_status_routes

SESSION_COOKIE = "llmscope_session"
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
    "alert.webhook.url",
    "alert.webhook.signing_secret",
    "alert.pagerduty.routing_key",
    "alert.min_severity",
)
# A channel is switched on when the wizard is given the field that makes it work.
SETUP_ENABLES = {
    "alert.email.recipients": "alert.email.enabled",
    "alert.slack.webhook_url": "alert.slack.enabled",
    "alert.webhook.url": "alert.webhook.enabled",
    "alert.pagerduty.routing_key": "alert.pagerduty.enabled",
}


@dataclass(frozen=True, slots=True)
class WebOptions:
    """Dashboard behaviour the API passes in from its settings."""

    refresh_s: float = 2.0
    session_max_age_s: int = 7 * 24 * 3600
    actor: str = "dashboard"
    status_public: bool = False
    """``/status`` and the badges readable without a login (names and statuses only)."""


def _safe_next(target: str | None) -> str:
    # Only same-site paths: "//evil.example" or "https://..." would be an open redirect.
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _session_cookie(token: str, request: Request, max_age: int) -> str:
    secure = "; Secure" if request.url.scheme == "https" else ""
    return f"{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"


def _form_value(setting: SettingInfo, raw: str | None) -> object:
    """Turn a form field into the setting's JSON value (the API validates it)."""
    text = (raw or "").strip()
    if setting.kind == "bool":
        return text.lower() in {"1", "true", "on", "yes"}
    if setting.kind == "list":
        return [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]
    if setting.kind == "int":
        try:
            return int(text)
        except ValueError:
            raise SettingError(setting.key, f"expected an integer, got {text!r}") from None
    if setting.kind == "float":
        try:
            return float(text)
        except ValueError:
            raise SettingError(setting.key, f"expected a number, got {text!r}") from None
    return text


def create_router(
    data: DashboardData,
    auth: Authenticator,
    options: WebOptions | None = None,
    pages: Pages | None = None,
    alerting: AlertingData | None = None,
    chart_settings: ChartSettingsData | None = None,
    status: StatusData | None = None,
) -> APIRouter:
    """All dashboard routes, bound to the injected data access and authenticator (and, with
    ``alerting``, the incidents, silences and notifications pages and the overview's incident
    links; with ``status``, the status page, badges and the overview's statuses)."""
    opts = options or WebOptions()
    pages = pages or Pages()
    router = APIRouter(include_in_schema=False)

    def login_redirect(request: Request) -> HTTPException:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        location = "/login?" + urlencode({"next": target})
        if is_htmx(request):
            return HTTPException(401, "login required", headers={"HX-Redirect": location})
        return HTTPException(303, "login required", headers={"Location": location})

    async def session(request: Request) -> None:
        """Require the session cookie; accept ``?key=`` once and trade it for a cookie."""
        key = request.query_params.get("key")
        if key is not None and request.method == "GET":
            if not auth.check_key(key):
                raise login_redirect(request)
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "key"])
            location = request.url.path + (f"?{rest}" if rest else "")
            cookie = _session_cookie(auth.issue_session(), request, opts.session_max_age_s)
            raise HTTPException(303, "logged in", headers={"Location": location, "Set-Cookie": cookie})
        if not auth.check_session(request.cookies.get(SESSION_COOKIE)):
            raise login_redirect(request)
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
                raise HTTPException(403, "cross-origin request refused")

    Session = Depends(session)

    # ---- login ---------------------------------------------------------------------------
    @router.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return pages.render(request, "login.html", {"next": _safe_next(next), "error": None})

    @router.post("/login", response_model=None)
    async def login(
        request: Request, key: Annotated[str, Form()], next: Annotated[str, Form()] = "/"
    ) -> Response:
        if not auth.check_key(key):
            return pages.render(
                request,
                "login.html",
                {"next": _safe_next(next), "error": "That is not the API key."},
                status_code=401,
            )
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.headers["Set-Cookie"] = _session_cookie(
            auth.issue_session(), request, opts.session_max_age_s
        )
        return response

    @router.post("/logout")
    async def logout() -> Response:
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
        return pages.render(request, "dashboard.html", context, fragments=("violation_log",))

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
    ) -> HTMLResponse:
        if series and "|" in series:
            provider, model = series.split("|", 1)
        if is_htmx(request) and request.headers.get("HX-Target") == "violation-log":
            # The log's own poll (every few seconds per open tab): its query alone, no chart.
            return await _violation_log(request, provider, model, prompt_id, target, metric, hours, severity)
        all_series = await data.series()
        models = sorted({(s.provider, s.model) for s in all_series})
        if (provider, model) not in models and models:
            provider, model = models[0]
        prompts = sorted(s.prompt_id for s in all_series if (s.provider, s.model) == (provider, model))
        if prompt_id not in prompts and prompts:
            prompt_id = prompts[0]
        chart = None
        # Info-level tests fire by the hundred on a busy chart: shown only when asked for.
        shown = SEVERITY_AT_LEAST[severity]
        if provider and model and prompt_id:
            chart_query = ChartQuery(provider, model, prompt_id, metric, hours, target or "", shown)
            chart = await data.chart(chart_query)
            if target and chart.query.target not in chart.targets:
                target = ""  # a target of another model: this one's default
                chart = await data.chart(ChartQuery(provider, model, prompt_id, metric, hours, "", shown))
        log = await data.violations(ViolationFilter(severities=shown, limit=15))
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
            "log": log.items,
            "refresh_s": opts.refresh_s,
            "rebaseline": rebaseline,
            "model_rebaseline": model_rebaseline,
        }
        return pages.render(
            request,
            "dashboard.html",
            context,
            fragments=("panel", "chart_panel", "violation_log", "rebaseline"),
            status_code=status_code,
        )

    # ---- overview (the landing page) -----------------------------------------------------
    async def _active_incidents() -> list[Incident]:
        if alerting is None:
            return []
        found: list[Incident] = []
        for state in ("open", "acknowledged"):
            found += (await alerting.incidents(IncidentFilter(state=state, limit=200))).items
        return found

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
            "summary": summary(rows, view, incidents),
            "view": view,
            "x_start": x_start,
            "windows": OVERVIEW_WINDOWS_H,
            "hours": f"{hours:g}",
            # A wall screen: fresh within ~10 s of an outage, without a query storm per tab.
            "refresh_s": max(opts.refresh_s * 2.5, 5.0),
        }
        return pages.render(request, "overview.html", context, fragments=("overview",))

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
        hours: Annotated[float, Query(gt=0, le=24 * 31)] = 1,
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
        """Ask the SPC engine to re-baseline a chart: the outcome and the status to answer with."""
        who, why = by.strip(), reason.strip()
        if not who or not why:
            missing = "by" if not who else "reason"
            result = RebaselineResult(status="refused", chart_key=chart_key, error=f"{missing}: required")
            status = 422
        else:
            result = await data.rebaseline(chart_key, who, why)
            status = {"ok": 200, "refused": 409, "no_engine": 504}[result.status]
        if is_htmx(request):
            status = 200  # htmx swaps only 2xx answers, and the fragment carries the outcome
        return result, status

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
        return pages.render(
            request, "violation.html", {"d": detail, "v": detail.violation}, fragments=("actions",)
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

    async def _models_page(request: Request, hours: float, status_code: int = 200) -> HTMLResponse:
        block = pages.block_for(request, models_fragments)
        # Each block reads only what it shows: the polled health table skips the models query.
        context: dict[str, Any] = {
            "models": await data.models() if block in (None, "content", "models") else [],
            "health": await data.model_health(hours) if block != "models" else None,
            "windows": WINDOWS_H,
            "hours": f"{hours:g}",
            "refresh_s": opts.refresh_s,
        }
        return pages.render(
            request, "models.html", context, fragments=models_fragments, status_code=status_code
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
        found = await data.set_model_enabled(provider, model, enabled.lower() in {"1", "true", "on"})
        return await _models_page(request, 1, status_code=200 if found else 404)

    # ---- settings ------------------------------------------------------------------------
    async def _settings_page(
        request: Request, message: str | None = None, error: str | None = None, status: int = 200
    ) -> HTMLResponse:
        context = {"settings": await data.settings(), "message": message, "error": error}
        return pages.render(
            request, "settings.html", context, fragments=("settings_table",), status_code=status
        )

    @router.get("/settings", response_class=HTMLResponse, dependencies=[Session])
    async def settings_page(request: Request) -> HTMLResponse:
        return await _settings_page(request)

    @router.post("/settings/{key}", response_class=HTMLResponse, dependencies=[Session])
    async def put_setting(
        request: Request, key: str, value: Annotated[str | None, Form()] = None
    ) -> HTMLResponse:
        known = {s.key: s for s in await data.settings()}
        try:
            if key not in known:
                raise SettingError(key, "unknown setting")
            await data.put_setting(key, _form_value(known[key], value), opts.actor)
        except SettingError as exc:
            return await _settings_page(request, error=str(exc), status=422)
        return await _settings_page(request, message=f"{key} saved")

    # ---- first-run setup -----------------------------------------------------------------
    async def _setup_context(
        error: str | None = None, done: bool = False, saved: list[str] | None = None
    ) -> dict[str, Any]:
        known = {s.key: s for s in await data.settings()}
        enabled = [k.split(".")[1] for k in SETUP_ENABLES.values() if k in known and known[k].value is True]
        return {
            "fields": [known[k] for k in SETUP_KEYS if k in known],
            "error": error,
            "done": done,
            "saved": saved or [],
            "enabled": enabled,
        }

    @router.get("/setup", response_class=HTMLResponse, dependencies=[Session])
    async def setup_page(request: Request) -> HTMLResponse:
        return pages.render(request, "setup.html", await _setup_context(), fragments=("wizard",))

    @router.post("/setup", response_class=HTMLResponse, dependencies=[Session])
    async def setup_submit(request: Request) -> HTMLResponse:
        form = await request.form()
        known = {s.key: s for s in await data.settings()}
        saved: list[str] = []
        try:
            for key in SETUP_KEYS:
                raw = form.get(key)
                if key not in known or not isinstance(raw, str) or not raw.strip():
                    continue  # blank fields keep their current value (and secrets stay hidden)
                await data.put_setting(key, _form_value(known[key], raw), opts.actor)
                saved.append(known[key].description)
            for field_key, enable in SETUP_ENABLES.items():
                if str(form.get(field_key) or "").strip() and enable in known:
                    await data.put_setting(enable, True, opts.actor)
            if "setup.completed" in known:
                await data.put_setting("setup.completed", True, opts.actor)
        except SettingError as exc:
            ctx = await _setup_context(error=str(exc))
            return pages.render(request, "setup.html", ctx, fragments=("wizard",), status_code=422)
        # The form stays, showing what is now stored (secrets as "set"), so the next step, a
        # test message, can follow and a mistake can be corrected in place.
        ctx = await _setup_context(done=True, saved=saved)
        return pages.render(request, "setup.html", ctx, fragments=("wizard",))

    if alerting is not None:
        add_alerting_routes(router, alerting, Session, pages, opts.actor, _setup_context)
    if chart_settings is not None:
        add_chart_settings_routes(router, chart_settings, Session, pages)
    if status is not None:
        add_status_routes(
            router, status, pages, public=opts.status_public, signed_in=auth.allows, session=session
        )
    return router


def install(
    app: FastAPI,
    data: DashboardData,
    auth: Authenticator,
    options: WebOptions | None = None,
    alerting: AlertingData | None = None,
    chart_settings: ChartSettingsData | None = None,
    status: StatusData | None = None,
) -> None:
    """Mount the dashboard and its static files (htmx, CSS) on an application."""
    static_dir = files("llmscope.web") / "static"
    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")
    app.include_router(
        create_router(data, auth, options, alerting=alerting, chart_settings=chart_settings, status=status)
    )


__all__ = ["SESSION_COOKIE", "Series", "WebOptions", "create_router", "install"]
