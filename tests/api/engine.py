"""A real SPC engine for API and dashboard tests: the service in-process on the test's nats-server.

Telemetry goes to JetStream (the engine charts it and snapshots its charts into the KV bucket in
its own format) and straight into Postgres (the API's points), so tests need no persister.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from nats.js import JetStreamContext

from llmscope.api.persister import store_telemetry
from llmscope.bus.settings import BusSettings
from llmscope.proto import codec, subjects
from llmscope.proto.charts import ChartRecord, chart_key
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.spc_engine.service import serve
from llmscope.spc_engine.settings import SpcSettings
from tests.alerter.harness import eventually as eventually
from tests.api.conftest import Api

BASELINE_N = 30


@contextlib.asynccontextmanager
async def running_engine(nats_url: str, baseline_n: int = BASELINE_N) -> AsyncIterator[SpcSettings]:
    settings = SpcSettings(
        bus=BusSettings(nats_url=nats_url), baseline_n=baseline_n, snapshot_interval_s=0.05, batch_size=64
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    try:
        yield settings
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0


async def feed(api: Api, js: JetStreamContext, events: Sequence[TelemetryEvent]) -> None:
    """Publish to JetStream for the engine and store in Postgres for the API."""
    acks = [
        await js.publish_async(
            subjects.telemetry(e.provider, e.model), codec.encode(e), headers={"Nats-Msg-Id": e.id}
        )
        for e in events
    ]
    await asyncio.gather(*acks)
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, events)


async def chart_record(api: Api, ev: TelemetryEvent, metric: str = "latency_ms") -> ChartRecord | None:
    return await api.runtime.charts.get(chart_key(ev.provider, ev.model, ev.target, ev.prompt_id, metric))


async def wait_progress(api: Api, ev: TelemetryEvent, progress: int, phase: str) -> ChartRecord:
    """Wait until the engine's snapshot of ``ev``'s latency chart shows this phase and progress."""
    found: list[ChartRecord] = []

    async def check() -> bool:
        record = await chart_record(api, ev)
        if record is None or record.view is None:
            return False
        found[:] = [record]
        return (record.view.phase, record.view.progress) == (phase, progress)

    await eventually(check)
    return found[0]
