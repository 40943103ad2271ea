"""GitLab issues (REST API v4): create, add a note, close with ``state_event=close``, reopen
with ``state_event=reopen``.

As on GitHub, the marker is a hidden HTML comment in the description (see ``issue_list``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import quote

import aiohttp

from llmscope.alerter.tickets.base import TicketConfig
from llmscope.alerter.tickets.issue_list import IssueListTracker

DEFAULT_URL = "https://gitlab.com/api/v4"


class GitLabTracker(IssueListTracker):
    kind = "gitlab"
    name = "GitLab"
    text_field = "description"
    key_field = "iid"
    url_field = "web_url"
    comments_path = "notes"
    close_method = "PUT"
    close_body: ClassVar[dict[str, str]] = {"state_event": "close"}
    reopen_body: ClassVar[dict[str, str]] = {"state_event": "reopen"}

    def __init__(self, config: TicketConfig, session: aiohttp.ClientSession) -> None:
        if not config.project:
            raise ValueError("GitLab project: expected a project id or group/project path")
        super().__init__(config, session)
        self._base = f"{config.url.rstrip('/')}/projects/{quote(config.project, safe='')}/issues"

    def _headers(self) -> dict[str, str]:
        return {"PRIVATE-TOKEN": self._cfg.token.get()}

    def _list_params(self, since: datetime) -> dict[str, str]:
        return {"updated_after": since.isoformat()}

    def _labels(self) -> Any:
        return ",".join(self._cfg.labels)
