"""The ticket tracker configured through the API's settings table (``alert.tickets.*``), over the
environment's: chosen there, changed there without a restart, the token never shown."""

from __future__ import annotations

import json
import logging

import pytest
from nats.js import JetStreamContext

from llmscope.alerter.tickets.base import TicketConfig
from llmscope.alerter.tickets.from_settings import ticket_config_from
from llmscope.config.env import ConfigError, Secret
from tests.alerter.api_side import api_side
from tests.alerter.factories import violation
from tests.alerter.harness import eventually, publish, start_alerter
from tests.alerter.test_tickets import logged_text
from tests.alerter.trackers import TOKEN, FakeGitHub

ENV = TicketConfig(kind="gitlab", url="https://gitlab.example", project="7", token=Secret("env"), wait_s=9)
GITHUB = {
    "alert.tickets.tracker": '"github"',
    "alert.tickets.project": '"acme/llm"',
    "alert.tickets.token": json.dumps(TOKEN),
}


def test_a_tracker_in_the_settings_wins_over_the_environment() -> None:
    assert ticket_config_from({}, ENV) is ENV
    assert ticket_config_from({"alert.tickets.tracker": '""'}, ENV) is ENV
    assert ticket_config_from({"alert.tickets.project": '"x/y"'}, ENV) is ENV  # no tracker chosen
    assert ticket_config_from({"alert.tickets.tracker": '"none"'}, ENV) is None
    got = ticket_config_from(GITHUB, ENV)
    assert got is not None
    assert (got.kind, got.url, got.project, got.token.get()) == (
        "github",
        "https://api.github.com",
        "acme/llm",
        TOKEN,
    )
    assert (got.labels, got.min_severity, got.jira_api, got.wait_s) == (("llmscope",), "critical", 2, 9)
    assert TOKEN not in repr(got)
    jira = ticket_config_from(
        {
            **GITHUB,
            "alert.tickets.tracker": "jira",  # plain text rows are read too
            "alert.tickets.project": "OPS",
            "alert.tickets.url": "https://acme.atlassian.net",
            "alert.tickets.user": "ops@acme.example",
            "alert.tickets.jira_api": '"3"',
            "alert.tickets.labels": '["llmscope", "sre"]',
            "alert.tickets.min_severity": '"warning"',
        },
        None,
    )
    assert jira is not None
    assert (jira.kind, jira.user, jira.jira_api, jira.labels, jira.min_severity, jira.wait_s) == (
        "jira",
        "ops@acme.example",
        3,
        ("llmscope", "sre"),
        "warning",
        120.0,
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"alert.tickets.tracker": '"trac"'}, "alert.tickets.tracker"),
        ({"alert.tickets.token": '""'}, "alert.tickets.token"),
        ({"alert.tickets.project": '"acme"'}, "owner/repo"),
        ({"alert.tickets.tracker": '"jira"', "alert.tickets.project": '"OPS"'}, "alert.tickets.url"),
    ],
)
def test_incomplete_ticket_settings_name_the_setting(change: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named) as raised:
        ticket_config_from({**GITHUB, **change}, ENV)
    assert TOKEN not in str(raised.value)


async def test_the_settings_choose_the_tracker_and_a_change_applies_without_a_restart(
    database_url: str, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gh = FakeGitHub()
    url = await gh.start()
    api = await api_side(js)
    run = await start_alerter(database_url, js, {})  # no tracker in the environment
    try:
        assert run.alerter.tickets is None
        # The API's settings reach the alerter through their bucket only.
        await api.put_settings({**GITHUB, "alert.tickets.url": json.dumps(url)})
        await publish(js, violation(1, rule="CUSUM"))
        await eventually(lambda: len(gh.issues) == 1, what="the ticket opened from the settings")
        assert gh.problems == []
        # Tracker off in the settings: the worker stops, no restart needed.
        await api.put_settings({"alert.tickets.tracker": '"none"'})
        await eventually(lambda: run.alerter.tickets is None, what="tickets switched off")
        # An incomplete row written behind the API's back: no tickets, one warning naming it.
        await api.delete_setting("alert.tickets.token")
        await api.put_settings({"alert.tickets.tracker": '"github"'})
        await eventually(lambda: "alert.tickets.token: required" in logged_text(caplog), what="the warning")
        assert logged_text(caplog).count("ticket settings unusable") == 1
        assert run.alerter.tickets is None
    finally:
        await run.close()
        await gh.stop()
    assert TOKEN not in logged_text(caplog)
