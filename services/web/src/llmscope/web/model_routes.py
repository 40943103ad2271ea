"""The models page (``/models``): each model's health by target, and its switch (probed or not)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.params import Depends
from fastapi.responses import HTMLResponse

from llmscope.web.data import HEALTH_MAX_HOURS, OVERVIEW_WINDOWS_H, DashboardData
from llmscope.web.pages import Pages


def add_model_routes(
    router: APIRouter, data: DashboardData, session: Depends, pages: Pages, refresh_s: float
) -> None:
    """Register ``/models`` and ``/models/toggle`` behind the session dependency."""

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
            "refresh_s": refresh_s,
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

    @router.get("/models", response_class=HTMLResponse, dependencies=[session])
    async def models_page(
        request: Request, hours: Annotated[float, Query(gt=0, le=HEALTH_MAX_HOURS)] = 1
    ) -> HTMLResponse:
        return await _models_page(request, hours)

    @router.post("/models/toggle", response_class=HTMLResponse, dependencies=[session])
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
