"""The ticket tracker's settings through the API: validated alone (422) and together (409: valid
alone, in conflict with the others as stored), naming the setting at fault; the token write-only
(never read back, never echoed)."""

from __future__ import annotations

from typing import Any

import pytest

from llmscope.api.ticket_settings import ticket_errors
from tests.api.conftest import Api
from tests.web.test_pages import login

TOKEN = "ghp_never-shown-0123456789"


def test_a_chosen_tracker_needs_its_project_token_and_jira_its_url() -> None:
    assert ticket_errors({}) == {}
    assert ticket_errors({"alert.tickets.tracker": "none", "alert.tickets.project": ""}) == {}
    github = {
        "alert.tickets.tracker": "github",
        "alert.tickets.project": "acme/llm",
        "alert.tickets.token": "t",
    }
    assert ticket_errors(github) == {}
    for bad in ("acme", "acme/llm/x", "/llm", "acme/"):
        assert set(ticket_errors({**github, "alert.tickets.project": bad})) == {"alert.tickets.project"}
    assert set(ticket_errors({**github, "alert.tickets.token": ""})) == {"alert.tickets.token"}
    jira = {**github, "alert.tickets.tracker": "jira", "alert.tickets.project": "OPS"}
    assert set(ticket_errors(jira)) == {"alert.tickets.url"}
    assert ticket_errors({**jira, "alert.tickets.url": "https://acme.atlassian.net"}) == {}
    gitlab = {**github, "alert.tickets.tracker": "gitlab", "alert.tickets.project": "42"}
    assert ticket_errors(gitlab) == {}


async def put(api: Api, key: str, value: Any) -> tuple[int, dict[str, Any]]:
    r = await api.client.put(f"/api/settings/{key}", json={"value": value})
    assert TOKEN not in r.text
    return r.status_code, r.json()


def field_of(body: dict[str, Any]) -> str:
    [detail] = body["detail"]
    return str(detail["field"])


async def test_ticket_settings_are_refused_naming_the_field_and_the_token_is_never_read_back(
    api: Api,
) -> None:
    status, body = await put(api, "alert.tickets.tracker", "github")
    assert status == 409
    assert field_of(body) == "alert.tickets.project"  # nothing configured yet
    status, body = await put(api, "alert.tickets.tracker", "trac")
    assert (status, field_of(body)) == (422, "alert.tickets.tracker")
    status, body = await put(api, "alert.tickets.labels", "llmscope")  # a list, not a string
    assert (status, field_of(body)) == (422, "alert.tickets.labels")

    for key, value in (("alert.tickets.project", "acme/llm"), ("alert.tickets.token", TOKEN)):
        status, _ = await put(api, key, value)
        assert status == 200
    status, _ = await put(api, "alert.tickets.tracker", "github")
    assert status == 200
    status, body = await put(api, "alert.tickets.project", "acme")
    assert status == 409
    assert field_of(body) == "alert.tickets.project"
    assert "owner/repo" in body["detail"][0]["msg"]
    status, body = await put(api, "alert.tickets.token", "")
    assert (status, field_of(body)) == (409, "alert.tickets.token")
    status, body = await put(api, "alert.tickets.tracker", "jira")
    assert (status, field_of(body)) == (409, "alert.tickets.url")

    r = await api.client.get("/api/settings")
    assert TOKEN not in r.text
    settings = {s["key"]: s for s in r.json()}
    token = settings["alert.tickets.token"]
    assert (token["secret"], token["is_set"], token["value"]) == (True, True, None)
    assert settings["alert.tickets.tracker"]["value"] == "github"
    assert settings["alert.tickets.project"]["value"] == "acme/llm"  # the refused value was not stored


@pytest.mark.parametrize("tracker", ["none", "gitlab"])
async def test_the_ticket_section_of_the_settings_page_saves_whole(api: Api, tracker: str) -> None:
    client = await login(api)
    form = {
        "by": "ann",
        "alert.tickets.tracker": "github",
        "alert.tickets.project": "acme",
        "alert.tickets.token": TOKEN,
        "alert.tickets.url": "",
        "alert.tickets.labels": "llmscope, sre",
        "alert.tickets.min_severity": "critical",
        "alert.tickets.user": "",
        "alert.tickets.jira_issue_type": "Task",
        "alert.tickets.jira_done": "Done",
        "alert.tickets.jira_api": "2",
    }
    r = await client.post("/settings/section/tickets", data=form)
    assert r.status_code == 422
    assert "expected owner/repo for github" in r.text
    assert TOKEN not in r.text
    stored = {s.key: s for s in await api.store.settings()}
    assert not stored["alert.tickets.token"].is_set  # nothing of the section was stored

    fixed = {**form, "alert.tickets.tracker": tracker, "alert.tickets.project": "acme/llm"}
    r = await client.post("/settings/section/tickets", data=fixed)
    assert r.status_code == 200
    assert TOKEN not in r.text
    stored = {s.key: s for s in await api.store.settings()}
    assert stored["alert.tickets.token"].is_set
    assert stored["alert.tickets.labels"].value == ["llmscope", "sre"]
    assert stored["alert.tickets.tracker"].value == tracker
    # A blank token keeps the stored one (write-only): the section saves again.
    r = await client.post("/settings/section/tickets", data={**fixed, "alert.tickets.token": ""})
    assert r.status_code == 200
    assert "Tickets settings saved." in r.text or "Saved." in r.text
    assert TOKEN not in (await client.get("/settings")).text
