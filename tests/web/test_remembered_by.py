"""Every dashboard change asks who makes it (``by``); the browser that last saved a name is offered
it on its next form, still editable, and only that browser: people who share the admin key never
see each other's names (``llmscope.web.remembered_by``)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from llmscope.web.auth import CSRF_HEADER
from llmscope.web.remembered_by import BY_COOKIE
from llmscope.web.settings_form import SECTIONS
from tests.api.conftest import API_KEY, Api
from tests.web.test_pages import HX, csrf_token, login, seed

FORM_PAGES = ("/settings", "/setup", "/violations/v1", "/violations/v2", "/dashboard?hours=24")


def by_values(html: str) -> list[str]:
    """The ``value`` of every ``by`` text field on a page."""
    fields = re.findall(r'<input name="by"[^>]*>', html)
    assert fields, html[:300]
    return [m.group(1) if (m := re.search(r'value="([^"]*)"', f)) else "" for f in fields]


def section_by(html: str) -> dict[str, str]:
    """The ``by`` of each settings section's form on a page (or in a swapped section)."""
    parts = re.split(r'<section class="card settings-section" id="section-([a-z_-]+)"', html)[1:]
    assert parts, html[:300]
    return {
        sid: by_values(body.split("</section>", 1)[0])[0]
        for sid, body in zip(parts[::2], parts[1::2], strict=True)
    }


@pytest.fixture
async def other_browser(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    """A second browser on the same dashboard, signed in with the same admin key."""
    transport = httpx.ASGITransport(app=api.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        r = await client.post("/login", data={"key": API_KEY, "next": "/"})
        assert r.status_code == 303
        client.headers[CSRF_HEADER] = csrf_token(await client.get("/settings"))
        yield client


async def test_the_name_a_browser_saved_under_fills_its_next_forms_and_no_other_browsers(
    api: Api, other_browser: httpx.AsyncClient
) -> None:
    await seed(api)
    client = await login(api)
    for path in FORM_PAGES:
        assert set(by_values((await client.get(path)).text)) == {""}, path
    # A refused save (no name, or a name but a cross-site origin) remembers nothing.
    r = await client.post("/violations/v2/acknowledge", data={"by": " "})
    assert r.status_code == 422
    r = await client.post(
        "/violations/v2/acknowledge", data={"by": "eve"}, headers={"Origin": "https://x.example"}
    )
    assert r.status_code == 403
    assert BY_COOKIE not in client.cookies

    target = {**HX, "HX-Target": "actions"}
    r = await client.post("/violations/v2/acknowledge", data={"by": "sam"}, headers=target)
    assert r.status_code == 200, r.text
    assert "Acknowledged by <b>sam</b>" in r.text
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{BY_COOKIE}=sam;")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert by_values(r.text) == ["sam"]  # the swapped form already offers it
    for path in FORM_PAGES:
        assert set(by_values((await client.get(path)).text)) == {"sam"}, path

    # Another browser with the same key is offered nobody's name, and a blank save is refused.
    for path in FORM_PAGES:
        assert set(by_values((await other_browser.get(path)).text)) == {""}, path
    r = await other_browser.post("/setup", data={"alert.email.recipients": "ops@example.com", "by": ""})
    assert r.status_code == 422
    assert "by: required: the name recorded as who saved it" in r.text
    # Still editable: a save under another name is remembered in its place (any script, too).
    r = await client.post("/setup", data={"alert.email.recipients": "ops@example.com", "by": "Zoë Ünal"})
    assert r.status_code == 200, r.text
    assert set(by_values((await client.get("/settings")).text)) == {"Zoë Ünal"}
    assert set(by_values((await other_browser.get("/settings")).text)) == {""}

    # Logging out forgets it: the next person at this browser types their own.
    r = await client.post("/logout")
    assert r.status_code == 303
    assert BY_COOKIE not in client.cookies
    client = await login(api)
    assert set(by_values((await client.get("/settings")).text)) == {""}


async def test_a_form_sent_without_a_session_remembers_nothing(api: Api) -> None:
    r = await api.anon.post("/violations/v1/acknowledge", data={"by": "mallory"})
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login")
    assert BY_COOKIE not in r.headers.get("set-cookie", "")


EMAIL_FORM = {
    "alert.email.enabled": "true",
    "alert.email.recipients": "ops@x.io",
    "alert.email.smtp_host": "mail.x.io",
    "alert.email.smtp_port": "x",  # refused: the form comes back for this field
    "alert.email.tls": "ssl",
    "alert.email.from_addr": "llmscope@x.io",
}


@pytest.mark.parametrize("hx", [False, True])
async def test_a_refused_form_shows_its_name_as_sent_and_remembers_none(api: Api, hx: bool) -> None:
    """A form refused for another field came back with the remembered name in a ``by`` field the
    person had cleared; and an htmx refusal (a 200) with a name set the cookie as a save would."""
    await seed(api)
    client = await login(api)
    r = await client.post("/violations/v1/acknowledge", data={"by": "sam"})
    assert r.status_code == 200, r.text
    assert client.cookies.get(BY_COOKIE) == "sam"
    section = {**HX, "HX-Target": "section-email"} if hx else {}
    wizard = {**HX, "HX-Target": "wizard"} if hx else {}
    refused = 200 if hx else 422

    # Cleared: the field comes back blank (and refused for it too), never "sam" again; the
    # page's other sections, not sent, keep "sam" (they showed the refused form's blank).
    r = await client.post("/settings/section/email", data={**EMAIL_FORM, "by": ""}, headers=section)
    assert r.status_code == refused, r.text
    assert "SMTP port:" in r.text, re.findall(r"field-error[^<]*<", r.text)
    shown = section_by(r.text)
    assert shown.pop("email") == ""
    assert set(shown.values()) == (set() if hx else {"sam"}), shown
    assert len(shown) == (0 if hx else len(SECTIONS) - 1)
    r = await client.post("/setup", data={"alert.email.smtp_port": "x", "by": "  "}, headers=wizard)
    assert r.status_code == refused, r.text
    assert by_values(r.text) == [""]

    # Another name, refused for the port: shown as typed in its section only, and not remembered.
    r = await client.post("/settings/section/email", data={**EMAIL_FORM, "by": "eve"}, headers=section)
    assert r.status_code == refused, r.text
    shown = section_by(r.text)
    assert shown.pop("email") == "eve"
    assert set(shown.values()) == (set() if hx else {"sam"}), shown
    assert BY_COOKIE not in r.headers.get("set-cookie", "")
    r = await client.post("/setup", data={"alert.email.smtp_port": "x", "by": "eve"}, headers=wizard)
    assert r.status_code == refused, r.text
    assert by_values(r.text) == ["eve"]
    assert BY_COOKIE not in r.headers.get("set-cookie", "")
    assert client.cookies.get(BY_COOKIE) == "sam"
    assert set(by_values((await client.get("/settings")).text)) == {"sam"}


async def test_a_refused_one_setting_form_leaves_the_sections_the_remembered_name(api: Api) -> None:
    """The older one-setting form, refused, answers the whole settings page: none of its sections'
    forms was sent, so each shows the browser's name, never the refused one."""
    await seed(api)
    client = await login(api)
    r = await client.post("/violations/v1/acknowledge", data={"by": "sam"})
    assert r.status_code == 200, r.text
    r = await client.post("/settings/alert.email.smtp_port", data={"value": "x", "by": "eve"})
    assert r.status_code == 422, r.text
    assert set(section_by(r.text).values()) == {"sam"}
    assert client.cookies.get(BY_COOKIE) == "sam"
