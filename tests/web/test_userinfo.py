"""A target's password is never printed: the dashboard is read on shared screens, in screenshots
and printed reports. Every page that prints a target prints its userinfo redacted
(``userinfo.without_password``); the CSV export keeps the stored value, for scripts."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from llmscope.api.persister import store_telemetry, store_violations
from llmscope.proto.redaction import HIDDEN, redacted, without_fingerprints
from llmscope.web.data import ChartQuery
from llmscope.web.userinfo import without_password
from tests.api.conftest import Api
from tests.api.factories import telemetry, violation
from tests.web.test_pages import login

SECRET = "s3cret"
CREDENTIALED = f"https://bot:{SECRET}@my-company-llm-router.prod.eu-west-1.internal.corp/v1/chat/completions"
# As printed with no installation key (``•••`` alone); a running API adds each hidden value's
# fingerprint under its key (``printed``).
SHOWN = "https://bot:•••@my-company-llm-router.prod.eu-west-1.internal.corp/v1/chat/completions"
# A gateway taking its key in the query string (Azure OpenAI's api-key).
KEYED = f"https://inferenceclusterprod01.example.com/openai/v1?api-key={SECRET}"
KEYED_SHOWN = "https://inferenceclusterprod01.example.com/openai/v1?api-key=•••"
QUERY_SHOWN_TWO = "https://gw.example/openai?api-version=2024-06-01&api-key=•••"


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        (CREDENTIALED, SHOWN),
        ("https://user:secret@gateway.example/v1", "https://user:•••@gateway.example/v1"),
        ("http://sk-live-abc123@gw.local:8443/v1", "http://•••@gw.local:8443/v1"),  # a token as user
        ("http://u:p@ss@gw.local/v1?next=a@b", "http://u:•••@gw.local/v1?next=a@b"),  # "@" unescaped
        ("http://u:@gw.local", "http://u:•••@gw.local"),
        ("https://gateway.example/v1?mail=a@b", "https://gateway.example/v1?mail=a@b"),  # no userinfo
        ("http://[2001:db8::1]:8443/v1", "http://[2001:db8::1]:8443/v1"),
        ("local", "local"),
        ("checkout-service@prod", "checkout-service@prod"),  # a traffic service's name, no URL
        ("", ""),
        (None, ""),
        # Keys in the query string: the value hidden, the parameter's name and the rest kept.
        ("https://gw.example/v1?key=abc", "https://gw.example/v1?key=•••"),
        ("https://gw.example/openai?api-version=2024-06-01&api-key=abc", QUERY_SHOWN_TWO),
        ("https://gw.example/v1?api_key=abc;x=1#top", "https://gw.example/v1?api_key=•••;x=1#top"),
        ("https://gw.example/v1?token=t&access_token=a", "https://gw.example/v1?token=•••&access_token=•••"),
        ("https://blob.example/m?sv=2024&sig=ab%2Bc%3D", "https://blob.example/m?sv=2024&sig=•••"),
        ("https://bot:pw@gw.example/v1?Api-Key=abc", "https://bot:•••@gw.example/v1?Api-Key=•••"),  # any case
        ("https://gw.example/v1?monkey=1&keys=2&key=", "https://gw.example/v1?monkey=1&keys=2&key="),
        ("https://gw.example/v1?next=key=abc", "https://gw.example/v1?next=key=abc"),  # a value, kept
        ("gw.local:8080/v1?token=abc", "gw.local:8080/v1?token=•••"),  # no scheme
        # A value that is itself a URL or a path with a query: its secrets hidden too, as written
        # or percent-encoded (once, twice), the rest kept.
        ("https://gw.example/v1?next=/x?token=1", "https://gw.example/v1?next=/x?token=•••"),
        (
            "https://gw.example/v1?redirect=https://h/cb?api_key=abc&state=2",
            "https://gw.example/v1?redirect=https://h/cb?api_key=•••&state=2",
        ),
        ("https://gw.example/v1?next=/x%3Ftoken%3D1", "https://gw.example/v1?next=/x%3Ftoken%3D•••"),
        ("https://gw.example/v1?next=%2Fx%3ftoken%3d1", "https://gw.example/v1?next=%2Fx%3ftoken%3d•••"),
        (
            "https://gw.example/v1?r=https%3A%2F%2Fh%2Fcb%3Fa%3D1%26Api-Key%3Dabc%26b%3D2",
            "https://gw.example/v1?r=https%3A%2F%2Fh%2Fcb%3Fa%3D1%26Api-Key%3D•••%26b%3D2",
        ),
        ("https://gw.example/v1?r=%252Fx%253Fsig%253Dab", "https://gw.example/v1?r=%252Fx%253Fsig%253D•••"),
        ("https://gw.example/v1?r=https://u:pw@h/cb", "https://gw.example/v1?r=https://u:•••@h/cb"),
        ("https://gw.example/v1?next=/x?a=1?token=3", "https://gw.example/v1?next=/x?a=1?token=•••"),
        # Nested deeper than followed, or in a form not followed (an encoded userinfo): hidden whole.
        ("https://gw.example/v1?r=https%3A%2F%2Fu%3Apw%40h%2Fcb", "https://gw.example/v1?r=•••"),
        ("https://gw.example/v1?r=" + "/x?a=" * 6 + "/y?token=1", "https://gw.example/v1?r=•••"),
        (
            "https://gw.example/v1?q=a%3Fb&next=/docs?page=2",
            "https://gw.example/v1?q=a%3Fb&next=/docs?page=2",
        ),
    ],
)
def test_the_password_is_hidden_and_the_rest_kept(target: str | None, shown: str) -> None:
    # No installation key (no API started): "•••" alone, never an unkeyed hash.
    assert without_password(target) == shown
    assert redacted(target) == shown  # the shared rule (llmscope.proto.redaction)
    assert without_password(shown) == shown  # a printed target prints as it is
    # Under a key, what is hidden and what is kept are the same; each hidden value has its
    # fingerprint (test_target_fingerprints), left out of the table.
    printed = redacted(target, b"k" * 32)
    assert without_fingerprints(printed) == shown
    assert printed.count(HIDDEN) == len(re.findall(f"{HIDDEN}[0-9a-f]{{4}}", printed))
    assert redacted(printed, b"k" * 32) == printed


def printed(stored: str) -> str:
    """``stored`` as the running API prints it: fingerprinted under its installation's key."""
    shown = without_password(stored)
    assert shown != without_fingerprints(shown), "the API loaded no fingerprint key"
    return shown


@pytest.mark.parametrize(
    ("stored", "shown", "leak"),
    [(CREDENTIALED, SHOWN, f":{SECRET}@"), (KEYED, KEYED_SHOWN, f"key={SECRET}")],
    ids=["userinfo", "query"],
)
async def test_no_page_prints_a_targets_password(api: Api, stored: str, shown: str, leak: str) -> None:
    assert without_fingerprints(printed(stored)) == shown
    shown = printed(stored)
    now = datetime.now(UTC)
    probes = [
        telemetry(i, id=f"cred-{i}", target=stored, ts=now - timedelta(minutes=2 * (60 - i)))
        for i in range(60)
    ]
    # The model's other target: the dashboard offers a choice of the two.
    local = [telemetry(i, id=f"local-{i}", ts=now - timedelta(minutes=2 * (60 - i))) for i in range(60)]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, probes + local)
        await store_violations(conn, [violation(probes[-5], id="v-cred")])
    client = await login(api)
    q = ChartQuery(provider="ollama", model="llama3.1:8b", prompt_id="simple-1", target=stored)
    pages = {
        "/models": "the health table",
        "/violations/v-cred": "the violation's header and its context",
        "/report?hours=24": "the report's tables and chart headings",
        "/": "the overview",
        "/status": "the status page",
        f"/dashboard?provider={q.provider}&model={q.model}&prompt_id={q.prompt_id}&hours=24": "the chart",
    }
    for path, what in pages.items():
        r = await client.get(path)
        assert r.status_code == 200, (path, r.text[:300])
        # Nor do its links and forms (test_target_links: they carry the target as printed).
        assert SECRET not in r.text, (path, what, r.text[r.text.find(SECRET) - 300 :][:600])
    for path in ("/models", "/violations/v-cred", "/report?hours=24"):
        r = await client.get(path)
        assert f'title="{shown}"' in r.text, path  # the whole target, its password hidden
    # Links and the address bar (the target chosen on the dashboard is pushed into it) carry the
    # target as printed; the dashboard charts the stored target it stands for.
    asked = {"provider": q.provider, "model": q.model, "prompt_id": q.prompt_id, "hours": "24"}
    page = (await client.get("/dashboard", params={**asked, "target": shown})).text
    assert f'<option value="{shown}" selected>' in page
    assert '<option value="local" >' in page
    assert f'<input type="hidden" name="target" value="{shown}">' in page  # the re-baseline's
    # The export is what a script reads back: the stored value.
    r = await client.get("/api/export/violations.csv")
    assert r.status_code == 200, r.text[:300]
    assert stored in r.text


async def test_headers_show_a_long_target_shortened_with_the_whole_in_its_title(api: Api) -> None:
    """The violation's header, its context's heading and the report's chart headings printed a
    long target whole, wider than a phone's card: shortened as in the tables, whole in its title."""
    now = datetime.now(UTC)
    probes = [
        telemetry(i, id=f"cred-{i}", target=CREDENTIALED, ts=now - timedelta(minutes=2 * (60 - i)))
        for i in range(60)
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, probes)
        await store_violations(conn, [violation(probes[-5], id="v-cred", metric="availability")])
    client = await login(api)
    short = f'<span class="url" title="{printed(CREDENTIALED)}">'
    page = (await client.get("/violations/v-cred")).text
    header = re.search(r"<p>ollama/llama3.1:8b · target (.*?)</p>", page, re.S)
    assert header is not None
    assert header.group(1).startswith(short), header.group(1)
    context = re.search(r"<h2>Probes of (.*?)</h2>", page, re.S)
    assert context is not None
    assert context.group(1).startswith(short), context.group(1)
    # The overview links to the model's chart on its target, as printed (the address bar shows it).
    overview = (await client.get("/")).text
    links = re.findall(r'href="(/dashboard\?[^"]*)"', overview)
    assert links
    assert not [link for link in links if SECRET in link], links
    fingerprint = printed(CREDENTIALED).split(HIDDEN)[1][:4]
    assert [link for link in links if f"bot%3A%E2%80%A2%E2%80%A2%E2%80%A2{fingerprint}%40" in link], links
    report = (await client.get("/report?hours=24")).text
    headings = re.findall(r"<h2>Control chart:.*?</h2>", report, re.S)
    assert headings
    assert all(short in h for h in headings), headings
