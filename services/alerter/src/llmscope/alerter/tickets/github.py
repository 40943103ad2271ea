"""GitHub Issues (REST API v3): create, comment, close with ``state=closed``, reopen with
``state=open``.

The incident's marker is a hidden HTML comment at the end of the body (see ``issue_list``;
labels are not used for this: a token without push access has them silently dropped).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import quote

import aiohttp

from llmscope.alerter.tickets.base import TicketConfig
from llmscope.alerter.tickets.issue_list import IssueListTracker

DEFAULT_URL = "https://api.github.com"


class GitHubTracker(IssueListTracker):
    kind = "github"
    name = "GitHub"
    text_field = "body"
    key_field = "number"
    url_field = "html_url"
    comments_path = "comments"
    close_method = "PATCH"
    close_body: ClassVar[dict[str, str]] = {"state": "closed", "state_reason": "completed"}
    reopen_body: ClassVar[dict[str, str]] = {"state": "open"}

    def __init__(self, config: TicketConfig, session: aiohttp.ClientSession) -> None:
        owner, _, repo = config.project.partition("/")
        if not owner or not repo:
            raise ValueError(f"GitHub project {config.project!r}: expected owner/repo")
        super().__init__(config, session)
        self._base = f"{config.url.rstrip('/')}/repos/{quote(owner, safe='')}/{quote(repo, safe='')}/issues"

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._cfg.token.get()}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "llmscope-alerter",
        }

    def _list_params(self, since: datetime) -> dict[str, str]:
        return {"state": "all", "since": since.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def _labels(self) -> Any:
        return list(self._cfg.labels)
