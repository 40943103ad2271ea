"""The setup wizard's tracker test: the tracker's fields are saved through ``/setup``, the test is
asked of ``/setup/test`` (channel ``tickets``), and a real alerter opens, comments on and closes a
test ticket in a local Jira-compatible server that checks every request."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.alerter.trackers import TOKEN, FakeJira
from tests.api.alerting_harness import live_alerter
from tests.api.conftest import Api
from tests.web.test_pages import login


@pytest.fixture
async def jira() -> AsyncIterator[FakeJira]:
    server = FakeJira()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_wizard_saves_a_jira_tracker_and_its_test_opens_and_closes_a_ticket(
    api: Api, database_url: str, nats_url: str, jira: FakeJira
) -> None:
    client = await login(api)
    page = await client.get("/setup")
    assert 'name="channel" value="tickets"' in page.text
    form = {
        "alert.tickets.tracker": "jira",
        "alert.tickets.url": jira.url,
        "alert.tickets.project": "OPS",
        "alert.tickets.token": "wrong-token",
        "alert.tickets.user": jira.user,
    }
    r = await client.post("/setup", data={**form, "by": "ann"})
    assert r.status_code == 200, r.text
    assert "Saved" in r.text
    async with live_alerter(database_url, nats_url, None):
        # A token the tracker refuses: the answer names the setting, never the token.
        r = await client.post("/setup/test", data={"channel": "tickets"})
        assert r.status_code == 200, r.text
        assert "tickets (jira): failed" in r.text
        assert "check alert.tickets.token" in r.text
        assert "wrong-token" not in r.text
        assert jira.issues == {}

        r = await client.post("/setup", data={"by": "ann", "alert.tickets.token": TOKEN})
        assert r.status_code == 200, r.text
        r = await client.post("/setup/test", data={"channel": "tickets"})
        assert r.status_code == 200, r.text
        assert "tickets (jira): sent" in r.text
        assert "opened test ticket OPS-1, commented on it and closed it" in r.text
        assert TOKEN not in r.text
    assert jira.problems == ["POST /rest/api/2/issue: bad Authorization"]  # the wrong token's try only
    assert [(i.key, i.state, len(i.comments)) for i in jira.issues.values()] == [("OPS-1", "done", 1)]
