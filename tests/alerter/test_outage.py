"""The alerter waits out a Postgres outage (violations are redelivered, never dead-lettered) and
a nats-server killed under it (each violation notified once)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest
from nats.js import JetStreamContext

from llmscope.bus.connection import connect
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.stack.embedded import EmbeddedNats, EmbeddedPostgres
from tests.alerter.factories import HttpSink, violation
from tests.alerter.flushes import TIMINGS, all_flushed_after
from tests.alerter.harness import eventually, publish, start_alerter

pytestmark = pytest.mark.fault


async def test_postgres_down_longer_than_the_redelivery_window_loses_nothing(
    own_postgres: EmbeddedPostgres, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    sink = HttpSink()
    url = await sink.start()
    database_url = own_postgres.create_database("alerter")
    # Shortened redelivery: the old limits dead-lettered after 3 tries, about 0.5 s.
    old_tries = 3
    shortened = {"backoff": (0.1, 0.2), "max_deliver": old_tries}
    run = await start_alerter(
        database_url, js, {"LLMSCOPE_WEBHOOK_URL": url + "/hook"}, consumer_options=shortened, timings=TIMINGS
    )
    try:
        caplog.set_level(logging.INFO, logger="llmscope.bus.consumer")
        await asyncio.to_thread(own_postgres.stop)
        ev = violation(1)
        await publish(js, ev)
        assert run.consumer is not None
        consumer = run.consumer
        # Three times as many failed tries as the old limit allowed, none of them given up.
        await eventually(
            lambda: consumer.unavailable_tries > 3 * old_tries,
            what="the alerter waiting out the outage",
        )
        assert run.consumer.dead_lettered == 0
        assert sink.requests == []
        await asyncio.to_thread(own_postgres.start)
        await eventually(lambda: len(sink.requests) >= 1, within=20, what="the violation notified")
        # Every group flushed since: a second message (the violation taken twice) would be a row.
        seen = run.store.clock()
        await eventually(
            lambda: all_flushed_after(run.pool, seen, TIMINGS.group_interval), what="later flushes"
        )
        assert len(sink.requests) == 1
        assert run.consumer.dead_lettered == 0
        rows = await run.pool.fetch("SELECT status, firing FROM alerter_notifications")
        assert [(r["status"], list(r["firing"])) for r in rows] == [("sent", [ev.episode_id])]
        info = await js.consumer_info("LLMSCOPE_VIOLATIONS", "alerter")
        assert info.num_pending == 0
        assert info.num_ack_pending == 0
        # One line when the outage starts and one when it ends; no traceback per try.
        records = [r for r in caplog.records if r.name == "llmscope.bus.consumer"]
        assert len([r for r in records if "store unavailable" in r.getMessage()]) == 1
        assert len([r for r in records if "store available again" in r.getMessage()]) == 1
        assert not [r for r in records if r.exc_info]
    finally:
        await run.close()
        await sink.stop()


async def test_nats_killed_and_restarted_each_violation_is_notified_once(
    embedded_nats: EmbeddedNats, database_url: str
) -> None:
    """nats-server killed with SIGKILL under a running alerter, then started on its store again:
    the alerter's own connection comes back by itself, what was notified before is not notified
    again (its ack may have been lost with the server), and what is published after is."""
    sink = HttpSink()
    url = await sink.start()
    nc = await connect(embedded_nats.url, "alerter-under-test")
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    run = await start_alerter(database_url, js, {"LLMSCOPE_WEBHOOK_URL": url + "/hook"})

    async def notified() -> dict[str, int]:
        rows = await run.pool.fetch("SELECT firing FROM alerter_notifications WHERE status = 'sent'")
        return dict(Counter(episode for r in rows for episode in r["firing"]))

    try:
        before = violation(1, model="m-before", host="gpu-1")
        await publish(js, before)
        await eventually(lambda: len(sink.requests) == 1, within=30, what="the first violation notified")
        await asyncio.to_thread(embedded_nats.kill)
        await asyncio.to_thread(embedded_nats.start)
        after = violation(2, model="m-after", host="gpu-2")
        await publish(js, after)  # the publisher waits for the reconnection

        async def both() -> bool:
            return set(await notified()) == {before.episode_id, after.episode_id}

        await eventually(both, within=60, what="the violation published after the restart notified")
        assert await notified() == {before.episode_id: 1, after.episode_id: 1}
        assert len(sink.requests) == 2
        assert run.consumer is not None
        assert run.consumer.dead_lettered == 0

        async def all_acked() -> bool:
            info = await js.consumer_info("LLMSCOPE_VIOLATIONS", "alerter")
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await eventually(all_acked, within=30, what="every violation acknowledged")
    finally:
        await run.close()
        await sink.stop()
        await nc.close()
