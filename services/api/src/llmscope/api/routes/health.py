"""Liveness, readiness and Prometheus metrics: no authentication."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from llmscope.api.runtime import Runtime


class Readiness(BaseModel):
    """Whether the API can serve: each dependency's check, ``ok`` or why not."""

    ready: bool
    checks: dict[str, str]


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(tags=["health"])

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @api.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "not ready: `checks` names what is away"}},
    )
    async def readyz() -> JSONResponse:
        """Postgres answers and NATS is connected."""
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(rt.store.ping(), 2.0)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        nc = rt.nc
        checks["nats"] = "ok" if nc is not None and nc.is_connected else "unavailable"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @api.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(rt.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return api
