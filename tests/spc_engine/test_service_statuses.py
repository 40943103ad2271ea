"""Every probe status of telemetry.v1 is read by the running engine: none is dead-lettered.

A status added to the literal later in v1 (``error``, then ``overloaded``: Anthropic's 529) is
refused by an engine that does not know it; the README's upgrade order puts the engine first.
"""

from __future__ import annotations

import asyncio

import msgspec
import nats
import pytest

from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams, telemetry_partition
from llmscope.proto.telemetry import PROBE_STATUSES
from llmscope.spc_engine.service import serve
from tests.spc_engine.helpers import telemetry_stream
from tests.spc_engine.test_service import PARTITIONS, expected_ids, publish_all, settings, violations
from tests.spc_engine.test_service_poison import acked_up_to, dead_letters


@pytest.mark.parametrize("status", [s for s in PROBE_STATUSES if s != "ok"])
async def test_a_run_of_failed_probes_of_every_kind_opens_an_availability_violation(
    nats_url: str, status: str
) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    ok = [ev for ev in telemetry_stream(300) if ev.ok]
    down = [
        msgspec.structs.replace(ev, id=f"down-{i}", status=status, latency_ms=None, ttft_ms=None)
        for i, ev in enumerate(ok[-6:])
    ]
    events = ok[:-6] + down
    await publish_all(js, events)
    ends: dict[int, int] = {}
    for seq, ev in enumerate(events, start=1):
        ends[telemetry_partition(ev.provider, ev.model, PARTITIONS)] = seq
    cfg = settings(nats_url)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(cfg, stop))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not await acked_up_to(js, ends):
            assert not task.done(), "the engine stopped"
            assert loop.time() < deadline, "the engine did not get through the stream"
            await asyncio.sleep(0.1)
        assert [d.reason for d in await dead_letters(js) if d.source == "spc-engine"] == []
        got = await violations(js)
        assert [v.id for v in got] == await expected_ids(events, cfg)
        opened = [(v.rule, v.state) for v in got if v.metric == "availability"]
        assert ("AVAILABILITY", "open") in opened, opened
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
    await nc.close()
