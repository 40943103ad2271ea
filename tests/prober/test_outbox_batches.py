"""The outbox publishes what is queued together: bursts, in order, each event once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import PubAck
from prometheus_client import CollectorRegistry

from llmscope.bus.publisher import Publisher
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.prober.metrics import ProberMetrics
from llmscope.prober.outbox import Outbox
from llmscope.proto import subjects
from llmscope.proto.base import Event
from llmscope.stack.embedded import EmbeddedNats
from tests.prober.test_pipeline import _event, _stream_events

SUBJECT = subjects.telemetry("ollama", "m")


class BurstPublisher(Publisher):
    """The real publisher, noting the events of each ``publish_many`` it makes."""

    def __init__(self, js: JetStreamContext, *, timeout: float = 2.0) -> None:
        super().__init__(js, timeout=timeout)
        self.bursts: list[list[str]] = []

    async def publish_many(
        self, events: Sequence[tuple[str, Event]], *, deadline: float | None = None
    ) -> list[PubAck]:
        self.bursts.append([ev.id for _, ev in events])
        return await super().publish_many(events, deadline=deadline)


async def _published(outbox: Outbox, n: int) -> None:
    async with asyncio.timeout(30):
        while outbox.published < n:  # noqa: ASYNC110 - polling a counter of the code under test
            await asyncio.sleep(0.01)


async def test_events_put_within_the_linger_go_in_one_publish_in_order(js: JetStreamContext) -> None:
    publisher = BurstPublisher(js)
    # Long enough that a loaded machine still puts the second event within it.
    outbox = Outbox(publisher, ProberMetrics(CollectorRegistry()), linger=2.0)
    stop = asyncio.Event()
    publishing = asyncio.create_task(outbox.run(stop))
    try:
        first, second = _event(1), _event(2)
        outbox.put(SUBJECT, first)
        await asyncio.sleep(0.05)  # the worker woke on the first and lingers
        assert outbox.published == 0
        outbox.put(SUBJECT, second)
        await _published(outbox, 2)
    finally:
        stop.set()
        await publishing
    assert publisher.bursts == [[first.id, second.id]]
    assert [ev.id for _, ev in await _stream_events(js, 2)] == [first.id, second.id]


async def test_a_burst_is_at_most_max_batch_events(js: JetStreamContext) -> None:
    publisher = BurstPublisher(js)
    outbox = Outbox(publisher, ProberMetrics(CollectorRegistry()), max_batch=3)
    events = [_event(n) for n in range(7)]
    for ev in events:
        outbox.put(SUBJECT, ev)
    assert await outbox.flush(30) == 0
    assert [len(b) for b in publisher.bursts] == [3, 3, 1]
    ids = [ev.id for ev in events]
    assert [i for b in publisher.bursts for i in b] == ids
    assert [ev.id for _, ev in await _stream_events(js, 7)] == ids


@pytest.mark.fault
async def test_a_burst_that_failed_is_published_again_whole_each_event_once_in_order(
    embedded_nats: EmbeddedNats,
) -> None:
    nc = await nats.connect(embedded_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        js = nc.jetstream()
        await ensure_streams(js, BusSettings())
        metrics = ProberMetrics(CollectorRegistry())
        publisher = BurstPublisher(js, timeout=0.3)
        outbox = Outbox(publisher, metrics, publish_deadline=0.5, retry_delay=0.1)
        embedded_nats.stop()
        events = [_event(n) for n in range(4)]
        for ev in events:
            outbox.put(SUBJECT, ev)
        stop = asyncio.Event()
        publishing = asyncio.create_task(outbox.run(stop))
        async with asyncio.timeout(30):
            while metrics.publish_failures._value.get() < 1:  # noqa: ASYNC110 - a counter of the code under test
                await asyncio.sleep(0.02)
        assert outbox.published == 0
        assert len(outbox) == 4  # back in the outbox, none dropped
        embedded_nats.start()
        await _published(outbox, 4)
        stop.set()
        await publishing
        ids = [ev.id for ev in events]
        assert publisher.bursts[-1] == ids  # the same burst again, whole
        info = await js.stream_info(subjects.STREAM_TELEMETRY)
        assert info.state.messages == 4  # a resent event stored once (its id)
        assert [ev.id for _, ev in await _stream_events(js, 4)] == ids
        assert outbox.dropped == 0
    finally:
        await nc.close()
