"""One event cannot stop detection: names too long for a subject or KV key are dead-lettered.

A model, target and prompt id of 256 emoji each made a chart KV key of about 9 KB, over
nats-server's 4 KB control line: the server dropped the engine's connection, the engine
restarted for ever and no partition's checkpoint moved (issue 9, finding 3).
"""

from __future__ import annotations

import asyncio

import msgspec
import nats
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams, telemetry_partition
from llmscope.proto import codec, subjects
from llmscope.proto.deadletter import DeadLetterEvent
from llmscope.spc_engine.partition_consumer import partition_durable
from llmscope.spc_engine.service import serve
from tests.spc_engine.helpers import telemetry_stream
from tests.spc_engine.test_service import PARTITIONS, expected_ids, publish_all, settings, violations

pytestmark = pytest.mark.fault


async def acked_up_to(js: JetStreamContext, ends: dict[int, int]) -> bool:
    for partition, seq in ends.items():
        try:
            info = await js.consumer_info(subjects.STREAM_TELEMETRY, partition_durable(partition))
        except nats.js.errors.NotFoundError:
            return False
        if info.ack_floor is None or info.ack_floor.stream_seq < seq:
            return False
    return True


async def dead_letters(js: JetStreamContext) -> list[DeadLetterEvent]:
    info = await js.stream_info(subjects.STREAM_DEADLETTER)
    if not info.state.messages:
        return []
    sub = await js.pull_subscribe(subjects.DEADLETTER_ALL, stream=subjects.STREAM_DEADLETTER)
    msgs = await sub.fetch(info.state.messages, timeout=5)
    await sub.unsubscribe()
    return [codec.decode_as(m.data, DeadLetterEvent) for m in msgs]


async def test_an_event_with_names_too_long_for_a_key_is_dead_lettered_and_detection_goes_on(
    nats_url: str,
) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(300, shift_at=200)
    await publish_all(js, events[:100])
    # Written by hand, as a client that bypasses the API would: the encoder would refuse it.
    poison = msgspec.to_builtins(events[0])
    emoji = "\U0001f600" * 256
    poison.update(id="poison", model=emoji, target=emoji, prompt_id=emoji)
    await js.publish(
        subjects.telemetry("ollama", emoji), msgspec.json.encode(poison), headers={"Nats-Msg-Id": "poison"}
    )
    await publish_all(js, events[100:])
    seqs = list(range(1, 101)) + list(range(102, 302))
    ends = {
        telemetry_partition(ev.provider, ev.model, PARTITIONS): s for ev, s in zip(events, seqs, strict=True)
    }
    ends[telemetry_partition("ollama", emoji, PARTITIONS)] = max(
        101, ends.get(telemetry_partition("ollama", emoji, PARTITIONS), 0)
    )
    cfg = settings(nats_url)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(cfg, stop))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not await acked_up_to(js, ends):
            assert not task.done(), "the engine stopped"
            assert loop.time() < deadline, "not every partition got past the poison event"
            await asyncio.sleep(0.1)
        letters = [d for d in await dead_letters(js) if d.source == "spc-engine"]
        assert len(letters) == 1
        assert "`model` is too long" in letters[0].reason
        assert '"poison"' in letters[0].payload
        assert not task.done()
        got = await violations(js)
        assert [v.id for v in got] == await expected_ids(events, cfg)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
    await nc.close()
