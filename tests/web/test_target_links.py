"""A target's secret (a URL's password, a key in its query string) is never in a page, nor in a
link or a form of it: a URL lands in the address bar, browser history, access logs and Referer
headers. Links and forms carry the target, and a chart key (which holds one), as printed
(``userinfo``); the routes that receive them map them back to the stored target, whose chart,
log and re-baseline they are."""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from markupsafe import escape
from nats.js import JetStreamContext

from llmscope.api.persister import store_violations
from llmscope.proto.charts import chart_key
from llmscope.web.userinfo import printed_chart_key, stored_chart_key, stored_target, without_password
from tests.api.conftest import Api
from tests.api.engine import feed, running_engine, wait_progress
from tests.api.factories import violation
from tests.api.test_charts import probes
from tests.web.test_pages import HX, login

pytestmark = pytest.mark.usefixtures("js")

SECRET = "s3cret"
CREDENTIALED = f"https://bot:{SECRET}@gw.example/v1"
KEYED = f"https://gw.example/openai/v1?api-key={SECRET}"
# The secret in a query value that is itself a URL: as written, beside another parameter of the
# nested URL, and percent-encoded.
NESTED = (
    f"https://gw.example/v1?next=/x?token={SECRET}",
    f"https://gw.example/v1?redirect=https://h/cb?api_key={SECRET}&state=2",
    f"https://gw.example/v1?next=/x%3Ftoken%3D{SECRET}",
)
# The secret as a URL or a form may carry it: as is, or percent-encoded (either case).
LEAKS = (
    SECRET,
    "".join(f"%{b:02X}" for b in SECRET.encode()),
    "".join(f"%{b:02x}" for b in SECRET.encode()),
)
LINK = re.compile(r'(?:href|hx-get|hx-post|action)="([^"]*)"')


def leaks(text: str) -> list[str]:
    return [leak for leak in LEAKS if leak.lower() in text.lower()]


def test_a_printed_target_and_chart_key_map_back_to_the_stored_ones() -> None:
    stored = ["local", CREDENTIALED, KEYED, *NESTED]
    for target in stored:
        assert stored_target(without_password(target), stored) == target
        assert stored_target(target, stored) == target  # an old bookmark's
        key = chart_key("ollama", "m", target, "simple-1", "latency_ms")
        printed = printed_chart_key(key)
        assert not leaks(printed) if target != "local" else printed == key
        assert stored_chart_key(printed, stored) == key
    assert stored_target("https://bot:•••@elsewhere/v1", stored) is None
    assert printed_chart_key("not a key") == "not a key"


async def test_no_page_links_to_a_targets_secret_and_its_links_reach_the_stored_target(
    api: Api, js: JetStreamContext, nats_url: str
) -> None:
    client = await login(api)
    # Targets of one model; "local", probed last, is the one charted by default.
    secret = {
        target: probes(8, start=10 * i, seed=10 + i, target=target)
        for i, target in enumerate((CREDENTIALED, KEYED, *NESTED))
    }
    local = probes(8, start=10 * len(secret), seed=3)
    async with api.store.pool.acquire() as conn:
        await store_violations(
            conn, [violation(events[-1], id=f"v-{i}") for i, events in enumerate(secret.values())]
        )
    async with running_engine(nats_url):
        await feed(api, js, [e for events in secret.values() for e in events] + local)
        for events in (*secret.values(), local):
            await wait_progress(api, events[0], 8, "collecting")

        pages = [
            "/",
            "/?hours=24",
            "/models",
            "/violations",
            *(f"/violations/v-{i}" for i in range(len(secret))),
            "/report?hours=24",
            "/compare?lines=target&series=ollama%7Cllama3.1%3A8b",
            "/status",
            "/dashboard",
        ]
        for stored, events in secret.items():
            shown = without_password(stored)
            assert not leaks(shown), shown
            html = str(escape(shown))  # as the page writes it: "&" is "&amp;"
            asked = f"/dashboard?provider=ollama&model=llama3.1%3A8b&prompt_id=simple-1&target={quote(shown)}"
            pages.append(asked)
            key = printed_chart_key(chart_key("ollama", "llama3.1:8b", stored, "simple-1", "latency_ms"))
            page = await client.get(asked)
            assert page.status_code == 200
            assert f'<option value="{html}" selected>' in page.text
            assert f"target {html}" in page.text  # the chart's label: this target's chart
            # Every link and live URL of the page reaches this target's chart, not the default.
            links = [unescape(u) for u in LINK.findall(page.text)]
            followed = [u for u in links if u.startswith(("/dashboard?", "/charts/settings?"))]
            assert len(followed) >= 3, links  # the chart panel's, the log's, the settings'
            for url in followed:
                params = dict(parse_qsl(urlsplit(url).query))
                if url.startswith("/dashboard?"):
                    assert params["target"] == shown, url
                    r = await client.get(url, headers={**HX, "HX-Target": "chart-panel"})
                    assert r.status_code == 200, url
                    if params.get("part") != "log":
                        assert f"target {html}" in r.text, url
                else:
                    assert params.get("chart_key", key) == key, url
                    r = await client.get(url, headers=HX)
                    assert r.status_code == 200, url
                assert not leaks(r.text), url
            # The re-baseline forms, posted as the page wrote them: the stored target's charts.
            forms = re.findall(r'<form method="post" action="([^"]*rebaseline)"(.*?)</form>', page.text, re.S)
            assert [action for action, _body in forms] == ["/charts/rebaseline", "/models/rebaseline"]
            for action, body in forms:
                fields = {
                    k: unescape(v)
                    for k, v in re.findall(r'type="hidden" name="([^"]*)" value="([^"]*)"', body)
                }
                if action == "/models/rebaseline":
                    options = re.findall(r'<option value="([^"]*)">only ', body)
                    assert shown in [unescape(o) for o in options], options
                    fields["only_target"] = shown
                r = await client.post(action, data={**fields, "by": "ann", "reason": "new gateway"})
                assert r.status_code == 200, (action, r.text[r.text.find("Not re-baselined") :][:300])
                assert not leaks(r.text), action
                assert f'<option value="{html}" selected>' in r.text, action
                if action == "/charts/rebaseline":
                    assert "Re-baselined: the chart collects a new baseline" in r.text
                else:
                    names = re.findall(r"<li>(.*?)</li>", r.text)
                    assert f"{html} · simple-1 · latency_ms" in names, names
                    assert not [n for n in names if not n.startswith(html)], names  # this target's only
            await wait_progress(api, events[0], 0, "collecting")
        # The default target's charts were not the ones re-baselined.
        await wait_progress(api, local[0], 8, "collecting")
        for path in pages:
            r = await client.get(path)
            assert r.status_code == 200, path
            assert not leaks(r.text), (path, r.text[r.text.lower().find(SECRET) - 300 :][:600])
    # The export keeps the stored value: it is what a script reads back.
    r = await client.get("/api/export/violations.csv")
    assert CREDENTIALED in r.text
