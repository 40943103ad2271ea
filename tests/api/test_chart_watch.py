"""The API's watch of the chart bucket (:class:`llmscope.api.baseline_history.BaselineHistory`),
on a real nats-server."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client as NATS

from llmscope.api.baseline_history import BaselineHistory
from llmscope.proto.charts import chart_key
from tests.api.test_live import WAIT_S, chart_record


async def test_the_chart_watch_is_not_sent_the_engines_bookkeeping(nc: NATS, nats_url: str) -> None:
    """The bucket also holds the engine's leases and checkpoints, rewritten several times a
    second: the API's watch is sent chart records only, not those to skip."""
    kv = await nc.jetstream().create_key_value(bucket="watch_test_charts")
    for p in range(40):
        await kv.put(f"_lease.p{p}", b"holder")
        await kv.put(f"_checkpoint.p{p}", b"{}")
    await kv.put("_settings.ollama.m0", b"{}")
    await kv.put("_traffic.p0.abc", b"{}")
    key = chart_key("ollama", "watched:8b", "gpu-1", "simple", "latency_ms")
    await kv.put(key, chart_record(key, traffic=False))
    seen: list[str] = []
    chart_seen = asyncio.Event()

    def on_record(k: str) -> None:
        seen.append(k)
        chart_seen.set()

    watcher_nc = await nats.connect(nats_url)
    stop = asyncio.Event()
    history = BaselineHistory(lambda: None, bucket="watch_test_charts", retry_s=0.2, on_record=on_record)  # type: ignore[arg-type, return-value]
    watching = asyncio.create_task(history.run(watcher_nc, stop))
    try:
        await asyncio.wait_for(chart_seen.wait(), WAIT_S)
        delivered = watcher_nc.stats["in_msgs"]
    finally:
        stop.set()
        await watching
        await watcher_nc.close()
    assert seen == [key]
    # The chart record and a few replies (the watch's consumer created, stream info), not the
    # 82 bookkeeping records.
    assert delivered < 10, delivered
