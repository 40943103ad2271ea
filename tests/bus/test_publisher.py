"""Pipelined publishing against a real JetStream: every ack before returning, resends stored once."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from nats.js import JetStreamContext

from llmscope.bus.connection import connect
from llmscope.bus.publisher import Publisher, PublishFailed
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.proto import codec, subjects
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.stack.embedded import EmbeddedNats
from tests.alerter.harness import eventually
from tests.proto.test_codec import telemetry

SUBJECT = subjects.telemetry("ollama", "llama3.1:8b")


async def stored_ids(js: JetStreamContext) -> list[str]:
    """Every telemetry id in the stream, in stream order."""
    sub = await js.subscribe(subjects.TELEMETRY_ALL, ordered_consumer=True)
    total = (await js.stream_info(subjects.STREAM_TELEMETRY)).state.messages
    ids = []
    try:
        for _ in range(total):
            msg = await sub.next_msg(timeout=5)
            ids.append(codec.decode_as(msg.data, TelemetryEvent).id)
    finally:
        await sub.unsubscribe()
    return ids


async def test_publish_many_returns_every_ack_in_order_and_flags_duplicates(js: JetStreamContext) -> None:
    events = [telemetry(latency_ms=float(i)) for i in range(300)]
    publisher = Publisher(js)
    acks = await publisher.publish_many([(SUBJECT, ev) for ev in events])
    assert [bool(a.duplicate) for a in acks] == [False] * 300
    assert [a.seq for a in acks] == sorted(a.seq for a in acks)
    assert await stored_ids(js) == [ev.id for ev in events]

    again = await publisher.publish_many([(SUBJECT, ev) for ev in [*events[:10], telemetry()]])
    assert [bool(a.duplicate) for a in again] == [True] * 10 + [False]
    assert len(await stored_ids(js)) == 301


async def test_publish_acks_are_taken_as_the_client_reads_them(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The acks of pipelined publishes (a one-event POST /api/stats waits on one) are handled by
    the client's parser itself (``inbox.route``), not through nats-py's ``Msg``, queue and
    subscription task: the callback nats-py would call is never called."""
    from llmscope.bus.publisher import _AckInbox

    through_nats_py = 0

    async def counted(self: _AckInbox, msg: object) -> None:
        nonlocal through_nats_py
        through_nats_py += 1

    monkeypatch.setattr(_AckInbox, "_on_ack", counted)
    acks = await Publisher(js).publish_many([(SUBJECT, telemetry()) for _ in range(5)])
    assert len(acks) == 5
    assert [a.seq for a in acks] == sorted(a.seq for a in acks)
    assert through_nats_py == 0


@pytest.mark.fault
async def test_publish_many_fails_when_nats_stays_away(embedded_nats: EmbeddedNats) -> None:
    nc = await connect(embedded_nats.url, "away", connect_timeout=0.5)
    try:
        js = nc.jetstream()
        await ensure_streams(js, BusSettings())
        await asyncio.to_thread(embedded_nats.stop)
        await eventually(lambda: not nc.is_connected, what="the client noticing the outage")
        publisher = Publisher(js, timeout=0.2)
        with pytest.raises(PublishFailed):
            await publisher.publish_many([(SUBJECT, telemetry()) for _ in range(5)], deadline=1.0)
    finally:
        # nats-py's close flushes what it buffered for the absent server, and says so.
        with contextlib.suppress(ConnectionResetError):
            await nc.close()


@pytest.mark.fault
async def test_publish_many_across_a_restart_stores_each_event_once(embedded_nats: EmbeddedNats) -> None:
    """Sent while the server is down (buffered by the client), unconfirmed, resent after it is
    back: all acked, each stored once."""
    nc = await connect(embedded_nats.url, "restart", connect_timeout=0.5)
    try:
        js = nc.jetstream()
        await ensure_streams(js, BusSettings())
        await asyncio.to_thread(embedded_nats.stop)
        await eventually(lambda: not nc.is_connected, what="the client noticing the outage")
        events = [telemetry(latency_ms=float(i)) for i in range(20)]
        task = asyncio.create_task(
            Publisher(js, timeout=0.5).publish_many([(SUBJECT, ev) for ev in events], deadline=60.0)
        )
        await asyncio.sleep(0)  # the batch is in the client's buffer before the server is back
        await asyncio.to_thread(embedded_nats.start)
        acks = await asyncio.wait_for(task, 60)
        assert len(acks) == 20
        assert sorted(await stored_ids(js)) == sorted(ev.id for ev in events)
    finally:
        await nc.close()
