"""A channel URL or SMTP host that reaches this host, cloud metadata or the private network is
refused when it is saved (422 naming the setting), unless the operator's allow-list names it
(issue 9, finding 5); the alerter checks again at every connection (tests/alerter/test_rebinding.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from llmscope.api import known_settings
from llmscope.api.settings import ApiSettings
from tests.api.conftest import API_KEY, Api, serve


@pytest.fixture
async def closed(settings: ApiSettings) -> AsyncIterator[Api]:
    """The API with no allow-list: only public destinations may be saved."""
    async with serve(dataclasses.replace(settings, alert_allowed_hosts=())) as running:
        yield running


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        ("alert.webhook.url", "http://169.254.169.254/latest/meta-data/?token=s3cret", "link-local"),
        ("alert.slack.webhook_url", "https://10.0.0.5:6379/services/T/B/X", "private"),
        ("alert.webhook.url", "http://localhost:8080/hook", "loopback"),  # a name, resolved
        ("alert.webhook.url", "http://[::1]/hook", "loopback"),
        ("alert.email.smtp_host", "127.0.0.1", "loopback"),
        ("alert.email.smtp_host", "localhost", "loopback"),
        ("alert.email.smtp_host", "192.168.1.10", "private"),
        ("alert.tickets.url", "http://169.254.169.254/rest/api/2", "link-local"),
        ("alert.alertmanager.url", "http://127.0.0.1:9093", "loopback"),
        ("alert.teams.webhook_url", "https://169.254.169.254/hook", "link-local"),
        ("alert.discord.webhook_url", "https://10.1.2.3/api/webhooks/1/x", "private"),
        ("alert.mattermost.webhook_url", "http://localhost/hooks/x", "loopback"),
    ],
)
async def test_saving_an_internal_destination_is_refused_naming_the_setting(
    closed: Api, key: str, value: str, kind: str
) -> None:
    r = await closed.client.put(f"/api/settings/{key}", json={"value": value})
    assert r.status_code == 422, r.text
    [detail] = r.json()["detail"]
    assert detail["field"] == key
    assert kind in detail["msg"]
    assert "LLMSCOPE_ALERT_ALLOWED_HOSTS" in detail["msg"]
    assert "s3cret" not in r.text  # the URL is never echoed: it may hold a token
    settings = {s["key"]: s for s in (await closed.client.get("/api/settings")).json()}
    assert settings[key]["is_set"] is False


def test_every_url_setting_is_checked_as_a_destination() -> None:
    urls = {
        s.key for s in known_settings.SPECS if s.key.endswith(("url", "_url")) and s.key.startswith("alert.")
    }
    assert urls
    assert urls <= set(known_settings.DESTINATIONS)


async def test_public_and_unresolvable_destinations_and_clearing_are_saved(closed: Api) -> None:
    for key, value in [
        ("alert.slack.webhook_url", "https://93.184.215.14/services/T/B/X"),
        ("alert.webhook.url", "https://hooks.example.invalid/in"),  # judged again at send time
        ("alert.webhook.url", ""),
        ("alert.email.smtp_host", "smtp.example.invalid"),
    ]:
        r = await closed.client.put(f"/api/settings/{key}", json={"value": value})
        assert r.status_code == 200, r.text


async def test_a_name_no_dns_could_answer_is_refused_not_a_500(closed: Api) -> None:
    # IDNA's UnicodeError escaped the policy: a 500 (schemathesis, issue 9).
    for key, value in [
        ("alert.discord.webhook_url", "http://" + "0" * 64 + "/x"),  # a label over 63 characters
        ("alert.webhook.url", "https://a\x9db.example/in"),
        ("alert.email.smtp_host", "a" * 64 + ".example"),
    ]:
        r = await closed.client.put(f"/api/settings/{key}", json={"value": value})
        assert r.status_code == 422, (key, r.text)
        assert "not a host name" in r.json()["detail"][0]["msg"]


async def test_the_allow_list_lets_a_local_destination_be_saved(api: Api) -> None:
    for key, value in [("alert.email.smtp_host", "127.0.0.1"), ("alert.webhook.url", "http://localhost:9/x")]:
        r = await api.client.put(f"/api/settings/{key}", json={"value": value})
        assert r.status_code == 200, r.text


async def test_the_settings_page_refuses_an_internal_destination_too(closed: Api) -> None:
    r = await closed.anon.post("/login", data={"key": API_KEY, "next": "/settings"})
    assert r.status_code == 303
    r = await closed.anon.post(
        "/settings/alert.webhook.url",
        data={"value": "http://169.254.169.254/latest/", "by": "ana"},
        headers={"Origin": "http://testserver"},
    )
    assert r.status_code == 422
    # The page answers with its form and the refusal as a toast (HX-Trigger), naming both.
    assert "alert.webhook.url" in r.headers["HX-Trigger"]
    assert "link-local" in r.headers["HX-Trigger"]
