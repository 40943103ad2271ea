"""A tab with its event stream up does not poll: when the API's bus connection comes back (it may
have missed events meanwhile), every open stream ends, so each tab reconnects and re-reads."""

from __future__ import annotations

import asyncio

from llmscope.api.live import LiveFeed
from llmscope.bus.connection import connect
from llmscope.stack.embedded import EmbeddedNats
from llmscope.web.live import Broadcaster, LiveEvent


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
