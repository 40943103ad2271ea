"""``/report.json`` once the engine has written a target's availability chart: the status rows
carry that chart (an ``AvailabilityView``), and the export must still encode them."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from llmscope.api.settings import ApiSettings
from llmscope.proto.charts import AVAILABILITY, AvailabilityView, ChartMeta, ChartRecord, chart_key
from tests.api.conftest import API_KEY, Api
from tests.web.test_pages import login
from tests.web.test_trends import seed


async def test_report_json_encodes_the_engines_availability_chart(
    api: Api, settings: ApiSettings, nc: NATS
) -> None:
    await seed(api)
    key = chart_key("ollama", "llama3.1:8b", "local", "*", AVAILABILITY)
    meta = ChartMeta(
        provider="ollama", model="llama3.1:8b", target="local", prompt_id="*", metric=AVAILABILITY
    )
    view = AvailabilityView(
        phase="armed",
        progress=200,
        baseline_n=200,
        baseline_failure_rate=0.01,
        window=50,
        threshold=7,
        fail_run=3,
        failure_run=2,
    )
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=settings.charts_bucket))
    await kv.put(key, msgspec.json.encode(ChartRecord(key=key, meta=meta, availability=view)))
    client = await login(api)
    # The models page reads the same chart: the record is in place before the export is asked.
    page = await client.get("/models")
    assert page.status_code == 200
    assert "alarm at 3 in a row" in page.text

    r = await client.get("/report.json?hours=24")
    assert r.status_code == 200, r.text
    rows = {(row["model"], row["target"]): row for row in r.json()["status"]}
    charted = rows[("llama3.1:8b", "local")]["availability"]
    assert (charted["phase"], charted["failure_run"], charted["fail_run"]) == ("armed", 2, 3)
    assert rows[("org/other:1", "local")]["availability"] is None


async def test_scripts_fetch_the_report_with_a_bearer_key_and_get_401_not_the_login_page(api: Api) -> None:
    """As ``/api/export/...``: the API key as a bearer token opens the report's JSON and PDF; a
    script with a bad key (or another scheme) gets 401 naming the key, never a redirect to a form."""
    await seed(api)
    r = await api.anon.get("/report.json?hours=24", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200, (r.status_code, r.headers.get("location"))
    assert {row["model"] for row in r.json()["status"]} >= {"llama3.1:8b"}
    # Printed when a Chromium is installed, else 503 saying so: either way not the login page.
    r = await api.anon.get("/report.pdf?hours=24", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code in (200, 503), (r.status_code, r.headers.get("location"))
    for path in ("/report.json?hours=24", "/report.pdf?hours=24"):
        for header in ("Bearer not-the-key", "Basic dXNlcjpwYXNz", "Bearer"):
            r = await api.anon.get(path, headers={"Authorization": header})
            assert r.status_code == 401, (path, header, r.status_code, r.headers.get("location"))
            assert r.headers["www-authenticate"] == "Bearer"
            assert "LLMSCOPE_API_KEY" in r.text
    # A browser following a link without a session still goes to the login page.
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    r = await api.anon.get("/report.json?hours=24", headers=browser)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login")


async def test_a_script_without_a_key_gets_401_naming_it_and_a_browser_the_login_page(api: Api) -> None:
    """No ``Authorization`` header: a download asked with an ``Accept`` that leaves out
    ``text/html`` (curl's and requests' ``*/*``, a script's ``application/json``) comes from a
    script, which gets 401 naming the key to send; a browser's navigation gets the login page."""
    await seed(api)
    paths = ("/report.json?hours=24", "/report.pdf?hours=24", "/report/incidents.csv?hours=24")
    for path in paths:
        for accept in ("application/json", "*/*", "application/pdf", "text/csv", "text/html;q=0"):
            r = await api.anon.get(path, headers={"Accept": accept})
            assert r.status_code == 401, (path, accept, r.status_code, r.headers.get("location"))
            assert r.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer <LLMSCOPE_API_KEY" in r.text
        for accept in ("text/html,application/xhtml+xml,*/*;q=0.8", "text/html"):
            r = await api.anon.get(path, headers={"Accept": accept})
            assert r.status_code == 303, (path, accept, r.status_code)
            assert r.headers["location"].startswith("/login?next=%2Freport")
    # A page (not a download) still sends any client without a session to the login form.
    r = await api.anon.get("/report?hours=24", headers={"Accept": "application/json"})
    assert r.status_code == 303
    # Signed in, the session opens the downloads whatever the Accept.
    client = await login(api)
    r = await client.get("/report.json?hours=24", headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    r = await client.get("/report/incidents.csv?hours=24", headers={"Accept": "*/*"})
    assert r.status_code == 200, r.text
