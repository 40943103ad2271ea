"""``send_ticket_test``: open and close one test ticket in the configured tracker, for the setup
wizard's "Send test: tickets" (``POST /api/alerts/test`` with channel ``tickets``).

The tracker is the one the alerter would use: the settings' (``alert.tickets.*``) if one is
stored, else the environment's (``LLMSCOPE_TICKETS_*``). The test goes where the outbound policy
allows (``LLMSCOPE_ALERT_ALLOWED_HOSTS``), as every test send does, and makes one try of each
request: a ticket's creation is not idempotent, so a retry could open two. The answer is our own
words, naming the setting at fault (the token for a refused credential, the project for a
missing project...), never the text the tracker sent back, nor the token.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from llmscope.alerter.destinations import Destinations, guarded_session
from llmscope.alerter.retry import DeliveryError
from llmscope.alerter.testsend import TestResult
from llmscope.alerter.tickets.base import TicketConfig
from llmscope.alerter.tickets.from_settings import PREFIX, ticket_config_from
from llmscope.alerter.tickets.settings import build_tracker, ticket_config
from llmscope.alerter.tickets.text import Section, marker_for
from llmscope.config.env import ConfigError, Env
from llmscope.proto.base import new_id
from llmscope.proto.control import TICKET_TEST_MAX_S

TICKETS = "tickets"
"""The name a test send asks for to test the tracker rather than a channel."""
TITLE = "[LLMscope] Test ticket (sample, nothing is wrong)"
_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


@dataclass(frozen=True, slots=True)
class Fields:
    """Where each part of the tracker's configuration is set, as the answer names it."""

    url: str
    project: str
    token: str
    user: str
    jira_issue_type: str
    jira_done: str

    @classmethod
    def of(cls, from_settings: bool) -> Fields:
        if from_settings:
            return cls(
                *(PREFIX + k for k in ("url", "project", "token", "user", "jira_issue_type", "jira_done"))
            )
        return cls(
            *(
                f"LLMSCOPE_TICKETS_{k}"
                for k in ("URL", "PROJECT", "TOKEN", "USER", "JIRA_ISSUE_TYPE", "JIRA_DONE")
            )
        )


def reason(exc: DeliveryError, config: TicketConfig, fields: Fields) -> str:
    """What a failed request comes to, in our words, with the setting to check (pure)."""
    text, status = str(exc), exc.status
    jira = config.kind == "jira"
    if status in (401, 403):
        who = f"{fields.token}" + (f" (and {fields.user})" if jira else "")
        return f"HTTP {status}: the tracker refused the credentials: check {who}"
    if status == 404:
        return f"HTTP 404: no such project or API there: check {fields.project} and {fields.url}"
    if status in (400, 409, 410, 422):
        what = f"{fields.project}" + (f" and {fields.jira_issue_type}" if jira else "")
        return f"HTTP {status}: the tracker refused the ticket: check {what}"
    if status is not None:
        return f"HTTP {status}" + (" (the tracker is unavailable: try again later)" if exc.retryable else "")
    if "no transition named" in text:
        return f"no transition named {config.jira_done!r} nor into a done status: check {fields.jira_done}"
    if text.startswith("destination not allowed"):
        return f"{text} (check {fields.url})"
    if text.startswith(("transport error", "invalid tracker URL")):
        return f"could not connect: check {fields.url}"
    return "failed"


async def send_ticket_test(
    settings: Mapping[str, object],
    *,
    env: Env,
    public_url: str,
    session: aiohttp.ClientSession | None = None,
    max_s: float = TICKET_TEST_MAX_S,
) -> TestResult:
    """Open a test ticket in the configured tracker, comment on it and close it; the answer,
    within ``max_s`` seconds whatever the tracker's timeouts (the API waits that and a margin)."""
    try:
        env_config = ticket_config(env)
        config = ticket_config_from(settings, env_config)
    except ConfigError as exc:
        return TestResult(False, TICKETS, None, "invalid_config", str(exc))
    if config is None:
        return TestResult(
            False,
            TICKETS,
            None,
            "not_configured",
            f"no ticket tracker configured: choose one in {PREFIX}tracker",
        )
    fields = Fields.of(config is not env_config)
    policy = Destinations.from_env(env)
    own_session = session is None
    http = session or guarded_session(policy)
    step = "opening a test ticket"
    try:
        try:
            tracker = build_tracker(config, http)
        except ValueError as exc:
            return TestResult(False, TICKETS, config.kind, "invalid_config", str(exc))
        async with asyncio.timeout(max_s):
            await policy.check_url(config.url)
            ticket = await tracker.create(
                TITLE,
                [
                    Section(
                        None,
                        "LLMscope opened this ticket from its setup wizard to check the tracker settings;"
                        " it closes it at once. Nothing is wrong.",
                    ),
                    Section(None, f"Dashboard: {public_url}"),
                ],
                marker_for(f"test-{new_id()}"),
            )
            key = ticket.key if _KEY.match(ticket.key) else "?"
            step = f"closing test ticket {key}"
            await tracker.comment(ticket, [Section(None, "Test ticket: closed by LLMscope at once.")])
            await tracker.close(ticket)
    except TimeoutError:
        left = " (close it by hand)" if step.startswith("closing") else ""
        return TestResult(
            False, TICKETS, config.kind, "failed", f"{step}: timed out after {max_s:g} s{left}", 1
        )
    except DeliveryError as exc:
        return TestResult(False, TICKETS, config.kind, "failed", f"{step}: {reason(exc, config, fields)}", 1)
    finally:
        if own_session:
            await http.close()
    return TestResult(
        True, TICKETS, config.kind, "sent", f"opened test ticket {key}, commented on it and closed it", 1
    )
