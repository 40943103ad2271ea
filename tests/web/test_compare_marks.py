"""Re-baselines and maintenance windows marked on the comparison chart, from a real SPC engine and
a real alerter."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

from llmscope.api.baseline_history import BaselineHistory
from llmscope.web.alerting import SilenceInput
from tests.api.alerting_harness import live_alerter
from tests.api.conftest import Api
from tests.api.engine import BASELINE_N, eventually, feed, running_engine, wait_progress
from tests.api.test_charts import probes
from tests.web.test_pages import login
from tests.web.test_trends import seed


async def test_maintenance_windows_on_the_comparison(api: Api, database_url: str, nats_url: str) -> None:
    await seed(api)
    client = await login(api)
    r = await client.get("/compare?hours=1")
    assert "none drawn: the alerter did not answer" in r.text
    assert 'class="maintenance-band"' not in r.text
    now = datetime.now(UTC)
    async with live_alerter(database_url, nats_url, None):
        await api.runtime.alerting.create_silence(
            SilenceInput(
                reason="driver update",
                author="ops",
                kind="maintenance",
                models=["llama3*"],
                starts_at=now - timedelta(minutes=20),
                ends_at=now + timedelta(hours=1),  # under way: drawn up to now
            )
        )
        # A silence of the same model and a window of a model not compared: neither is drawn.
        await api.runtime.alerting.create_silence(
            SilenceInput(reason="noisy", author="ops", models=["llama3*"], ends_at=now + timedelta(hours=1))
        )
        await api.runtime.alerting.create_silence(
            SilenceInput(
                reason="other",
                author="ops",
                kind="maintenance",
                models=["qwen*"],
                ends_at=now + timedelta(hours=1),
            )
        )
        # Host-scoped: drawn only where the model's probes ran on that host (the seed's: gpu-1).
        for host in ("gpu-1", "gpu-2"):
            await api.runtime.alerting.create_silence(
                SilenceInput(
                    reason=f"{host} firmware",
                    author="ops",
                    kind="maintenance",
                    models=["llama3*"],
                    hosts=[host],
                    starts_at=now - timedelta(hours=2),
                    ends_at=now + timedelta(hours=1),
                )
            )
        r = await client.get("/compare?hours=1")
    assert r.status_code == 200
    assert r.text.count('class="maintenance-band"') == 2
    assert "driver update (model=llama3*)" in r.text
    assert "gpu-1 firmware (model=llama3* host=gpu-1)" in r.text
    assert "gpu-2 firmware" not in r.text
    assert "2 maintenance windows marked" in r.text
    assert "none drawn" not in r.text


async def test_every_rebaseline_on_the_comparison_and_the_chart(
    api: Api, js: JetStreamContext, nats_url: str
) -> None:
    """The engine's record keeps only a chart's current baseline; the API's history keeps each."""
    client = await login(api)
    batch = BASELINE_N + 2
    first = probes(batch)
    stop = asyncio.Event()
    history = BaselineHistory(lambda: api.store.pool, retry_s=0.2)
    watching = asyncio.create_task(history.run(api.runtime.nc, stop))  # type: ignore[arg-type]
    try:
        async with running_engine(nats_url):
            await feed(api, js, first)
            record = await wait_progress(api, first[0], BASELINE_N, "armed")
            assert 'class="rebaseline-line"' not in (await client.get("/compare?hours=1")).text
            for n, (by, reason) in enumerate((("ann", "new GPU"), ("bob", "driver update")), start=1):
                r = await api.client.post(
                    f"/api/charts/{record.key}/rebaseline", json={"by": by, "reason": reason}
                )
                assert r.status_code == 200, r.text
                await feed(api, js, probes(batch, start=n * batch))

                async def recorded(number: int = n) -> bool:
                    found = await api.store.pool.fetchval(
                        "SELECT count(*) FROM baseline_history WHERE chart_key = $1 AND number = $2",
                        record.key,
                        number,
                    )
                    return bool(found)

                await eventually(recorded, within=60, what=f"re-baseline #{n} in baseline_history")
            page = (await client.get("/compare?hours=1")).text
            chart = (
                await client.get(
                    "/dashboard?provider=ollama&model=llama3.1:8b&hours=1",
                    headers={"HX-Request": "true", "HX-Target": "chart-panel"},
                )
            ).text
    finally:
        stop.set()
        await watching
    assert page.count('class="rebaseline-line"') == 2
    assert "re-baseline #1 by ann: new GPU" in page
    assert "re-baseline #2 by bob: driver update" in page
    assert "2 re-baselines and" in page
    assert chart.count('class="rebaseline-line"') == 2
    assert "re-baseline #1 at" in chart
    assert "by ann: new GPU" in chart
    assert "by bob: driver update" in chart
