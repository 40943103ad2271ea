"""The tracker protocol, its configuration, and the one HTTP call every tracker makes.

Errors are :class:`DeliveryError`, classified as for channels (5xx, 408, 429 and transport errors
retryable; other 4xx not). Their text never carries the token: it travels in a header only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import aiohttp

from llmscope.alerter.destinations import DestinationRefused
from llmscope.alerter.retry import DeliveryError, classify_http, describe_error
from llmscope.alerter.tickets.text import Section
from llmscope.config.env import Secret

TrackerKind = Literal["github", "jira", "gitlab"]
TRACKERS: tuple[TrackerKind, ...] = ("github", "jira", "gitlab")


@dataclass(frozen=True, slots=True)
class TicketConfig:
    """Where tickets go. ``project``: ``owner/repo`` (GitHub), a project key (Jira), a project id
    or ``group/project`` path (GitLab)."""

    kind: TrackerKind
    url: str
    project: str
    token: Secret
    user: str = ""
    """Jira Cloud: the account's email (Basic auth with an API token); empty: a Bearer token"""
    labels: tuple[str, ...] = ("llmscope",)
    jira_issue_type: str = "Task"
    jira_done: str = "Done"
    jira_api: Literal[2, 3] = 2
    min_severity: str = "critical"
    wait_s: float = 120.0
    """how long a ticket waits for the incident's analysis (its body) before it is opened anyway"""
    timeout_s: float = 10.0
    retry_initial_s: float = 5.0
    """first wait after a failed round; doubles up to 10 minutes"""


@dataclass(frozen=True, slots=True)
class Ticket:
    key: str
    url: str


class Tracker(Protocol):
    """One tracker's REST API; every method raises DeliveryError on failure."""

    kind: str

    async def find(self, marker: str, since: datetime) -> Ticket | None:
        """The ticket carrying ``marker`` created after ``since``, if any."""
        ...

    async def create(self, title: str, body: list[Section], marker: str) -> Ticket: ...

    async def comment(self, ticket: Ticket, text: list[Section]) -> None: ...

    async def close(self, ticket: Ticket) -> None: ...

    async def reopen(self, ticket: Ticket) -> None:
        """Open a closed ticket again (its incident fires again); an open one stays as it is."""
        ...


class RestTracker:
    """What every tracker client holds: its configuration, the HTTP session and its credential
    headers, applied to each request with the configured timeout."""

    kind: str

    def __init__(self, config: TicketConfig, session: aiohttp.ClientSession) -> None:
        self._cfg = config
        self._session = session

    def _headers(self) -> dict[str, str]:
        raise NotImplementedError

    async def _call(
        self, method: str, url: str, *, body: Any = None, params: Mapping[str, str] | None = None
    ) -> Any:
        """The decoded JSON answer (or None) of one authenticated request."""
        answer, _ = await call(
            self._session,
            method,
            url,
            headers=self._headers(),
            body=body,
            params=params,
            timeout_s=self._cfg.timeout_s,
        )
        return answer


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    body: Any = None,
    params: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> tuple[Any, Mapping[str, str]]:
    """One request; (decoded JSON or None, response headers), DeliveryError unless 2xx."""
    data = None if body is None else json.dumps(body).encode()
    hdrs = {**headers, **({"Content-Type": "application/json"} if data is not None else {})}
    try:
        async with session.request(
            method,
            url,
            data=data,
            headers=hdrs,
            params=params,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            text = await resp.text(errors="replace")
            error = classify_http(resp.status, resp.headers, text)
            if error is not None:
                raise DeliveryError(
                    f"{method} {resp.url.path}: {error}", retryable=error.retryable, status=error.status
                )
            try:
                return (json.loads(text) if text.strip() else None), resp.headers
            except ValueError:
                raise DeliveryError(f"{method} {resp.url.path}: not JSON", retryable=True) from None
    except DestinationRefused as exc:
        # The guarded session's resolver refused what the name resolves to now (destinations.py).
        raise DeliveryError(str(exc), retryable=False) from None
    except aiohttp.InvalidURL:
        raise DeliveryError("invalid tracker URL", retryable=False) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DeliveryError(f"transport error: {describe_error(exc)}", retryable=True) from None
