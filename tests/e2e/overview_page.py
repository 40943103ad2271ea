"""Reads the overview and violation pages as a signed-in browser gets them (the HTML, not an API):
the e2e overview test and bench/overview_outage_check.py share it."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

import httpx

ROW = re.compile(r'<tr class="row-(?P<status>\w+)">(?P<body>.*?)</tr>', re.DOTALL)
MODEL_CELL = re.compile(r"<b>(?P<model>[^<]*)</b>")
EPISODE_LINK = re.compile(
    r'href="/violations/(?P<id>[^"]+)"[^>]*><span class="sev critical">(?P<rule>\w+)</span>'
)
FAILED_ROW = re.compile(r'<tr class="[^"]*\bfailed\b[^"]*">(?P<cells>.*?)</tr>', re.DOTALL)
CELL = re.compile(r"<td[^>]*>(?P<text>.*?)</td>", re.DOTALL)


@dataclass(frozen=True)
class Row:
    """One overview row: the model's status, its name and its linked critical episodes."""

    status: str
    model: str
    episodes: list[tuple[str, str]] = field(default_factory=list)
    """(violation id, rule) of each open critical episode the row links."""


def overview_rows(page: str) -> list[Row]:
    """The overview table's rows in page order (worst first)."""
    rows = []
    for row in ROW.finditer(page):
        model = MODEL_CELL.search(row["body"])
        rows.append(
            Row(
                status=row["status"],
                model=html.unescape(model["model"]) if model else "",
                episodes=[(m["id"], m["rule"]) for m in EPISODE_LINK.finditer(row["body"])],
            )
        )
    return rows


def _text(cell: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()


@dataclass(frozen=True)
class FailedProbe:
    """A failed probe as an availability violation's page lists it."""

    ts: str
    prompt_id: str
    kind: str
    error: str


def failed_probes(page: str) -> list[FailedProbe]:
    """The failed probes an availability violation's page lists (time, prompt, status, the three
    metrics, error: the rows marked ``failed``)."""
    probes = []
    for row in FAILED_ROW.finditer(page):
        cells = [_text(c["text"]) for c in CELL.finditer(row["cells"])]
        assert len(cells) == 7, f"an availability violation's probe row has 7 cells: {cells}"
        probes.append(FailedProbe(ts=cells[0], prompt_id=cells[1], kind=cells[2], error=cells[6]))
    return probes


def sign_in(browser: httpx.Client, api_key: str) -> None:
    """Sign in as the login form does: the session cookie stays in ``browser``."""
    reply = browser.post("/login", data={"key": api_key, "next": "/"})
    assert reply.status_code == 303, reply.text
