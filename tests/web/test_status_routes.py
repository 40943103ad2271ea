"""``/status`` (full page and HTMX fragment) and ``/badge/{provider}/{model}.svg``, private and public."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import quote

import pytest

from llmscope.web.badge import STATUS_COLOURS
from tests.api.conftest import API_KEY, Api
from tests.api.test_status import HOSTS, public_api, seed
from tests.web.test_pages import HX, is_full_page, login

__all__ = ["public_api"]

NS = "{http://www.w3.org/2000/svg}"


def badge_texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{NS}text")]


def badge_colour(svg: str) -> str | None:
    return list(ET.fromstring(svg).iter(f"{NS}rect"))[2].get("fill")


async def test_status_page_needs_a_login_unless_public(api: Api) -> None:
    r = await api.anon.get("/status")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fstatus"
    r = await api.anon.get("/status", headers=HX)
    assert r.status_code == 401
    assert r.headers["hx-redirect"].startswith("/login")
    r = await api.anon.get(f"/status?key={API_KEY}")  # the key once, traded for a cookie
    assert (r.status_code, r.headers["location"]) == (303, "/status")
    r = await api.anon.get("/status", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200


async def test_status_page_full_and_fragment(api: Api) -> None:
    await seed(api)
    client = await login(api)
    r = await client.get("/status")
    assert r.status_code == 200
    html = r.text
    assert is_full_page(html)
    assert '<a href="/status" class="active">Status</a>' in html
    assert (
        'hx-trigger="sse:status delay:1s, live-resumed from:body, every 30s [!llmscopeLive]"' in html
    )  # signed in: live
    assert '<span class="status outage">outage</span>' in html  # the overall status
    assert "ollama / llama3.1:8b" in html
    assert '<span class="status degraded">degraded</span>' in html
    assert "93.02%" in html  # llama3.1:8b's 24 h uptime, 40 of 43
    assert "3 failed probes in a row on local" in html
    assert "ollama / off:1" not in html  # disabled
    # The badge hint says what a wiki needs: its readers are not signed in, so a private badge
    # is a 401 there.
    assert "LLMSCOPE_STATUS_PUBLIC=true</code> makes this page and the\n      badges public" in html

    r = await client.get("/status", headers={**HX, "HX-Target": "status-list"})
    assert not is_full_page(r.text)
    assert r.text.lstrip().startswith('<div id="status-list"')
    assert "openai / org/gpt:1" in r.text
    r = await client.get("/status", headers=HX)
    assert not is_full_page(r.text)
    assert 'id="status-list"' in r.text


async def test_the_navigation_links_the_status_page(api: Api) -> None:
    client = await login(api)
    assert '<a href="/status" >Status</a>' in (await client.get("/models")).text


async def test_public_status_page_shows_names_and_statuses_only(public_api: Api) -> None:
    await seed(public_api)
    for headers in ({}, {**HX, "HX-Target": "status-list"}):
        r = await public_api.anon.get("/status", headers=headers)
        assert r.status_code == 200
        assert "ollama / llama3.1:8b" in r.text
        assert '<span class="status outage">outage</span>' in r.text
        # A model whose probes stopped says so in public too (it used to read "unknown" there
        # while the signed-in pages said "stopped reporting"); the overall is the worst health,
        # with the stopped one counted, not "stopped reporting" for all.
        assert '<span class="status stopped" title="no recent probe">stopped reporting</span>' in r.text
        assert '<span class="status outage">1 of 4 down · 1 stopped reporting</span>' in r.text
        for secret in (*HOSTS, ">local<", "failed probes", "%", "Log out", "/violations", "ago"):
            assert secret not in r.text, secret
    r = await public_api.anon.get("/status")
    assert is_full_page(r.text)
    assert "<nav>" not in r.text
    # Signed in, the public page is the full one.
    client = await login(public_api)
    full = (await client.get("/status")).text
    assert "3 failed probes in a row on local" in full
    assert "/badge/PROVIDER/MODEL.svg" in full
    assert "LLMSCOPE_STATUS_PUBLIC" not in full  # already public: nothing to add


async def test_badges_need_the_key_unless_public(api: Api) -> None:
    await seed(api)
    r = await api.anon.get("/badge/ollama/llama3.1:8b.svg")
    assert r.status_code == 401
    assert r.headers["content-type"] == "image/svg+xml"
    assert r.headers["cache-control"] == "no-store"
    assert badge_texts(r.text)[-1] == "login required"
    # An unknown model answers the same: nothing is learnt about which models exist.
    assert (await api.anon.get("/badge/ollama/nope.svg")).text == (
        await api.anon.get("/badge/ollama/nope.svg")
    ).text
    r = await api.anon.get("/badge/ollama/llama3.1:8b.svg", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200
    assert r.headers["cache-control"] == "private, max-age=60"
    assert badge_texts(r.text)[-1] == "outage"
    client = await login(api)
    assert (await client.get("/badge/ollama/llama3.1:8b.svg")).status_code == 200


@pytest.mark.parametrize(
    ("path", "label", "status"),
    [
        ("ollama/llama3.1:8b", "llama3.1:8b", "outage"),
        ("openai/org/gpt:1", "org/gpt:1", "degraded"),  # a "/" in the model name
        ("openai/" + quote("org/gpt:1", safe=""), "org/gpt:1", "degraded"),  # or escaped
        ("ollama/healthy:1", "healthy:1", "operational"),
        ("ollama/retired:1", "retired:1", "stopped"),
    ],
)
async def test_public_badge_per_status(public_api: Api, path: str, label: str, status: str) -> None:
    await seed(public_api)
    r = await public_api.anon.get(f"/badge/{path}.svg")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/svg+xml"
    assert r.headers["cache-control"] == "public, max-age=60"
    words = "stopped reporting" if status == "stopped" else status
    assert badge_texts(r.text) == [label, label, words, words]
    assert badge_colour(r.text) == STATUS_COLOURS[status]  # type: ignore[index]


@pytest.mark.parametrize(
    "path", ["/badge/ollama/nope:1.svg", "/badge/ollama/off:1.svg", "/badge/ollama/llama3.1:8b"]
)
async def test_unknown_model_badge_is_a_404_unknown_badge(public_api: Api, path: str) -> None:
    await seed(public_api)
    r = await public_api.anon.get(path)
    assert r.status_code == 404
    assert r.headers["content-type"] == "image/svg+xml"
    assert badge_texts(r.text)[-1] == "unknown"
    assert badge_colour(r.text) == STATUS_COLOURS["unknown"]


async def test_the_overall_badge_follows_the_overall_rule(api: Api, public_api: Api) -> None:
    r = await api.anon.get("/badge/status.svg")
    assert (r.status_code, badge_texts(r.text)[-1]) == (401, "login required")
    await seed(public_api)
    r = await public_api.anon.get("/badge/status.svg")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "public, max-age=60"
    assert badge_texts(r.text) == ["status", "status", *["1 of 4 down · 1 stopped reporting"] * 2]
    assert badge_colour(r.text) == STATUS_COLOURS["outage"]
