"""What a ticket says: its title, body and comments, built from the incident (pure).

A text is a list of sections (an optional heading and a paragraph); each tracker renders them in
its own markup (Markdown for GitHub and GitLab, wiki markup for Jira v2, ADF for Jira v3). The
body reuses the incident's written analysis and its draft customer notice. ``snapshot()`` is what
the ticket has been told so far; ``update_comment()`` words what changed since.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from llmscope.proto.incident import IncidentEvent

MARKER_PREFIX = "llmscope-incident"
TITLE_MAX = 250  # Jira's summary holds 255 characters; GitHub and GitLab allow more


@dataclass(frozen=True, slots=True)
class Section:
    heading: str | None
    text: str


def marker_for(incident_id: str) -> str:
    """The incident's mark on its ticket (a Jira label, a hidden line in a GitHub/GitLab body):
    how a ticket whose creation was answered but not recorded is found again."""
    return f"{MARKER_PREFIX}-{re.sub(r'[^A-Za-z0-9_.-]', '_', incident_id)}"


def incident_url(public_url: str, incident_id: str) -> str:
    return f"{public_url.rstrip('/')}/incidents/{incident_id}"


def _when(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M UTC") if ts else "-"


def title(ev: IncidentEvent) -> str:
    text = f"[LLMscope] {ev.severity.upper()}: {ev.title}"
    return text if len(text) <= TITLE_MAX else text[: TITLE_MAX - 3] + "..."


def body(ev: IncidentEvent, public_url: str) -> list[Section]:
    where = f"host {ev.host}" if ev.host else f"provider {ev.provider}"
    facts = "\n".join(
        [
            f"Models: {', '.join(ev.models)} on {where}" + (" (cascade)" if ev.cascade else ""),
            f"Opened: {_when(ev.opened_at)}",
            f"Violations: {ev.violation_count}",
            f"Incident: {incident_url(public_url, ev.incident_id)}",
        ]
    )
    out = [Section(None, f"LLMscope opened this ticket for a {ev.severity} incident."), Section(None, facts)]
    a = ev.analysis
    if a is not None:
        out.append(Section("What happened", a.summary))
        if a.hypothesis:
            out.append(Section("Likely cause", a.hypothesis))
        if a.customer_notice:
            out.append(Section("Draft customer notice", a.customer_notice))
    if (seen := seen_before(ev, public_url)) is not None:
        out.append(seen)
    return out


def seen_before(ev: IncidentEvent, public_url: str) -> Section | None:
    r = ev.resembles
    if r is None:
        return None
    how = f"resolved {_when(r.resolved_at)}" + (f" by {r.resolved_by}" if r.resolved_by else "")
    note = f"\nResolution note: {r.resolved_note}" if r.resolved_note else "\n(No resolution note.)"
    return Section("Seen before", f"{r.title} ({how}): {incident_url(public_url, r.incident_id)}{note}")


def snapshot(ev: IncidentEvent) -> dict[str, Any]:
    """What the ticket says so far, stored with it."""
    return {
        "state": ev.state,
        "violations": ev.violation_count,
        "models": list(ev.models),
        "acknowledged_by": ev.acknowledged_by,
    }


def update_comment(told: dict[str, Any], ev: IncidentEvent) -> list[Section] | None:
    """A comment for what changed since ``told`` (violations, models, acknowledgement), or None.

    A new analysis alone does not comment: it follows every new violation, and the comment for
    that violation is written once the analysis has settled (tickets/sync.py), so it carries it.
    """
    lines = []
    new_models = [m for m in ev.models if m not in told.get("models", [])]
    if new_models:
        lines.append(f"Now also affected: {', '.join(new_models)} (models: {', '.join(ev.models)}).")
    before = int(told.get("violations", 0))
    if ev.violation_count > before:
        lines.append(f"{ev.violation_count} violations so far ({ev.violation_count - before} new).")
    if ev.acknowledged_by and ev.acknowledged_by != told.get("acknowledged_by"):
        note = f": {ev.acknowledged_note}" if ev.acknowledged_note else ""
        lines.append(f"Acknowledged by {ev.acknowledged_by} at {_when(ev.acknowledged_at)}{note}")
    if not lines:
        return None
    out = [Section("LLMscope update", "\n".join(lines))]
    if ev.analysis is not None:
        out.append(Section("Analysis", ev.analysis.summary))
    return out


def resolution_comment(ev: IncidentEvent) -> list[Section]:
    lasted = ""
    if ev.resolved_at is not None:
        minutes = max(0, round((ev.resolved_at - ev.opened_at).total_seconds() / 60))
        lasted = f" after {minutes // 60} h {minutes % 60} min" if minutes >= 60 else f" after {minutes} min"
    text = f"Resolved{lasted} by {ev.resolved_by or 'LLMscope'} at {_when(ev.resolved_at)}."
    if ev.resolved_note:
        text += f"\nResolution note: {ev.resolved_note}"
    return [Section("LLMscope: resolved", text + "\nLLMscope closes this ticket.")]


def reopen_comment(ev: IncidentEvent) -> list[Section]:
    """The incident fires again: a violation resolved by hand that the engine never cleared was
    paged again (``ev.repaged``), and its ticket, closed with the resolution, opens again."""
    lines = [
        f"Paged again at {_when(r.repaged_at)}: still failing after it was resolved"
        + (f" by {r.resolved_by}" if r.resolved_by else "")
        + (f" at {_when(r.resolved_at)}" if r.resolved_at else "")
        + f" (violation {r.episode_id}); the engine has not cleared it."
        for r in ev.repaged
    ] or ["The incident is open again."]
    return [Section("LLMscope: still failing", "\n".join(lines) + "\nLLMscope reopens this ticket.")]


def markdown(sections: list[Section], marker: str | None = None) -> str:
    parts = [f"### {s.heading}\n\n{s.text}" if s.heading else s.text for s in sections]
    if marker:
        parts.append(f"<!-- {marker} -->")
    return "\n\n".join(parts)
