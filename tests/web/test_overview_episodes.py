"""The overview's open critical episodes say which chart each is on: a model's prompts are
separate charts, and a shift on all of them is several episodes of the same rule and metric."""

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
