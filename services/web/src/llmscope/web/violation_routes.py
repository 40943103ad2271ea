"""The violation pages: the filtered list (``/violations``), one violation with the probes around
it, and what people do from there (acknowledge, resolve, re-baseline its chart)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.params import Depends
from fastapi.responses import HTMLResponse

from llmscope.web.data import DashboardData, ViolationFilter
from llmscope.web.pages import BY_REQUIRED, Pages, ask_rebaseline, is_htmx, rebaseline_toast


def add_violation_routes(router: APIRouter, data: DashboardData, session: Depends, pages: Pages) -> None:
    """Register ``/violations`` and ``/violations/{violation_id}[/...]`` behind the session
    dependency. An acknowledgement or resolution needs the name of who did it (``by``): a blank
    one is refused (the audit trail recorded "dashboard", which named nobody)."""

    @router.get("/violations", response_class=HTMLResponse, dependencies=[session])
    async def violations(
        request: Request,
        series: str | None = None,
        rule: str | None = None,
        severity: str | None = None,
        state: str | None = None,
        acknowledged: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
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
            since=since,
            until=until,
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
            # A span (a comparison chart's shared mark links to its violations): kept by the
            # selectors and the next page.
            "since": since.isoformat() if since else "",
            "until": until.isoformat() if until else "",
        }
        context = {
            "page": page,
            "span": (since, until) if since or until else None,
            "all_times": urlencode({k: v for k, v in params.items() if v and k not in ("since", "until")}),
            "models": sorted({(s.provider, s.model) for s in all_series}),
            "f": params,
            "next_qs": (
                urlencode({k: v for k, v in {**params, "cursor": page.next_cursor}.items() if v})
                if page.next_cursor
                else None
            ),
        }
        return pages.render(request, "violations.html", context, fragments=("violation_table",))

    @router.get("/violations/{violation_id}", response_class=HTMLResponse, dependencies=[session])
    async def violation_detail(request: Request, violation_id: str) -> HTMLResponse:
        detail = await data.violation(violation_id)
        if detail is None:
            return pages.render(request, "not_found.html", {"what": "violation"}, status_code=404)
        return pages.render(
            request, "violation.html", {"d": detail, "v": detail.violation}, fragments=("actions",)
        )

    @router.post("/violations/{violation_id}/rebaseline", response_class=HTMLResponse, dependencies=[session])
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
        result, status = await ask_rebaseline(data, request, chart_key, by, reason)
        return pages.render(
            request,
            "violation.html",
            {"d": detail, "v": detail.violation, "rebaseline": result},
            fragments=("rebaseline",),
            status_code=status,
            toast=rebaseline_toast(result.status, result.error, "Chart re-baselined"),
        )

    async def _act(request: Request, violation_id: str, action: str, by: str, note: str) -> HTMLResponse:
        who = by.strip()
        if not who:
            detail = await data.violation(violation_id)
            if detail is None:
                return pages.render(request, "not_found.html", {"what": "violation"}, status_code=404)
            error = BY_REQUIRED.format(done="acknowledged" if action == "acknowledge" else "resolved")
            return pages.render(
                request,
                "violation.html",
                {"d": detail, "v": detail.violation, "action_error": error},
                fragments=("actions",),
                status_code=200 if is_htmx(request) else 422,  # htmx swaps only a 2xx answer in
                toast=(error, "error"),
            )
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
        "/violations/{violation_id}/acknowledge", response_class=HTMLResponse, dependencies=[session]
    )
    async def acknowledge(
        request: Request,
        violation_id: str,
        by: Annotated[str, Form()] = "",
        note: Annotated[str, Form()] = "",
    ) -> HTMLResponse:
        return await _act(request, violation_id, "acknowledge", by, note)

    @router.post("/violations/{violation_id}/resolve", response_class=HTMLResponse, dependencies=[session])
    async def resolve(
        request: Request,
        violation_id: str,
        by: Annotated[str, Form()] = "",
        note: Annotated[str, Form()] = "",
    ) -> HTMLResponse:
        return await _act(request, violation_id, "resolve", by, note)
