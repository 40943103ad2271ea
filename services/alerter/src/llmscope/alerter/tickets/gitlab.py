"""GitLab issues (REST API v4): create, add a note, close with ``state_event=close``.

As on GitHub, the marker is a hidden HTML comment in the description, found again by listing
the project's issues updated since the ticket row was written.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

import aiohttp

from llmscope.alerter.retry import DeliveryError
from llmscope.alerter.tickets.base import Ticket, TicketConfig, call
from llmscope.alerter.tickets.text import Section, markdown

DEFAULT_URL = "https://gitlab.com/api/v4"
FIND_PAGES = 5


class GitLabTracker:
    kind = "gitlab"

    def __init__(self, config: TicketConfig, session: aiohttp.ClientSession) -> None:
        if not config.project:
            raise ValueError("GitLab project: expected a project id or group/project path")
        self._cfg = config
        self._session = session
        self._base = f"{config.url.rstrip('/')}/projects/{quote(config.project, safe='')}/issues"

    def _headers(self) -> dict[str, str]:
        return {"PRIVATE-TOKEN": self._cfg.token.get()}

    async def find(self, marker: str, since: datetime) -> Ticket | None:
        needle = f"<!-- {marker} -->"
        for page in range(1, FIND_PAGES + 1):
            issues, _ = await call(
                self._session,
                "GET",
                self._base,
                headers=self._headers(),
                params={"updated_after": since.isoformat(), "per_page": "100", "page": str(page)},
                timeout_s=self._cfg.timeout_s,
            )
            if not isinstance(issues, list):
                raise DeliveryError("GitLab: issue list is not a list", retryable=True)
            for issue in issues:
                if needle in (issue.get("description") or ""):
                    return Ticket(str(issue["iid"]), str(issue.get("web_url", "")))
            if len(issues) < 100:
                return None
        return None

    async def create(self, title: str, body: list[Section], marker: str) -> Ticket:
        issue, _ = await call(
            self._session,
            "POST",
            self._base,
            headers=self._headers(),
            body={
                "title": title,
                "description": markdown(body, marker),
                "labels": ",".join(self._cfg.labels),
            },
            timeout_s=self._cfg.timeout_s,
        )
        return Ticket(str(issue["iid"]), str(issue.get("web_url", "")))

    async def comment(self, ticket: Ticket, text: list[Section]) -> None:
        await call(
            self._session,
            "POST",
            f"{self._base}/{ticket.key}/notes",
            headers=self._headers(),
            body={"body": markdown(text)},
            timeout_s=self._cfg.timeout_s,
        )

    async def close(self, ticket: Ticket) -> None:
        await call(
            self._session,
            "PUT",
            f"{self._base}/{ticket.key}",
            headers=self._headers(),
            body={"state_event": "close"},
            timeout_s=self._cfg.timeout_s,
        )
