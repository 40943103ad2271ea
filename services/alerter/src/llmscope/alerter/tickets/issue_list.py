"""What GitHub Issues and GitLab issues share: the incident's marker is a hidden HTML comment at
the end of the issue's text, found again by listing the project's issues updated since the
ticket row was written (a page of 100 at a time, at most ``FIND_PAGES``); a comment and a close
are one request each. The two APIs differ only in names, which each subclass states.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from llmscope.alerter.retry import DeliveryError
from llmscope.alerter.tickets.base import RestTracker, Ticket
from llmscope.alerter.tickets.text import Section, markdown

FIND_PAGES = 5
PAGE_SIZE = 100


class IssueListTracker(RestTracker):
    """An issue tracker whose tickets carry the marker in their text."""

    name: ClassVar[str]
    text_field: ClassVar[str]
    """where the issue's text is, in the create request and in the listed issues"""
    key_field: ClassVar[str]
    url_field: ClassVar[str]
    comments_path: ClassVar[str]
    close_method: ClassVar[str]
    close_body: ClassVar[dict[str, str]]
    reopen_body: ClassVar[dict[str, str]]
    _base: str
    """the project's issues collection URL"""

    def _list_params(self, since: datetime) -> dict[str, str]:
        raise NotImplementedError

    def _labels(self) -> Any:
        raise NotImplementedError

    def _ticket(self, issue: Any) -> Ticket:
        return Ticket(str(issue[self.key_field]), str(issue.get(self.url_field, "")))

    async def find(self, marker: str, since: datetime) -> Ticket | None:
        needle = f"<!-- {marker} -->"
        for page in range(1, FIND_PAGES + 1):
            params = {**self._list_params(since), "per_page": str(PAGE_SIZE), "page": str(page)}
            issues = await self._call("GET", self._base, params=params)
            if not isinstance(issues, list):
                raise DeliveryError(f"{self.name}: issue list is not a list", retryable=True)
            for issue in issues:
                if needle in (issue.get(self.text_field) or ""):
                    return self._ticket(issue)
            if len(issues) < PAGE_SIZE:
                return None
        return None

    async def create(self, title: str, body: list[Section], marker: str) -> Ticket:
        fields = {"title": title, self.text_field: markdown(body, marker), "labels": self._labels()}
        return self._ticket(await self._call("POST", self._base, body=fields))

    async def comment(self, ticket: Ticket, text: list[Section]) -> None:
        await self._call(
            "POST", f"{self._base}/{ticket.key}/{self.comments_path}", body={"body": markdown(text)}
        )

    async def close(self, ticket: Ticket) -> None:
        await self._call(self.close_method, f"{self._base}/{ticket.key}", body=self.close_body)

    async def reopen(self, ticket: Ticket) -> None:
        await self._call(self.close_method, f"{self._base}/{ticket.key}", body=self.reopen_body)
