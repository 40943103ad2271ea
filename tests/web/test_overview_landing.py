"""The overview, the landing page: its open critical episodes say which chart each is on (a
model's prompts are separate charts, and a shift on all of them is several episodes of the same
rule and metric), and until the setup wizard is saved it says that nobody is told."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from llmscope.api.persister import store_telemetry, store_violations
from tests.api.conftest import Api
from tests.api.factories import telemetry, violation
from tests.web.test_pages import login


async def test_each_open_critical_episode_names_its_prompt(api: Api) -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)  # within the status window
    events = [
        telemetry(i, ts=start + timedelta(seconds=2 * i), prompt_id=("short-1", "long-1")[i % 2])
        for i in range(40)
    ]
    shifted = [
        violation(events[30], id="v-short", rule="CUSUM"),
        violation(events[31], id="v-long", rule="CUSUM"),
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, events)
        await store_violations(conn, shifted)
    client = await login(api)
    r = await client.get("/")
    assert r.status_code == 200
    named = re.findall(r'<span class="sev critical">CUSUM</span> ([^<]+)</a>', r.text)
    assert sorted(named) == ["latency_ms · long-1", "latency_ms · short-1"]


async def test_the_overview_points_to_the_setup_page_until_it_is_saved(api: Api) -> None:
    client = await login(api)
    first = await client.get("/")
    assert "First run: no alert channel has been set up" in first.text
    assert 'href="/setup">Set up alerts' in first.text
    r = await client.post("/setup", data={"alert.email.recipients": "ops@example.com"})
    assert r.status_code == 200, r.text
    for headers in ({}, {"HX-Request": "true", "HX-Target": "overview"}):
        after = await client.get("/", headers=headers)
        assert after.status_code == 200
        assert "First run" not in after.text
