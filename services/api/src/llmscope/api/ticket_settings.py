"""The ticket tracker's settings checked together (each alone: known_settings.py).

A tracker chosen in the settings is configured by the settings alone (the alerter then ignores
its ``LLMSCOPE_TICKETS_*`` variables), so the settings must be complete: a project (``owner/repo``
for GitHub), a token, and Jira's site URL. A save that would leave them incomplete is refused,
naming the setting at fault.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmscope.web.data import SettingError

PREFIX = "alert.tickets."
TRACKER = "alert.tickets.tracker"
TOKEN = "alert.tickets.token"


class TicketConflict(SettingError):
    """A ticket setting valid alone that does not agree with the others as stored (409: the
    request is well formed; the state it would leave is not)."""


def ticket_errors(values: Mapping[str, object]) -> dict[str, str]:
    """Setting key -> what is wrong, for the ticket settings as they would be stored."""
    tracker = values.get(TRACKER) or "none"
    if tracker == "none":
        return {}
    errors: dict[str, str] = {}
    project = str(values.get("alert.tickets.project") or "").strip()
    if not project:
        errors["alert.tickets.project"] = (
            f"required when the tracker is {tracker} (owner/repo for github, a project key for jira,"
            " a project id or group/project path for gitlab)"
        )
    elif tracker == "github" and (
        project.count("/") != 1 or project.startswith("/") or project.endswith("/")
    ):
        errors["alert.tickets.project"] = f"expected owner/repo for github, got {project!r}"
    if tracker == "jira" and not values.get("alert.tickets.url"):
        errors["alert.tickets.url"] = "required for jira: the site's base URL (https://acme.atlassian.net)"
    if not values.get(TOKEN):
        errors[TOKEN] = f"required when the tracker is {tracker}"
    return errors
