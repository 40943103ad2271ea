"""``GET /api/status``: each enabled model's status and the overall one.

Readable with the read scope (or the dashboard's session) as the rest of ``/api``; with
``LLMSCOPE_STATUS_PUBLIC`` also without, but then only model names and statuses are answered.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from llmscope.api.auth import KeyAuth, refusal
from llmscope.web.status import PublicStatusReport, StatusReport, public_view
from llmscope.web.status_routes import StatusData


def router(status: StatusData, auth: KeyAuth, *, public: bool) -> APIRouter:
    api = APIRouter(prefix="/api", tags=["status"])

    @api.get("/status", response_model=StatusReport | PublicStatusReport)
    async def get_status(request: Request) -> StatusReport | PublicStatusReport:
        """Overall and per-model status: ``operational``, ``degraded``, ``outage``, ``maintenance``,
        ``stopped`` (probed before, every target stopped reporting; added after the others: read a
        status you do not know as ``unknown``) or ``unknown`` (never probed). The overall status:
        the worst health wins; models that stopped make it ``stopped`` only when all did, else
        ``degraded`` (see the README's status rules).

        With the key: since when (where known), the last probe, 24 h and 7 d uptime (successful
        probes / probes) and the reasons. Without it, when the status page is public: provider,
        model and status only.
        """
        principal = await auth.principal(request)
        refused = refusal(principal, request.method, request.url.path, auth.configured)
        if refused is None:
            return await status.status()
        if not public:
            await auth.require(request)  # raises the API's usual 401, or 403 for another scope
        return public_view(await status.status())

    return api
