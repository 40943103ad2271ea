"""The status page (``/status``) and status badges (``/badge/{provider}/{model}.svg``).

Who sees what: a signed-in reader (session cookie, or ``Authorization: Bearer <key>``) sees each
model's status with since when, the last probe and 24 h / 7 d uptime. Anyone else is sent to the
login (the page) or gets a 401 (a badge), unless the status page is public
(``LLMSCOPE_STATUS_PUBLIC``); then they see model names and statuses and nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from llmscope.web.badge import render_badge, status_badge
from llmscope.web.pages import Pages
from llmscope.web.status import StatusReport, overall, public_view

# Slower than the dashboard's tiles: nobody reads a status page at 2 s, and a public page may
# have many readers at once.
STATUS_REFRESH_S = 30
BADGE_MAX_AGE_S = 60
SVG = "image/svg+xml"


class StatusData(Protocol):
    """The status report; the API implements it over Postgres and the engine's charts."""

    async def status(self) -> StatusReport: ...


def add_status_routes(
    router: APIRouter,
    data: StatusData,
    pages: Pages,
    *,
    public: bool,
    signed_in: Callable[[Request], Awaitable[bool]],
    session: Callable[[Request], Awaitable[None]],
) -> None:
    """Add the status page and badges; ``session`` raises the login redirect (or trades ``?key=``)."""

    @router.get("/status", response_class=HTMLResponse)
    async def status_page(request: Request) -> HTMLResponse:
        full = await signed_in(request)
        if not full and (not public or "key" in request.query_params):
            await session(request)  # answers with a login redirect, or a cookie for ?key=
        report = await data.status()
        context: dict[str, Any] = {
            "full": full,
            "overall": report.status,
            # The same words on the public page: "stopped reporting" is a status of its own now.
            "overall_label": report.label,
            "models": report.models if full else public_view(report).models,
            "generated_at": report.generated_at if full else None,
            "refresh_s": STATUS_REFRESH_S,
            "public": public,
        }
        return pages.render(
            request, "status.html", context, fragments=("status_list",), polled=("status_list",)
        )

    def svg(body: str, status_code: int, cache: str) -> Response:
        return Response(body, status_code=status_code, media_type=SVG, headers={"Cache-Control": cache})

    @router.get("/badge/status.svg")
    async def overall_badge(request: Request) -> Response:
        """Every model's status in one badge, by :func:`~llmscope.web.status.overall`."""
        scope = "public" if public else "private"
        if not await signed_in(request) and not public:
            response = svg(render_badge("status", "login required", "#9f9f9f"), 401, "no-store")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        verdict = overall((await data.status()).models)
        body = status_badge("status", verdict.status, verdict.label)
        return svg(body, 200, f"{scope}, max-age={BADGE_MAX_AGE_S}")

    # Model names hold "/", ":" and "." (org/model, llama3.1:8b): the path converter takes the
    # rest of the path, and the one ".svg" suffix is cut off it.
    @router.get("/badge/{provider}/{model:path}")
    async def badge(request: Request, provider: str, model: str) -> Response:
        name = model.removesuffix(".svg")
        # A shared cache may keep a public badge; one shown after a login is the reader's alone.
        scope = "public" if public else "private"
        cache = f"{scope}, max-age={BADGE_MAX_AGE_S}"
        if not await signed_in(request) and not public:
            # Still an image, so an embedding page shows why instead of a broken image; and no
            # lookup, so an anonymous reader learns nothing of which models exist.
            body = render_badge(name or "status", "login required", "#9f9f9f")
            response = svg(body, 401, "no-store")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        found = (await data.status()).find(provider, name) if model.endswith(".svg") else None
        if found is None:
            return svg(status_badge(name or "status", "unknown"), 404, cache)
        return svg(status_badge(name, found.status), 200, cache)
