"""A tab with its event stream up does not poll: when the API's bus connection comes back (it may
have missed events meanwhile), every open stream ends, so each tab reconnects and re-reads."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec

from llmscope.api.live import LiveFeed
from llmscope.bus.connection import connect
from llmscope.proto import subjects
from llmscope.proto.live import LiveNotice, StoredPoint
from llmscope.stack.embedded import EmbeddedNats
from llmscope.web.live import Broadcaster, LiveEvent
from tests.alerter.harness import eventually


async def test_open_streams_end_when_the_bus_connection_comes_back(embedded_nats: EmbeddedNats) -> None:
    nc = await connect(embedded_nats.url, "live-resync", connect_timeout=0.5)
    broadcaster = Broadcaster()
    feed = LiveFeed(broadcaster)
    await feed.start(nc)
    try:
        with broadcaster.subscribe() as tab:
            broadcaster.publish(LiveEvent("status", {"n": 1}))
            assert (await tab.get()) == LiveEvent("status", {"n": 1})  # the stream is up, as usual
            await asyncio.to_thread(embedded_nats.stop)
            await asyncio.to_thread(embedded_nats.start)
            # nats-py reconnects within a few seconds; the feed then ends the tab's stream.
            assert await asyncio.wait_for(tab.get(), 60) is None
        # The broadcaster stays open: a tab reconnecting gets a live stream again.
        with broadcaster.subscribe() as again:
            broadcaster.publish(LiveEvent("status", {"n": 2}))
            assert (await again.get()) == LiveEvent("status", {"n": 2})
    finally:
        await feed.stop()
        await nc.close()


class CountingBroadcaster(Broadcaster):
    """Counts the events published to it and the times its tabs were counted."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[LiveEvent] = []
        self.asked = 0

    @property
    def listeners(self) -> int:
        self.asked += 1
        return super().listeners

    def publish(self, event: LiveEvent) -> None:
        self.published.append(event)
        super().publish(event)


async def test_notices_heard_with_no_tab_open_build_no_events(embedded_nats: EmbeddedNats) -> None:
    """A stored notice names up to 200 models, ten times a second: with no tab open in this
    process, it is dropped unread instead of made into an event per model for nobody."""
    nc = await connect(embedded_nats.url, "live-idle", connect_timeout=0.5)
    broadcaster = CountingBroadcaster()
    feed = LiveFeed(broadcaster)
    await feed.start(nc)
    now = datetime.now(UTC)
    try:
        alone = LiveNotice(kind="stored", points=[StoredPoint("ollama", f"m{i}", now) for i in range(50)])
        await nc.publish(subjects.api_live(), msgspec.json.encode(alone))
        await eventually(lambda: broadcaster.asked > 0 or bool(broadcaster.published), within=10)
        assert broadcaster.published == []
        with broadcaster.subscribe() as tab:  # a tab open: the next notice reaches it
            seen = LiveNotice(kind="stored", points=[StoredPoint("ollama", "watched", now)])
            await nc.publish(subjects.api_live(), msgspec.json.encode(seen))
            got = await asyncio.wait_for(tab.get(), 10)
            assert got is not None
            assert got.data["model"] == "watched"
    finally:
        await feed.stop()
        await nc.close()
