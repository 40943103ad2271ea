"""Postgres or NATS away is 503 with ``Retry-After``, on every route: never a 500.

A route does not catch infrastructure errors itself; they reach these handlers, which answer
503 for what waiting can fix (a refused or dropped connection, a pool that cannot connect in
time, a query the statement timeout ended, NATS not connected or not confirming) and let
anything else stay the 500 it is (a bug, a data error). JSON under ``/api``, a short page for the
dashboard (a browser shows it and the page's own refresh tries again).
"""

from __future__ import annotations

import html

import asyncpg
import nats.errors
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from nats.js.errors import ServiceUnavailableError

from llmscope.bus.publisher import PublishFailed
from llmscope.config.logs import get_logger
from llmscope.config.startup import postgres_unavailable

log = get_logger("llmscope.api.unavailable")

RETRY_AFTER_S = 5

_NATS_AWAY: tuple[type[BaseException], ...] = (
    PublishFailed,
    ServiceUnavailableError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.TimeoutError,
)


def unavailable_reason(exc: BaseException) -> str | None:
    """Why ``exc`` means "a dependency is away, try later" (None: it does not)."""
    if isinstance(exc, _NATS_AWAY):
        return "message bus (NATS) unavailable"
    if isinstance(exc, asyncpg.QueryCanceledError):
        return "database query timed out (LLMSCOPE_DB_STATEMENT_TIMEOUT_S)"
    if postgres_unavailable(exc):
        # OSError and TimeoutError (refused, unreachable, the pool's connect or the client's
        # command timeout) also land here: every route's I/O is Postgres or NATS.
        return "database unavailable"
    return None


def unavailable_response(request: Request, reason: str) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    if request.url.path.startswith("/api") or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"detail": f"{reason}: retry later"}, status_code=503, headers=headers)
    page = (
        "<!doctype html><title>LLMscope: unavailable</title>"
        f"<meta http-equiv=refresh content={RETRY_AFTER_S}>"
        f"<p>LLMscope cannot answer just now: {html.escape(reason)}. This page tries again by itself.</p>"
    )
    return HTMLResponse(page, status_code=503, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    async def handler(request: Request, exc: Exception) -> Response:
        reason = unavailable_reason(exc)
        if reason is None:
            raise exc  # not ours to soften: the server error it is
        log.warning("dependency unavailable", path=request.url.path, reason=reason, error=repr(exc)[:200])
        return unavailable_response(request, reason)

    # Looked up along each exception's MRO: these bases cover asyncpg's connection errors,
    # OSError (refused, reset) and TimeoutError (pool connect, command timeout), and NATS's.
    for kind in (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, nats.errors.Error, PublishFailed):
        app.add_exception_handler(kind, handler)
