"""Settings saved from the dashboard name who saved them, as an acknowledgement does: the audit
trail recorded "dashboard" for every one, which named nobody. A blank name is refused naming
``by`` (422, or 200 to htmx with the error in the swapped form); the API keeps its default."""

from __future__ import annotations

import pytest

from llmscope.api import known_settings
from llmscope.web.settings_form import SECTIONS
from llmscope.web.setup_routes import SETUP_ENABLES, SETUP_KEYS
from tests.api.conftest import Api
from tests.web.test_pages import HX, login
from tests.web.test_settings_untouched import _form, _with


async def _by(api: Api, key: str) -> tuple[object, str | None]:
    s = {s.key: s for s in await api.store.settings()}[key]
    return s.value, s.updated_by


@pytest.mark.parametrize("hx", [False, True])
async def test_a_settings_section_needs_who_saves_it(api: Api, hx: bool) -> None:
    client = await login(api)
    headers = {**HX, "HX-Target": "section-policy"} if hx else {}
    page = (await client.get("/settings")).text
    assert '<label class="by">Saved by <input name="by" required' in page
    form: dict[str, list[str]] = {}
    for k, v in _with((await _form(client, "policy")).pairs, alert__group_interval_s="60"):
        form.setdefault(k, []).append(v)
    for blank in ({}, {"by": ["  "]}):
        r = await client.post("/settings/section/policy", data={**form, **blank}, headers=headers)
        assert r.status_code == (200 if hx else 422)
        assert "by: required: the name recorded as who saved it" in r.text
        assert (await _by(api, "alert.group_interval_s"))[1] is None  # nothing stored
    r = await client.post("/settings/section/policy", data={**form, "by": ["ann"]}, headers=headers)
    assert r.status_code == 200, r.text
    assert await _by(api, "alert.group_interval_s") == (60.0, "ann")
    assert 'value="ann"' in r.text  # the name stays for the next save


async def test_the_one_setting_form_and_the_wizard_need_who_saves(api: Api) -> None:
    client = await login(api)
    r = await client.post("/settings/alert.email.smtp_port", data={"value": "465"}, headers=HX)
    assert r.status_code == 422
    assert "by: required" in r.headers["hx-trigger"]
    r = await client.post("/settings/alert.email.smtp_port", data={"value": "465", "by": "bo"}, headers=HX)
    assert r.status_code == 200
    assert await _by(api, "alert.email.smtp_port") == (465, "bo")

    assert 'name="by" required' in (await client.get("/setup")).text
    r = await client.post("/setup", data={"alert.email.recipients": "ops@example.com"})
    assert r.status_code == 422
    assert "by: required: the name recorded as who saved it" in r.text
    assert (await _by(api, "alert.email.recipients"))[1] is None
    r = await client.post("/setup", data={"alert.email.recipients": "ops@example.com", "by": "cy"})
    assert r.status_code == 200, r.text
    assert await _by(api, "alert.email.recipients") == (["ops@example.com"], "cy")


async def test_api_clients_keep_saving_without_a_name(api: Api) -> None:
    r = await api.client.put("/api/settings/alert.email.smtp_port", json={"value": 25})
    assert r.status_code == 200, r.text
    assert await _by(api, "alert.email.smtp_port") == (25, "api")


def test_every_setting_the_wizard_sets_is_on_the_settings_page() -> None:
    """A channel set up in the wizard (Teams, Discord, Mattermost, Alertmanager, a Slack bot, an
    SMTP relay's CA) could not be seen, changed or switched off under Settings."""
    on_page = {f.key for s in SECTIONS for f in s.fields}
    assert set(SETUP_KEYS) - on_page == set()
    assert set(SETUP_ENABLES.values()) - on_page == set()
    assert {k for k in known_settings.BY_KEY if k.endswith(".enabled")} - on_page == set()
