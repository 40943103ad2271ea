"""Every ticket text the product writes, per tracker markup, against golden files beside the
channels' (``tests/alerter/golden/ticket-<case>.<markup>``): the ticket opened for a critical
incident (title and body, with the analysis, the draft customer notice and the resembled
incident's resolution), an update comment (a second model, new violations, an acknowledgement)
the resolution comment, and the comment reopening it (paged again after a hand resolution).
``md``: GitHub and GitLab (Markdown, the marker a hidden line);
``jira-wiki``: Jira REST v2; ``jira-adf.json``: Jira REST v3 (Atlassian Document Format).
Regenerate after an intended change with ``LLMSCOPE_UPDATE_GOLDEN=1`` and review the diff."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
from msgspec import structs

from llmscope.alerter.tickets import text
from llmscope.alerter.tickets.jira import adf, wiki
from llmscope.alerter.tickets.text import Section
from llmscope.proto.incident import IncidentAnalysis, IncidentEvent, RepagedEpisode, ResembledIncident
from tests.alerter.factories import T0
from tests.alerter.test_messages import GOLDEN

URL = "https://scope.example"
OPENED = IncidentEvent(
    id="inc-v1:3",
    ts=T0,
    incident_id="inc-v1",
    revision=3,
    change="analyzed",
    state="open",
    title="ollama/llama3.1:8b on gpu-1: latency_ms out of control (CUSUM)",
    severity="critical",
    provider="ollama",
    host="gpu-1",
    models=("llama3.1:8b",),
    violation_count=2,
    opened_at=T0,
    analysis=IncidentAnalysis(
        summary="p50 latency of llama3.1:8b rose 85 % over its 0.88 s baseline (CUSUM, sustained).",
        llm_status="ok",
        hypothesis="A co-tenant batch job on gpu-1 took the GPU.",
        customer_notice="Some answers from our assistant are slower than usual; we are on it.",
    ),
    resembles=ResembledIncident(
        incident_id="inc-v0",
        title="ollama/llama3.1:8b on gpu-1: latency_ms out of control (CUSUM)",
        score=0.9,
        resolved_at=T0 - timedelta(days=6),
        resolved_by="ana",
        resolved_note="Moved the nightly batch job off gpu-1.",
    ),
)
UPDATED = structs.replace(
    OPENED,
    models=("llama3.1:8b", "qwen2:7b"),
    cascade=True,
    violation_count=4,
    acknowledged_by="bo",
    acknowledged_at=T0 + timedelta(minutes=6),
    acknowledged_note="looking at gpu-1",
)
RESOLVED = structs.replace(
    UPDATED,
    state="resolved",
    resolved_at=T0 + timedelta(minutes=75),
    resolved_by="bo",
    resolved_note="Killed the stray batch job.",
)

REOPENED = structs.replace(
    UPDATED,
    acknowledged_by=None,
    acknowledged_at=None,
    acknowledged_note=None,
    repaged=(
        RepagedEpisode(
            episode_id="v1-llama3.1_8b-CUSUM",
            repaged_at=T0 + timedelta(minutes=135),
            resolved_by="bo",
            resolved_at=T0 + timedelta(minutes=75),
        ),
    ),
)
"""Resolved by hand, the engine never clearing it: paged again an hour later, open again."""


def sections(case: str) -> tuple[str, list[Section], str | None]:
    """(title or '', the text's sections, the marker for a ticket's body)."""
    match case:
        case "opened":
            return text.title(OPENED), text.body(OPENED, URL), text.marker_for(OPENED.incident_id)
        case "update":
            comment = text.update_comment(text.snapshot(OPENED), UPDATED)
            assert comment is not None
            return "", comment, None
        case "resolved":
            return "", text.resolution_comment(RESOLVED), None
        case "reopened":
            return "", text.reopen_comment(REOPENED), None
    raise AssertionError(case)


def rendered(case: str) -> dict[str, str]:
    title, secs, marker = sections(case)
    head = f"Title: {title}\n\n" if title else ""
    return {
        "md": head + text.markdown(secs, marker) + "\n",
        "jira-wiki": head + wiki(secs) + (f"\n\nLabels: llmscope, {marker}" if marker else "") + "\n",
        "jira-adf.json": json.dumps(adf(secs), indent=2, ensure_ascii=False) + "\n",
    }


@pytest.mark.parametrize("case", ["opened", "update", "resolved", "reopened"])
def test_golden_ticket_texts(case: str) -> None:
    update = os.environ.get("LLMSCOPE_UPDATE_GOLDEN") == "1"
    for suffix, content in rendered(case).items():
        path = GOLDEN / f"ticket-{case}.{suffix}"
        if update:
            path.write_text(content)
        assert path.exists(), f"{path} missing: run with LLMSCOPE_UPDATE_GOLDEN=1 and review it"
        assert content == path.read_text(), f"{path.name} differs from the golden file"


def test_the_ticket_texts_carry_what_the_issue_asks() -> None:
    opened = rendered("opened")["md"]
    for part in ("What happened", "Likely cause", "Draft customer notice", "Seen before", "Resolution note"):
        assert part in opened
    assert f"{URL}/incidents/inc-v1" in opened
    assert "Now also affected: qwen2:7b" in rendered("update")["md"]
    assert "Resolved after 1 h 15 min by bo" in rendered("resolved")["md"]
