"""Re-baselines and maintenance windows marked on the comparison chart, from a real SPC engine and
a real alerter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

from llmscope.web.alerting import SilenceInput
from tests.api.alerting_harness import live_alerter
from tests.api.conftest import Api
from tests.api.engine import BASELINE_N, feed, running_engine, wait_progress
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


async def test_a_rebaseline_on_the_comparison(api: Api, js: JetStreamContext, nats_url: str) -> None:
    client = await login(api)
    first = probes(BASELINE_N + 2)
    async with running_engine(nats_url):
        await feed(api, js, first)
        record = await wait_progress(api, first[0], BASELINE_N, "armed")
        assert 'class="rebaseline-line"' not in (await client.get("/compare?hours=1")).text
        r = await api.client.post(
            f"/api/charts/{record.key}/rebaseline", json={"by": "ann", "reason": "new GPU"}
        )
        assert r.status_code == 200, r.text
        await feed(api, js, probes(BASELINE_N + 2, start=BASELINE_N + 2))
        await wait_progress(api, first[0], BASELINE_N, "armed")
        page = (await client.get("/compare?hours=1")).text
    assert page.count('class="rebaseline-line"') == 1
    assert "re-baseline #1 by ann: new GPU" in page
    assert "1 re-baseline and" in page
