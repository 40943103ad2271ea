"""``/report.json`` once the engine has written a target's availability chart: the status rows
carry that chart (an ``AvailabilityView``), and the export must still encode them."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from llmscope.api.settings import ApiSettings
from llmscope.proto.charts import AVAILABILITY, AvailabilityView, ChartMeta, ChartRecord, chart_key
from tests.api.conftest import Api
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
