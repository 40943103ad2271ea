"""The settings page (``/settings``): its sections, each saved whole, and the older one-setting form."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.params import Depends
from fastapi.responses import HTMLResponse

from llmscope.web.data import DashboardData, SettingError, SettingErrors
from llmscope.web.pages import Pages, is_htmx, toast_trigger, who_from
from llmscope.web.remembered_by import cookie_by
from llmscope.web.settings_form import (
    BY_ID,
    SECTIONS,
    FixedSetting,
    SectionView,
    parse_field,
    section_changes,
    section_view,
)


def add_settings_routes(
    router: APIRouter,
    data: DashboardData,
    session: Depends,
    pages: Pages,
    fixed: dict[str, list[FixedSetting]],
) -> None:
    """Register ``/settings`` and its saves behind the session dependency; ``fixed``: the settings
    shown but set only in the environment (:func:`~llmscope.web.settings_form.fixed_settings`).
    Every save names who made it (the form's ``by``, as an acknowledgement does): a blank name is
    refused, and the audit trail no longer records "dashboard", which named nobody."""

    async def _settings_page(
        request: Request, views: dict[str, SectionView] | None = None, others_by: str | None = None
    ) -> HTMLResponse:
        """``others_by``: the name the sections not in ``views`` show (None: the remembered one)."""
        stored = await data.settings()
        sections = [(views or {}).get(s.id) or section_view(s, stored, by=others_by) for s in SECTIONS]
        context = {
            "sections": sections,
            "fixed": fixed,
            "models": sorted({(s.provider, s.model) for s in await data.series()}),
        }
        return pages.render(request, "settings.html", context)

    @router.get("/settings", response_class=HTMLResponse, dependencies=[session])
    async def settings_page(request: Request) -> HTMLResponse:
        return await _settings_page(request)

    @router.post("/settings/section/{section_id}", response_class=HTMLResponse, dependencies=[session])
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
        who, by_error = who_from(form.get("by"), "saved")
        if by_error:
            errors = {**errors, "by": by_error}
        if not errors and (changes.values or changes.remove):
            try:
                await data.put_settings(changes.values, who, changes.remove)
            except SettingErrors as exc:
                errors = exc.errors
        if errors:
            labels = {f.key: f.label for f in section.fields} | {"by": "Saved by"}
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
                request, "settings.html", {"sec": view}, block="section", status_code=status, toast=toast
            )
        # The submitted section shows its name as sent; a refusal remembers nothing, so the
        # page's other sections keep the browser's name (they showed the refused one).
        others_by = cookie_by(request) if errors else None
        response = await _settings_page(request, {section.id: view}, others_by)
        response.status_code = status
        return response

    @router.post("/settings/{key}", response_class=HTMLResponse, dependencies=[session])
    async def put_setting(
        request: Request,
        key: str,
        value: Annotated[str | None, Form()] = None,
        by: Annotated[str, Form()] = "",
    ) -> HTMLResponse:
        """One setting by key (the page before the sections; kept for scripts and old tabs)."""
        known = {s.key: s for s in await data.settings()}
        try:
            if key not in known:
                raise SettingError(key, "unknown setting")
            who, by_error = who_from(by, "saved")
            if by_error:
                raise SettingError("by", by_error.removeprefix("by: "))
            await data.put_setting(key, parse_field(known[key], value), who)
        except SettingError as exc:
            # Refused: the sections' forms keep the browser's name, not this one's.
            response = await _settings_page(request, others_by=cookie_by(request))
            response.status_code = 422
            response.headers.update(toast_trigger(str(exc), "error"))
            return response
        response = await _settings_page(request)
        response.headers.update(toast_trigger(f"{key} saved"))
        return response
