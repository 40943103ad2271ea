"""The setup wizard's thirty-odd fields, grouped under the settings page's headings: the groups
every setup needs open, the optional channels folded; a refusal opens the group of each bad field
(and of each change typed in it) and focuses the first bad one."""

from __future__ import annotations

import re

import pytest

from tests.api.conftest import Api
from tests.web.test_pages import HX, login

OPTIONAL = ("slack", "webhook", "pagerduty", "alertmanager", "teams", "discord", "mattermost", "tickets")


def groups(html: str) -> dict[str, bool]:
    """Each group's id and whether it is open, in page order."""
    found = re.findall(r'<details class="setup-group" id="group-([a-z]+)"( open)?>', html)
    return {gid: bool(is_open) for gid, is_open in found}


async def test_the_wizard_opens_the_groups_every_setup_needs_and_folds_the_optional_channels(
    api: Api,
) -> None:
    client = await login(api)
    html = (await client.get("/setup")).text
    shown = groups(html)
    assert list(shown) == ["email", *OPTIONAL, "policy"]
    assert {g for g, is_open in shown.items() if is_open} == {"email", "policy"}
    for title in ("Email", "Slack", "PagerDuty", "Tickets", "What notifies"):
        assert f"<summary><h2>{title}</h2>" in html
    # Every field is still in the one form, folded or not: saved whole as before.
    assert html.count('<details class="setup-group"') == len(shown)
    assert "autofocus" not in html
    assert "aria-invalid" not in html


@pytest.mark.parametrize("hx", [False, True])
async def test_a_refusal_opens_the_group_of_the_bad_field_and_focuses_it(api: Api, hx: bool) -> None:
    client = await login(api)
    headers = {**HX, "HX-Target": "wizard"} if hx else {}
    r = await client.post(
        "/setup",
        data={
            "by": "ann",
            "alert.slack.channel": "#ops",  # a change typed in a folded group, kept in sight
            "alert.tickets.tracker": "github",  # without its project and token: refused together
        },
        headers=headers,
    )
    assert r.status_code == (200 if hx else 422), r.text
    shown = groups(r.text)
    bad = re.findall(r'name="(alert\.tickets\.[a-z_]+)" aria-invalid="true"', r.text)
    assert bad, r.text
    opened = {g for g, is_open in shown.items() if is_open}
    assert opened == {"email", "policy", "tickets", "slack"}, shown
    assert '<h2>Tickets</h2> <span class="field-error">needs a correction</span>' in r.text
    focused = re.findall(r'<(?:input|select) name="([^"]+)"[^>]*\bautofocus\b', r.text)
    assert focused == [bad[0]]
    # A missing name is the only error: the name field is the one focused.
    r = await client.post("/setup", data={"alert.slack.channel": "#ops"}, headers=headers)
    assert re.findall(r'<(?:input|select) name="([^"]+)"[^>]*\bautofocus\b', r.text) == ["by"]
