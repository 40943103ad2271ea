"""Jira REST API v2 or v3: create an issue, add a comment, transition it to done.

v2 takes wiki markup, v3 the Atlassian Document Format (ADF); the text is the same sections.
The incident's marker is a label, found again with JQL. Jira Cloud authenticates with the
account's email and an API token (Basic); Jira Server / Data Center with a personal access token
(Bearer, when no user is configured). Closing picks the transition named ``jira_done`` (case
ignored), else the first one into a status of the "done" category; reopening (the incident
fires again) the first one into the "new" category, else any status not done.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import aiohttp

from llmscope.alerter.retry import DeliveryError
from llmscope.alerter.tickets.base import RestTracker, Ticket, TicketConfig
from llmscope.alerter.tickets.text import Section


def wiki(sections: list[Section]) -> str:
    return "\n\n".join(f"h3. {s.heading}\n\n{s.text}" if s.heading else s.text for s in sections)


def _text_nodes(text: str) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    for line in text.split("\n"):
        if nodes:
            nodes.append({"type": "hardBreak"})
        if line:  # ADF refuses empty text nodes
            nodes.append({"type": "text", "text": line})
    return nodes


def adf(sections: list[Section]) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for s in sections:
        if s.heading:
            content.append({"type": "heading", "attrs": {"level": 3}, "content": _text_nodes(s.heading)})
        content.append({"type": "paragraph", "content": _text_nodes(s.text)})
    return {"type": "doc", "version": 1, "content": content}


class JiraTracker(RestTracker):
    kind = "jira"

    def __init__(self, config: TicketConfig, session: aiohttp.ClientSession) -> None:
        if not config.url:
            raise ValueError("Jira: the site URL is required (https://your-site.atlassian.net)")
        if not config.project:
            raise ValueError("Jira: the project key is required")
        super().__init__(config, session)
        self._site = config.url.rstrip("/")
        self._api = f"{self._site}/rest/api/{config.jira_api}"

    def _headers(self) -> dict[str, str]:
        token = self._cfg.token.get()
        if self._cfg.user:
            auth = "Basic " + base64.b64encode(f"{self._cfg.user}:{token}".encode()).decode()
        else:
            auth = f"Bearer {token}"
        return {"Authorization": auth, "Accept": "application/json"}

    def _doc(self, sections: list[Section]) -> Any:
        return adf(sections) if self._cfg.jira_api == 3 else wiki(sections)

    def _ticket(self, key: str) -> Ticket:
        return Ticket(key, f"{self._site}/browse/{key}")

    async def find(self, marker: str, since: datetime) -> Ticket | None:
        # v3's /search is retired on Jira Cloud in favour of /search/jql; v2 keeps /search.
        path = "search/jql" if self._cfg.jira_api == 3 else "search"
        found = await self._call(
            "GET",
            f"{self._api}/{path}",
            params={
                "jql": f'project = "{self._cfg.project}" AND labels = "{marker}" ORDER BY created ASC',
                "fields": "key",
                "maxResults": "1",
            },
        )
        issues = (found or {}).get("issues") or []
        return self._ticket(str(issues[0]["key"])) if issues else None

    async def create(self, title: str, body: list[Section], marker: str) -> Ticket:
        issue = await self._call(
            "POST",
            f"{self._api}/issue",
            body={
                "fields": {
                    "project": {"key": self._cfg.project},
                    "summary": title,
                    "issuetype": {"name": self._cfg.jira_issue_type},
                    "description": self._doc(body),
                    "labels": [*self._cfg.labels, marker],
                }
            },
        )
        return self._ticket(str(issue["key"]))

    async def comment(self, ticket: Ticket, text: list[Section]) -> None:
        await self._call("POST", f"{self._api}/issue/{ticket.key}/comment", body={"body": self._doc(text)})

    async def close(self, ticket: Ticket) -> None:
        url = f"{self._api}/issue/{ticket.key}/transitions"
        answer = await self._call("GET", url)
        transitions = (answer or {}).get("transitions") or []
        wanted = self._cfg.jira_done.casefold()
        chosen = next((t for t in transitions if str(t.get("name", "")).casefold() == wanted), None) or next(
            (
                t
                for t in transitions
                if ((t.get("to") or {}).get("statusCategory") or {}).get("key") == "done"
            ),
            None,
        )
        if chosen is None:
            names = ", ".join(str(t.get("name")) for t in transitions) or "none"
            raise DeliveryError(
                f"Jira {ticket.key}: no transition named {self._cfg.jira_done!r} nor into a done status"
                f" (available: {names})",
                retryable=False,
            )
        await self._call("POST", url, body={"transition": {"id": str(chosen["id"])}})

    async def reopen(self, ticket: Ticket) -> None:
        """A ticket in a status of the "done" category goes back by the first transition into
        one of the "new" category (To Do), else into any status not done; one not done stays."""
        issue = await self._call("GET", f"{self._api}/issue/{ticket.key}", params={"fields": "status"})
        status = ((issue or {}).get("fields") or {}).get("status") or {}
        if (status.get("statusCategory") or {}).get("key") != "done":
            return
        url = f"{self._api}/issue/{ticket.key}/transitions"
        answer = await self._call("GET", url)
        transitions = (answer or {}).get("transitions") or []

        def category(t: Any) -> str:
            return str(((t.get("to") or {}).get("statusCategory") or {}).get("key", ""))

        chosen = next((t for t in transitions if category(t) == "new"), None) or next(
            (t for t in transitions if category(t) not in ("done", "")), None
        )
        if chosen is None:
            names = ", ".join(str(t.get("name")) for t in transitions) or "none"
            raise DeliveryError(
                f"Jira {ticket.key}: no transition out of its done status to reopen it (available: {names})",
                retryable=False,
            )
        await self._call("POST", url, body={"transition": {"id": str(chosen["id"])}})
