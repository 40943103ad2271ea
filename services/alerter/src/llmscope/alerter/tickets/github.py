"""GitHub Issues (REST API v3): create, comment, close with ``state=closed``.

The incident's marker is a hidden HTML comment at the end of the body; ``find`` lists the
repository's issues updated since the ticket row was written and looks for it (labels are not
used for this: a token without push access has them silently dropped).
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

import aiohttp

from llmscope.alerter.retry import DeliveryError
from llmscope.alerter.tickets.base import Ticket, TicketConfig, call
from llmscope.alerter.tickets.text import Section, markdown

DEFAULT_URL = "https://api.github.com"
FIND_PAGES = 5


class GitHubTracker:
    kind = "github"

    def __init__(self, config: TicketConfig, session: aiohttp.ClientSession) -> None:
        owner, _, repo = config.project.partition("/")
        if not owner or not repo:
            raise ValueError(f"GitHub project {config.project!r}: expected owner/repo")
        self._cfg = config
        self._session = session
        self._base = f"{config.url.rstrip('/')}/repos/{quote(owner, safe='')}/{quote(repo, safe='')}/issues"

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._cfg.token.get()}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "llmscope-alerter",
        }

    async def find(self, marker: str, since: datetime) -> Ticket | None:
        needle = f"<!-- {marker} -->"
        for page in range(1, FIND_PAGES + 1):
            issues, _ = await call(
                self._session,
                "GET",
                self._base,
                headers=self._headers(),
                params={
                    "state": "all",
                    "since": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "per_page": "100",
                    "page": str(page),
                },
                timeout_s=self._cfg.timeout_s,
            )
            if not isinstance(issues, list):
                raise DeliveryError("GitHub: issue list is not a list", retryable=True)
            for issue in issues:
                if needle in (issue.get("body") or ""):
                    return Ticket(str(issue["number"]), str(issue.get("html_url", "")))
            if len(issues) < 100:
                return None
        return None

    async def create(self, title: str, body: list[Section], marker: str) -> Ticket:
        issue, _ = await call(
            self._session,
            "POST",
            self._base,
            headers=self._headers(),
            body={"title": title, "body": markdown(body, marker), "labels": list(self._cfg.labels)},
            timeout_s=self._cfg.timeout_s,
        )
        return Ticket(str(issue["number"]), str(issue.get("html_url", "")))

    async def comment(self, ticket: Ticket, text: list[Section]) -> None:
        await call(
            self._session,
            "POST",
            f"{self._base}/{ticket.key}/comments",
            headers=self._headers(),
            body={"body": markdown(text)},
            timeout_s=self._cfg.timeout_s,
        )

    async def close(self, ticket: Ticket) -> None:
        await call(
            self._session,
            "PATCH",
            f"{self._base}/{ticket.key}",
            headers=self._headers(),
            body={"state": "closed", "state_reason": "completed"},
            timeout_s=self._cfg.timeout_s,
        )
