"""The first-run setup wizard (``/setup``): the alert channels and tickets on one form, saved whole.
Its test sends are the alerting pages' (:mod:`llmscope.web.alerting_routes`)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.params import Depends
from fastapi.responses import HTMLResponse

from llmscope.web.data import DashboardData, SettingError, SettingErrors
from llmscope.web.pages import Pages, is_htmx, who_from
from llmscope.web.settings_form import BY_ID, SECTIONS, parse_field

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
# The wizard's groups, under the settings page's headings; the optional channels start folded.
SECTION_OF = {f.key: s for s in SECTIONS for f in s.fields}
OPEN_GROUPS = frozenset({"email", "policy"})
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


def _shown(value: object) -> str:
    """A stored value as the form shows it (a list comma-separated, a switch true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


async def setup_context(
    data: DashboardData,
    error: str | None = None,
    done: bool = False,
    saved: list[str] | None = None,
    typed: Mapping[str, str] | None = None,
    field_errors: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The wizard's fields as stored, with what the last answer said of them."""
    known = {s.key: s for s in await data.settings()}
    switches = dict.fromkeys(SETUP_ENABLES.values())  # in order, once (Slack has two fields)
    enabled = [k.split(".")[1] for k in switches if k in known and known[k].value is True]
    fields = [known[k] for k in SETUP_KEYS if k in known]
    errors = field_errors or {}
    typed = typed or {}
    groups: dict[str, dict[str, Any]] = {}
    for s in fields:
        section = SECTION_OF[s.key]
        group = groups.setdefault(
            section.id, {"id": section.id, "title": section.title, "fields": [], "open": False}
        )
        group["fields"].append(s)
        # Open: the groups every setup needs, and any holding an error or a change just typed.
        changed = s.key in typed and typed[s.key].strip() != _shown(s.value)
        group["open"] |= section.id in OPEN_GROUPS or s.key in errors or changed
    first_error = next((k for k in (*SETUP_KEYS, "by") if k in errors), None)
    return {
        "fields": fields,
        "groups": list(groups.values()),
        "first_error": first_error,
        "error": error,
        "done": done,
        "saved": saved or [],
        "enabled": enabled,
        "typed": typed,
        "field_errors": errors,
    }


def add_setup_routes(router: APIRouter, data: DashboardData, session: Depends, pages: Pages) -> None:
    """Register ``GET``/``POST /setup`` behind the session dependency. A save names who made it
    (``by``), as the settings page's do: a blank name is refused."""

    @router.get("/setup", response_class=HTMLResponse, dependencies=[session])
    async def setup_page(request: Request) -> HTMLResponse:
        return pages.render(request, "setup.html", await setup_context(data), fragments=("wizard",))

    @router.post("/setup", response_class=HTMLResponse, dependencies=[session])
    async def setup_submit(request: Request) -> HTMLResponse:
        form = await request.form()
        known = {s.key: s for s in await data.settings()}
        values: dict[str, object] = {}
        errors: dict[str, str] = {}
        who, by_error = who_from(form.get("by"), "saved")
        if by_error:
            errors["by"] = by_error.removeprefix("by: ")
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
                await data.put_settings(values, who)
            except SettingErrors as exc:
                errors = exc.errors
        if errors:
            named = "; ".join(
                f"{k} ({known[k].description if k in known else 'who saves'}): {m}" for k, m in errors.items()
            )
            # A refused form comes back as typed, to be corrected rather than typed again; never
            # a secret (the page would carry it), and a blank field still shows what it keeps.
            typed = {
                k: raw
                for k in SETUP_KEYS
                if k in known and not known[k].secret and isinstance(raw := form.get(k), str) and raw.strip()
            }
            ctx = await setup_context(data, error=f"Not saved: {named}", typed=typed, field_errors=errors)
            ctx["by"] = who
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
        ctx = await setup_context(data, done=True, saved=saved)
        ctx["generated_secret"] = generated
        ctx["by"] = who
        return pages.render(request, "setup.html", ctx, fragments=("wizard",))
