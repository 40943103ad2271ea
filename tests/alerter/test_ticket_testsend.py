"""The tracker's test send: a test ticket opened, commented on and closed in local GitHub- and
Jira-compatible servers that check every request; refusals answered in our words naming the
setting at fault, never the token, and only where the outbound policy allows."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmscope.alerter.tickets.testsend import send_ticket_test
from llmscope.config.env import Env
from tests.alerter.factories import LOOPBACK_ALLOWED
from tests.alerter.trackers import TOKEN, FakeGitHub, FakeJira

URL = "http://scope.test"


@pytest.fixture
async def jira() -> AsyncIterator[FakeJira]:
    server = FakeJira(api=3)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHub]:
    server = FakeGitHub()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def jira_settings(server: FakeJira, **over: Any) -> dict[str, object]:
    """As the API's settings table holds them (JSON values) after the wizard's Save."""
    return {
        "alert.tickets.tracker": '"jira"',
        "alert.tickets.url": f'"{server.url}"',
        "alert.tickets.project": '"OPS"',
        "alert.tickets.token": f'"{TOKEN}"',
        "alert.tickets.user": f'"{server.user}"',
        "alert.tickets.jira_api": '"3"',
        **{f"alert.tickets.{k}": v for k, v in over.items()},
    }


async def test_jira_from_the_settings_a_test_ticket_is_opened_and_closed(jira: FakeJira) -> None:
    result = await send_ticket_test(jira_settings(jira), env=Env(LOOPBACK_ALLOWED), public_url=URL)
    assert (result.ok, result.channel, result.kind, result.status) == (True, "tickets", "jira", "sent")
    assert result.detail == "opened test ticket OPS-1, commented on it and closed it"
    assert jira.problems == []
    (issue,) = jira.issues.values()
    assert issue.title.startswith("[LLMscope] Test ticket")
    assert "Nothing is wrong" in FakeJira.text_of(issue.body)
    assert (issue.state, len(issue.comments)) == ("done", 1)


async def test_github_from_the_environment(github: FakeGitHub) -> None:
    env = {
        **LOOPBACK_ALLOWED,
        "LLMSCOPE_TICKETS_TRACKER": "github",
        "LLMSCOPE_TICKETS_URL": github.url,
        "LLMSCOPE_TICKETS_PROJECT": "acme/llm",
        "LLMSCOPE_TICKETS_TOKEN": TOKEN,
    }
    result = await send_ticket_test({}, env=Env(env), public_url=URL)
    assert (result.ok, result.kind, result.detail) == (
        True,
        "github",
        "opened test ticket 1, commented on it and closed it",
    )
    assert github.problems == []
    assert [(i.state, len(i.comments)) for i in github.issues.values()] == [("closed", 1)]
    # A wrong project: the environment's variable is named, as it is where the project is set.
    env["LLMSCOPE_TICKETS_PROJECT"] = "acme/nope"
    result = await send_ticket_test({}, env=Env(env), public_url=URL)
    assert (result.ok, result.status) == (False, "failed")
    assert "HTTP 404" in result.detail
    assert "LLMSCOPE_TICKETS_PROJECT" in result.detail


async def test_a_refused_token_names_the_setting_and_never_shows_it(jira: FakeJira) -> None:
    wrong = "s3cret-but-wrong"
    result = await send_ticket_test(
        jira_settings(jira, token=f'"{wrong}"'), env=Env(LOOPBACK_ALLOWED), public_url=URL
    )
    assert (result.ok, result.status, result.attempts) == (False, "failed", 1)
    assert result.detail == (
        "opening a test ticket: HTTP 401: the tracker refused the credentials:"
        " check alert.tickets.token (and alert.tickets.user)"
    )
    assert wrong not in repr(result)
    assert jira.issues == {}


async def test_incomplete_settings_name_the_missing_field(jira: FakeJira) -> None:
    result = await send_ticket_test(
        jira_settings(jira, project='""'), env=Env(LOOPBACK_ALLOWED), public_url=URL
    )
    assert (result.ok, result.status, result.kind) == (False, "invalid_config", None)
    assert result.detail.startswith("alert.tickets.project: required")
    assert jira.requests == []
    none = await send_ticket_test({}, env=Env(LOOPBACK_ALLOWED), public_url=URL)
    assert (none.status, none.detail) == (
        "not_configured",
        "no ticket tracker configured: choose one in alert.tickets.tracker",
    )


async def test_the_outbound_policy_applies_and_an_unreachable_tracker_names_the_url(jira: FakeJira) -> None:
    refused = await send_ticket_test(jira_settings(jira), env=Env({}), public_url=URL)
    assert (refused.ok, refused.status) == (False, "failed")
    assert "destination not allowed" in refused.detail
    assert refused.detail.endswith("(check alert.tickets.url)")
    assert jira.requests == []  # refused before anything was sent

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = await send_ticket_test(
        jira_settings(jira, url=f'"http://127.0.0.1:{port}"'), env=Env(LOOPBACK_ALLOWED), public_url=URL
    )
    assert closed.detail == "opening a test ticket: could not connect: check alert.tickets.url"


async def test_a_ticket_that_cannot_be_closed_says_so_naming_the_transition(jira: FakeJira) -> None:
    # A workflow whose only way out of the new status is "Start progress": no done status.
    jira.transitions = [t for t in jira.transitions if t["name"] != "Done"]
    result = await send_ticket_test(jira_settings(jira), env=Env(LOOPBACK_ALLOWED), public_url=URL)
    assert (result.ok, result.status) == (False, "failed")
    assert result.detail == (
        "closing test ticket OPS-1: no transition named 'Done' nor into a done status:"
        " check alert.tickets.jira_done"
    )
    assert [i.state for i in jira.issues.values()] == ["open"]
