"""The alerter waits out a Postgres outage: violations are redelivered, never dead-lettered."""

from __future__ import annotations

import asyncio

import pytest
from nats.js import JetStreamContext

from llmscope.stack.embedded import EmbeddedPostgres
from tests.alerter.factories import HttpSink, violation
from tests.alerter.harness import eventually, publish, start_alerter

pytestmark = pytest.mark.fault


async def test_postgres_down_longer_than_the_redelivery_window_loses_nothing(
    own_postgres: EmbeddedPostgres, js: JetStreamContext
) -> None:
    sink = HttpSink()
    url = await sink.start()
    database_url = own_postgres.create_database("alerter")
    # Shortened redelivery: the old limits dead-lettered after 3 tries, about 0.5 s.
    shortened = {"backoff": (0.1, 0.2), "max_deliver": 3}
    run = await start_alerter(
        database_url, js, {"LLMSCOPE_WEBHOOK_URL": url + "/hook"}, consumer_options=shortened
    )
    try:
        await asyncio.to_thread(own_postgres.stop)
        ev = violation(1)
        await publish(js, ev)
        await asyncio.sleep(3.0)  # six times the old window
        assert run.consumer is not None
        assert run.consumer.dead_lettered == 0
        assert sink.requests == []
        await asyncio.to_thread(own_postgres.start)
        await eventually(lambda: len(sink.requests) >= 1, within=20, what="the violation notified")
        await asyncio.sleep(1.0)
        assert len(sink.requests) == 1
        assert run.consumer.dead_lettered == 0
        rows = await run.pool.fetch("SELECT status, firing FROM alerter_notifications")
        assert [(r["status"], list(r["firing"])) for r in rows] == [("sent", [ev.episode_id])]
        info = await js.consumer_info("LLMSCOPE_VIOLATIONS", "alerter")
        assert info.num_pending == 0
        assert info.num_ack_pending == 0
    finally:
        await run.close()
        await sink.stop()
