"""The FastAPI application: the JSON API under ``/api``, the dashboard at ``/``, health and metrics.

``create_app(settings)`` builds it; the lifespan opens the Postgres pool (applying migrations),
connects to NATS, creates the streams and, with ``settings.persister``, runs the persister.
Everything under ``/api`` needs a key of the route's scope as ``Authorization: Bearer <key>``
(:mod:`llmscope.api.auth`; for reads, the dashboard's session cookie does too); ``/healthz``,
``/readyz`` and ``/metrics`` are open, and so are ``/api/status``, ``/status`` and the badges,
with names and statuses only, when ``LLMSCOPE_STATUS_PUBLIC`` is true. With
``LLMSCOPE_INGEST_KEY`` set, ``POST /v1/traces`` and ``/v1/metrics`` are the OTLP receiver
(:mod:`llmscope.api.otlp`), open to the ingest scope.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib.util import find_spec
from typing import Any

import asyncpg
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmscope.api import openapi_errors, unavailable
from llmscope.api.charts import EngineUnavailable
from llmscope.api.cursors import BadCursor
from llmscope.api.frontdoor import FrontDoor, rate_limited
from llmscope.api.frontdoor import unavailable as auth_unavailable
from llmscope.api.otlp import receiver as otlp
from llmscope.api.routes import (
    admin,
    alerts,
    charts,
    export,
    health,
    incidents,
    silences,
    spc_config,
    stats,
    status,
    violations,
)
from llmscope.api.runtime import Runtime
from llmscope.api.settings import ApiSettings
from llmscope.api.status_queries import StatusReader
from llmscope.api.store_base import NotReady
from llmscope.api.trends import TrendQueries
from llmscope.web.auth import AuthUnavailable, RateLimited
from llmscope.web.compression import SecretFreeGZip, mark_secret_free, secret_free
from llmscope.web.data import SettingError
from llmscope.web.routes import WebOptions, install

VERSION = "0.1.0"
# Swagger UI's files come from the swagger-ui-py wheel (its ``static`` folder), served by us: a
# self-hosted monitor's /docs must work without internet access. Found by path, not imported:
# the package's Python half (framework handlers) is of no use here.
SWAGGER_UI_URL = "/static/swagger-ui"


def swagger_ui_dir() -> str:
    spec = find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed (a dependency of llmscope-api)")
    return f"{next(iter(spec.submodule_search_locations))}/static"


class MetricsMiddleware:
    """Counts requests by route template (not raw path: model names would explode the labels)."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.metrics = runtime.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.http_requests.labels(scope["method"], name, str(status)).inc()
            self.metrics.http_seconds.labels(name).observe(time.perf_counter() - started)


def create_app(settings: ApiSettings, *, clock: Callable[[], float] = time.time) -> FastAPI:
    """The API and dashboard for one process; ``clock`` times sessions and the failure limit."""
    rt = Runtime(settings, clock=clock)
    app = FastAPI(
        title="LLMscope API",
        version=VERSION,
        description="Statistical Process Control for LLM endpoints. "
        "Authenticate with `Authorization: Bearer <key>`: `LLMSCOPE_API_KEY` (admin, every route), "
        "`LLMSCOPE_READ_KEY` (GET routes) or `LLMSCOPE_INGEST_KEY` (`POST /api/stats`, `/v1/traces`).",
        lifespan=rt.lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = rt
    # The JSON API's answers never echo a key or a token (settings say only whether a secret is
    # set): they may be gzipped (llmscope.web.compression: pages, with the CSRF token, never are).
    public = [Depends(secret_free)]
    app.include_router(health.router(rt), dependencies=public)
    # Authenticates by itself: a public status page answers anonymous readers too.
    status_reader = StatusReader(rt.store, silences=rt.alerting.silences)
    app.include_router(
        status.router(status_reader, rt.auth, public=settings.status_public), dependencies=public
    )

    async def scoped_and_secret_free(request: Request) -> None:
        """The key's scope, then the secret-free mark: one dependency for the two, since FastAPI
        solving each costs as much as the check itself (issue 13, one-event POST /api/stats)."""
        await rt.auth.require(request)
        mark_secret_free(request)

    api_route = [Depends(scoped_and_secret_free)]
    for module in (stats, charts, violations, admin, export, alerts, incidents, silences, spc_config):
        app.include_router(module.router(rt), dependencies=api_route)
    if settings.ingest_key:
        # The front door checks the ingest scope (and the body's size) before the route runs.
        traces = otlp.TraceReceiver(lambda: rt.publisher, rt.metrics, max_body_bytes=settings.max_body_bytes)
        metrics = otlp.MetricsReceiver(
            lambda: rt.publisher, rt.metrics, max_body_bytes=settings.max_body_bytes
        )
        app.include_router(otlp.router(traces, metrics))

    unavailable.install(app)
    retry = {"Retry-After": str(unavailable.RETRY_AFTER_S)}

    @app.exception_handler(RateLimited)
    async def too_many_failures(_: Request, exc: RateLimited) -> Response:
        return rate_limited(exc)

    @app.exception_handler(AuthUnavailable)
    async def sessions_unavailable(request: Request, exc: AuthUnavailable) -> Response:
        return auth_unavailable(request, exc)

    @app.exception_handler(asyncpg.DataError)
    async def unstorable(_: Request, exc: asyncpg.DataError) -> JSONResponse:
        # A value Postgres cannot take (a NUL in a JSON string, a number out of its column's
        # range) is the caller's to fix: a 422 with Postgres's reason, never a 500.
        detail = [{"loc": ["body"], "msg": f"value cannot be stored: {exc}", "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(NotReady)
    async def not_ready(_: Request, exc: NotReady) -> JSONResponse:
        return JSONResponse({"detail": f"starting or stopping: {exc}"}, status_code=503, headers=retry)

    @app.exception_handler(EngineUnavailable)
    async def engine_unavailable(_: Request, exc: EngineUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"starting or stopping: {exc}"}, status_code=503, headers=retry)

    @app.exception_handler(BadCursor)
    async def bad_cursor(_: Request, exc: BadCursor) -> JSONResponse:
        detail = [{"loc": ["query", "cursor"], "msg": str(exc), "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(SettingError)
    async def bad_setting(_: Request, exc: SettingError) -> JSONResponse:
        detail = [{"loc": ["body", "value"], "field": exc.key, "msg": exc.message, "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # The chart routes answer with msgspec structs: add their schemas to the components.
        if app.openapi_schema is None:
            schema = default_openapi()
            openapi_errors.document_errors(schema)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(charts.openapi_components())
            components.update(spc_config.openapi_components())
            components.update(admin.openapi_components())
            components.update(stats.openapi_components())
            components.update(openapi_errors.openapi_components())
        return app.openapi_schema or default_openapi()

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> RedirectResponse:
        return RedirectResponse("/static/favicon.svg")

    # Before the dashboard's own /static mount, which would otherwise answer these paths.
    app.mount(SWAGGER_UI_URL, StaticFiles(directory=swagger_ui_dir()), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} · docs",
            swagger_js_url=f"{SWAGGER_UI_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_UI_URL}/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    install(
        app,
        rt.store,
        rt.auth,
        WebOptions(
            refresh_s=settings.refresh_s,
            session_max_age_s=int(settings.session_days * 86400),
            status_public=settings.status_public,
            scoped_keys=frozenset(
                scope for scope, key in (("read", settings.read_key), ("ingest", settings.ingest_key)) if key
            ),
            retention_days={
                "telemetry": settings.retention_telemetry_days,
                "rollups": settings.retention_rollup_days,
                "minute_rollups": settings.retention_minute_rollup_days,
                "violations": settings.retention_violations_days,
                "deadletters": settings.retention_deadletter_days,
            },
        ),
        alerting=rt.alerting,
        chart_settings=rt.spc_config,
        status=status_reader,
        trends=TrendQueries(rt.store),
        live=rt.live,
        traffic=rt.charts,
    )
    # Innermost: what the routes marked is read after they ran; FrontDoor's refusals stay as they are.
    app.add_middleware(SecretFreeGZip)
    # Around every route: nothing reads a body before its credential and its size are checked.
    app.add_middleware(
        FrontDoor,
        auth=rt.auth,
        max_body_bytes=settings.max_body_bytes,
        receiver_on=bool(settings.ingest_key),
        routes=app.router.routes,
        lanes={("POST", "/api/stats"): stats.front_door_lane(rt)},
    )
    app.add_middleware(MetricsMiddleware, runtime=rt)
    return app
