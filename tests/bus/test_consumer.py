"""The consumer adapter against a real JetStream: ack after effect, dead letters, redelivery."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import nats
import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, DeliverPolicy
from nats.js.errors import NotFoundError

from llmscope.bus.consumer import ConsumerOptions, Delivery, DurableConsumer, tick_after
from llmscope.bus.deadletter import DeadLetters
from llmscope.bus.publisher import Publisher
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import DEFAULT_TELEMETRY_PARTITIONS, ensure_streams, telemetry_partition
from llmscope.proto import codec, subjects
from llmscope.proto.deadletter import DeadLetterEvent
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.stack.embedded import EmbeddedNats
from tests.alerter.harness import eventually
from tests.proto.test_codec import telemetry

SUBJECT = subjects.telemetry("ollama", "llama3.1:8b")


def decode(data: bytes) -> TelemetryEvent:
    return codec.decode_as(data, TelemetryEvent)


async def dead_letters_in(js: JetStreamContext) -> list[DeadLetterEvent]:
    sub = await js.pull_subscribe(subjects.DEADLETTER_ALL, stream=subjects.STREAM_DEADLETTER)
    try:
        msgs = await sub.fetch(100, timeout=1)
    except TimeoutError:
        return []
    return [codec.decode_as(m.data, DeadLetterEvent) for m in msgs]


async def consumer_waiting(js: JetStreamContext, durable: str = "test", within: float = 10) -> None:
    """Wait until the consumer exists and a pull request of its is waiting on the server."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            info = await js.consumer_info(subjects.STREAM_TELEMETRY, durable)
        except NotFoundError:
            info = None
        if info is not None and (info.num_waiting or 0) >= 1:
            return
        if loop.time() > deadline:
            raise AssertionError(f"consumer {durable!r} never waited on a pull request: {info}")
        await asyncio.sleep(0.01)


async def run_until(
    consumer: DurableConsumer[TelemetryEvent], done: asyncio.Event, within: float = 10
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await asyncio.wait_for(done.wait(), within)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def make_consumer(
    js: JetStreamContext, handler: object, options: ConsumerOptions | None = None
) -> DurableConsumer[TelemetryEvent]:
    publisher = Publisher(js)
    return DurableConsumer(
        js=js,
        stream=subjects.STREAM_TELEMETRY,
        durable="test",
        filter_subjects=[subjects.TELEMETRY_ALL],
        decode=decode,
        handler=handler,  # type: ignore[arg-type]
        dead_letters=DeadLetters(publisher, "test"),
        options=options or ConsumerOptions(batch_size=10, fetch_timeout=0.2),
    )


@pytest.mark.fault
async def test_malformed_messages_are_dead_lettered_and_the_rest_handled(js: JetStreamContext) -> None:
    publisher = Publisher(js)
    good = [telemetry() for _ in range(3)]
    await publisher.publish(SUBJECT, good[0])
    await js.publish(SUBJECT, b'{"type":"telemetry.v1","latency_ms":-1}')
    await js.publish(SUBJECT, b"\xff\xfe")
    for event in good[1:]:
        await publisher.publish(SUBJECT, event)

    seen: list[TelemetryEvent] = []
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        seen.extend(d.event for d in batch)
        if len(seen) == 3:
            done.set()

    consumer = make_consumer(js, handler)
    await run_until(consumer, done)
    assert [e.id for e in seen] == [e.id for e in good]
    letters = await dead_letters_in(js)
    assert len(letters) == 2
    # The subject as stored: the telemetry stream appends the model's partition.
    partition = telemetry_partition("ollama", "llama3.1:8b", DEFAULT_TELEMETRY_PARTITIONS)
    assert all(letter.subject == f"{SUBJECT}.{partition}" for letter in letters)
    assert any("malformed" in letter.reason and "$" in letter.reason for letter in letters)
    assert {letter.payload_encoding for letter in letters} == {"utf-8", "base64"}
    info = await js.consumer_info(subjects.STREAM_TELEMETRY, "test")
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def test_messages_are_not_acked_when_the_handler_fails(js: JetStreamContext) -> None:
    event = telemetry()
    await Publisher(js).publish(SUBJECT, event)
    attempts: list[int] = []
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        attempts.append(batch[0].num_delivered)
        if len(attempts) < 3:
            raise RuntimeError("database down")
        done.set()

    options = ConsumerOptions(batch_size=10, fetch_timeout=0.2, backoff=(0.1,), max_deliver=5)
    await run_until(make_consumer(js, handler, options), done)
    assert attempts == [1, 2, 3]
    assert await dead_letters_in(js) == []


@pytest.mark.fault
async def test_a_message_failing_every_try_ends_in_the_dead_letters(js: JetStreamContext) -> None:
    await Publisher(js).publish(SUBJECT, telemetry())
    done = asyncio.Event()
    calls = 0

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            done.set()
        raise ValueError("poison")

    options = ConsumerOptions(batch_size=10, fetch_timeout=0.2, backoff=(0.05,), max_deliver=3)
    await run_until(make_consumer(js, handler, options), done)
    await asyncio.sleep(0.3)
    letters = await dead_letters_in(js)
    assert len(letters) == 1
    assert "failed 3 times" in letters[0].reason
    assert "poison" in letters[0].reason


async def test_handler_rejections_are_dead_lettered_individually(js: JetStreamContext) -> None:
    events = [telemetry(model="m1"), telemetry(model="m2")]
    for event in events:
        await Publisher(js).publish(SUBJECT, event)
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> Mapping[int, str]:
        done.set()
        return {i: "model disabled" for i, d in enumerate(batch) if d.event.model == "m2"}

    await run_until(make_consumer(js, handler), done)
    letters = await dead_letters_in(js)
    assert [letter.reason for letter in letters] == ["model disabled"]
    assert codec.decode_as(letters[0].payload.encode(), TelemetryEvent).model == "m2"


@pytest.mark.parametrize("repeat", [2])
async def test_duplicate_publishes_are_dropped_by_msg_id(js: JetStreamContext, repeat: int) -> None:
    event = telemetry()
    publisher = Publisher(js)
    acks = [await publisher.publish(SUBJECT, event) for _ in range(repeat)]
    assert acks[0].duplicate in (None, False)
    assert acks[1].duplicate is True
    info = await js.stream_info(subjects.STREAM_TELEMETRY)
    assert info.state.messages == 1


async def test_a_backlog_arrives_in_full_batches_and_every_message_is_acked(js: JetStreamContext) -> None:
    events = [telemetry() for _ in range(25)]
    for event in events:
        await Publisher(js).publish(SUBJECT, event)
    sizes: list[int] = []
    seen: list[str] = []
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        sizes.append(len(batch))
        seen.extend(d.event.id for d in batch)
        if len(seen) == len(events):
            done.set()

    await run_until(make_consumer(js, handler), done)
    assert seen == [e.id for e in events]
    assert sizes == [10, 10, 5]
    info = await js.consumer_info(subjects.STREAM_TELEMETRY, "test")
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def test_an_idle_consumer_takes_a_new_message_before_its_pull_request_expires(
    js: JetStreamContext,
) -> None:
    done = asyncio.Event()
    seen: list[str] = []

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        seen.extend(d.event.id for d in batch)
        done.set()

    consumer = make_consumer(js, handler, ConsumerOptions(batch_size=10, fetch_timeout=30))
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await consumer_waiting(js)  # the consumer is idle, in its long poll
        event = telemetry()
        await Publisher(js).publish(SUBJECT, event)
        # Well before the 30 s pull request expires.
        await asyncio.wait_for(done.wait(), 5)
        assert seen == [event.id]
    finally:
        stop.set()
        # Stopping waits for the long poll to end at most once more.
        await Publisher(js).publish(SUBJECT, telemetry())
        await asyncio.wait_for(task, 5)


async def test_a_deleted_consumer_neither_crashes_nor_spins(
    js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        nonlocal calls
        calls += 1

    consumer = make_consumer(js, handler, ConsumerOptions(batch_size=10, fetch_timeout=0.2))
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await consumer_waiting(js)  # created, and pulling
    await js.delete_consumer(subjects.STREAM_TELEMETRY, "test")

    def refused() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "pull request refused" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="llmscope.bus.consumer"):
        await eventually(lambda: len(refused()) >= 4, what="refused pull requests, retried")
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert calls == 0
    # One refused pull request per fetch_timeout, not a tight loop of them: a load only widens
    # the gaps (0.05 s below the 0.2 s: timers may fire a clock tick early).
    times = [r.created for r in refused()]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.15


async def test_ack_all_acks_each_batch_once_after_terminating_its_rejects(js: JetStreamContext) -> None:
    events = [telemetry(model="m2" if i == 7 else "m1") for i in range(24)]
    publisher = Publisher(js)
    for i, event in enumerate(events):
        if i == 12:
            await js.publish(SUBJECT, b"\xff\xfe")
        await publisher.publish(SUBJECT, event)
    seen: list[str] = []
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> Mapping[int, str]:
        seen.extend(d.event.id for d in batch)
        if len(seen) == len(events):
            done.set()
        return {i: "model disabled" for i, d in enumerate(batch) if d.event.model == "m2"}

    consumer = make_consumer(js, handler, ConsumerOptions(batch_size=10, fetch_timeout=0.2, ack_all=True))
    await run_until(consumer, done)
    assert seen == [e.id for e in events]
    info = await js.consumer_info(subjects.STREAM_TELEMETRY, "test")
    assert info.config.ack_policy == AckPolicy.ALL
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)
    assert info.ack_floor.stream_seq == len(events) + 1
    assert sorted(letter.reason[:9] for letter in await dead_letters_in(js)) == ["malformed", "model dis"]
    assert consumer.processed == len(events) - 1


async def test_ack_all_ends_the_run_on_a_failure_and_nothing_is_acked_past_it(js: JetStreamContext) -> None:
    events = [telemetry() for _ in range(3)]
    for event in events:
        await Publisher(js).publish(SUBJECT, event)

    async def failing(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        raise RuntimeError("chart state lost")

    options = ConsumerOptions(batch_size=10, fetch_timeout=0.2, ack_all=True, backoff=(0.05,))
    with pytest.raises(RuntimeError, match="chart state lost"):
        await asyncio.wait_for(make_consumer(js, failing, options).run(asyncio.Event()), 10)
    redelivered: list[int] = []
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        redelivered.extend(d.num_delivered for d in batch)
        if len(redelivered) == len(events):
            done.set()

    await run_until(make_consumer(js, handler, options), done)
    assert redelivered == [2, 2, 2]


async def test_fill_wait_gathers_the_burst_behind_the_first_message(js: JetStreamContext) -> None:
    sizes: list[int] = []
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        sizes.append(len(batch))
        if sum(sizes) == 5:
            done.set()

    options = ConsumerOptions(batch_size=10, fetch_timeout=5, fill_wait=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(make_consumer(js, handler, options).run(stop))
    try:
        await consumer_waiting(js)
        await Publisher(js).publish_many([(SUBJECT, telemetry()) for _ in range(5)])
        await asyncio.wait_for(done.wait(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert sizes == [5]


async def test_a_trickle_with_fill_wait_costs_two_pull_requests_per_wake_up(js: JetStreamContext) -> None:
    """After a pull that found the stream drained, the next wake-up needs no ``no_wait`` pull
    first: a long poll, then after the fill wait one pull for the rest (was three requests)."""
    seen: list[str] = []

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        seen.extend(d.event.id for d in batch)

    requests: list[bytes] = []

    async def tap(msg: Any) -> None:
        requests.append(msg.data)

    nc = js._nc
    sub = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{subjects.STREAM_TELEMETRY}.test", cb=tap)
    options = ConsumerOptions(batch_size=10, fetch_timeout=5, fill_wait=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(make_consumer(js, handler, options).run(stop))
    publisher = Publisher(js)
    events = [telemetry() for _ in range(5)]
    try:
        await publisher.publish(SUBJECT, events[0])
        await eventually(lambda: seen == [events[0].id])
        await consumer_waiting(js)  # the long poll after the first wake-up is open
        before = len(requests)
        for n, event in enumerate(events[1:], start=2):
            await publisher.publish(SUBJECT, event)
            await eventually(lambda n=n: len(seen) == n)  # type: ignore[misc]
            await consumer_waiting(js)
        await eventually(lambda: len(requests) - before >= 2 * len(events[1:]))
        await asyncio.sleep(0.2)  # a third request per wake-up would have come by now
        assert len(requests) - before == 2 * len(events[1:])
        assert seen == [e.id for e in events]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)  # the open long poll ends within its 5 s
        await sub.unsubscribe()


async def _in_hand(js: JetStreamContext, durable: str = "test") -> int:
    """Messages the server has delivered to the durable and not yet seen acked."""
    info = await js.consumer_info(subjects.STREAM_TELEMETRY, durable)
    return info.num_ack_pending or 0


async def test_prefetch_pulls_the_next_batch_while_one_is_handled_and_acks_each_after_its_own(
    js: JetStreamContext,
) -> None:
    events = [telemetry() for _ in range(30)]
    await Publisher(js).publish_many([(SUBJECT, e) for e in events])
    seen: list[str] = []
    in_hand_while_first: list[int] = []
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        if not seen:
            # The next 10 are fetched (delivered, unacked) while this batch is in the handler.
            await eventually(lambda: _in_hand_is(js, 20), within=10, what="the next batch fetched")
            in_hand_while_first.append(await _in_hand(js))
        seen.extend(d.event.id for d in batch)
        if len(seen) == len(events):
            done.set()

    options = ConsumerOptions(batch_size=10, fetch_timeout=0.2, prefetch=True)
    await run_until(make_consumer(js, handler, options), done)
    assert seen == [e.id for e in events]  # in order, each once
    assert in_hand_while_first == [20]
    await eventually(lambda: _all_acked(js), within=10, what="every message acked")


async def _all_acked(js: JetStreamContext) -> bool:
    info = await js.consumer_info(subjects.STREAM_TELEMETRY, "test")
    return (info.num_ack_pending or 0) == 0 and (info.num_pending or 0) == 0


def _options(**overrides: Any) -> ConsumerOptions:
    """Prefetch, and an ack wait far longer than the test waits: only a nak frees a message."""
    return dataclasses.replace(
        ConsumerOptions(batch_size=10, fetch_timeout=0.2, prefetch=True, ack_wait=60), **overrides
    )


async def test_an_outage_gives_back_the_batch_fetched_ahead_at_once(js: JetStreamContext) -> None:
    """Held through an outage, a prefetched batch would wait out ack_wait before another
    replica could store it: it is nak'd when the outage begins, and another replica takes it."""
    events = [telemetry() for _ in range(30)]
    await Publisher(js).publish_many([(SUBJECT, e) for e in events])
    first_batch = asyncio.Event()
    stop = asyncio.Event()

    async def down(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        first_batch.set()
        raise ConnectionRefusedError("store down")

    options = _options(backoff=(0.05,), transient=lambda exc: isinstance(exc, ConnectionRefusedError))
    held = asyncio.create_task(make_consumer(js, down, options).run(stop))
    other_seen: list[str] = []

    async def other(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        other_seen.extend(d.event.id for d in batch)

    try:
        await asyncio.wait_for(first_batch.wait(), 10)
        # Another replica on the same durable consumer, while the first holds its batch.
        replica = asyncio.create_task(make_consumer(js, other, _options()).run(stop))
        await eventually(lambda: len(other_seen) == 20, within=10, what="the other replica's 20")
        assert set(other_seen) == {e.id for e in events[10:]}
    finally:
        stop.set()
        await asyncio.wait_for(held, 10)
        await asyncio.wait_for(replica, 10)


async def test_a_stop_gives_back_the_batch_fetched_ahead_at_once(js: JetStreamContext) -> None:
    events = [telemetry() for _ in range(30)]
    await Publisher(js).publish_many([(SUBJECT, e) for e in events])
    stop = asyncio.Event()
    stored: list[str] = []

    async def slow(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        await eventually(lambda: _in_hand_is(js, 20), within=10, what="the next batch fetched")
        stop.set()  # stopping with a batch fetched ahead
        stored.extend(d.event.id for d in batch)

    await asyncio.wait_for(make_consumer(js, slow, _options()).run(stop), 10)
    assert stored == [e.id for e in events[:10]]
    rest: list[str] = []
    done = asyncio.Event()

    async def after(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        rest.extend(d.event.id for d in batch)
        if len(rest) >= 20:
            done.set()

    await run_until(make_consumer(js, after, _options(prefetch=False)), done, 10)
    assert sorted(rest) == sorted(e.id for e in events[10:])


async def _in_hand_is(js: JetStreamContext, n: int) -> bool:
    return await _in_hand(js) == n


def test_prefetch_needs_explicit_acks() -> None:
    with pytest.raises(ValueError, match="explicit acks"):
        asyncio.run(
            DurableConsumer[TelemetryEvent](
                js=None,  # type: ignore[arg-type]
                stream=subjects.STREAM_TELEMETRY,
                durable="x",
                filter_subjects=[SUBJECT],
                decode=decode,
                handler=lambda batch: asyncio.sleep(0),
                dead_letters=None,  # type: ignore[arg-type]
                options=ConsumerOptions(prefetch=True, ack_all=True),
            ).run(asyncio.Event())
        )


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.TELEMETRY.persister.3.1234567.99.1733470000123456789.42",
        "$JS.ACK.hub.ACCHASH.TELEMETRY.persister.3.1234567.99.1733470000123456789.42.rand",
    ],
)
def test_a_delivery_position_is_read_as_nats_py_reads_it(reply: str) -> None:
    from nats.aio.msg import Msg

    from llmscope.bus.consumer import _position

    meta = Msg(_client=None, subject="s", reply=reply, data=b"").metadata  # type: ignore[arg-type]
    msg = Msg(_client=None, subject="s", reply=reply, data=b"")  # type: ignore[arg-type]
    assert _position(msg) == (meta.sequence.stream, meta.num_delivered) == (1234567, 3)


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.TELEMETRY.persister.3.1234567.99.1733470000123456789.42",
        "$JS.ACK.hub.ACCHASH.TELEMETRY.persister.3.1234567.99.1733470000123456789.42.rand",
    ],
)
def test_a_batch_acked_at_once_reads_each_stream_sequence_as_nats_py_does(reply: str) -> None:
    from nats.aio.msg import Msg

    from llmscope.bus.consumer import _stream_seq

    msg = Msg(_client=None, subject="s", reply=reply, data=b"")  # type: ignore[arg-type]
    assert _stream_seq(msg) == msg.metadata.sequence.stream == 1234567


async def test_a_standing_pull_takes_a_trickle_with_one_open_request_and_stops_at_once(
    js: JetStreamContext,
) -> None:
    seen: list[str] = []
    batches: list[int] = []
    release = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        batches.append(len(batch))
        seen.extend(d.event.id for d in batch)
        await release.wait()  # the first batch is held: what arrives meanwhile makes the next

    options = ConsumerOptions(batch_size=10, fetch_timeout=30, ack_all=True, standing=True)
    consumer = make_consumer(js, handler, options)
    nc = js._nc
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    publisher = Publisher(js)
    events = [telemetry() for _ in range(5)]
    try:
        await consumer_waiting(js)
        # Idle: nothing is sent while the one request (30 s) is open.
        sent = nc.stats["out_msgs"]
        await asyncio.sleep(0.5)
        assert nc.stats["out_msgs"] == sent
        await publisher.publish(SUBJECT, events[0])
        await eventually(lambda: seen == [events[0].id])  # long before the request expires
        received = nc.stats["in_msgs"]
        for event in events[1:]:
            await publisher.publish(SUBJECT, event)
        # Each publish's ack and each delivery to the open request have reached the client.
        await eventually(lambda: nc.stats["in_msgs"] >= received + 2 * len(events[1:]))
        release.set()
        await eventually(lambda: seen == [e.id for e in events])
        assert batches == [1, 4]  # stored while the first batch was handled: one batch
        info = await js.consumer_info(subjects.STREAM_TELEMETRY, "test")
        assert (info.num_ack_pending, info.num_pending) == (0, 0)
        assert info.ack_floor.stream_seq == len(events)
    finally:
        stop.set()
        # The open request does not hold the stop back for its 30 s.
        await asyncio.wait_for(task, 3)


async def test_a_standing_pull_with_explicit_acks_gives_back_what_it_did_not_handle_at_stop(
    js: JetStreamContext,
) -> None:
    """Several processes may share an explicit-ack consumer (the persister's): messages delivered
    to the open request and never handed to the handler are nak'd when the consumer stops, so
    the next reader gets them at once, not after ack_wait (60 s here)."""
    batches: list[list[str]] = []
    release = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        batches.append([d.event.id for d in batch])
        await release.wait()

    options = ConsumerOptions(batch_size=10, fetch_timeout=30, standing=True, ack_wait=60)
    consumer = make_consumer(js, handler, options)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    publisher = Publisher(js)
    events = [telemetry() for _ in range(4)]
    try:
        await consumer_waiting(js)
        await publisher.publish(SUBJECT, events[0])
        await eventually(lambda: len(batches) == 1)
        for event in events[1:]:  # delivered to the open request while the first batch is held
            await publisher.publish(SUBJECT, event)

        async def delivered() -> bool:
            info = await js.consumer_info(subjects.STREAM_TELEMETRY, "test")
            return bool(info.num_ack_pending == len(events) and info.num_pending == 0)

        await eventually(delivered, what="every event delivered to the open request")
        stop.set()
        release.set()
        await asyncio.wait_for(task, 5)
    finally:
        stop.set()
        release.set()
    assert batches == [[events[0].id]]  # the first was handled (and acked), the rest never
    seen: list[str] = []

    async def next_reader(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        seen.extend(d.event.id for d in batch)

    again = make_consumer(js, next_reader, options)
    stop = asyncio.Event()
    task = asyncio.create_task(again.run(stop))
    try:
        await eventually(lambda: sorted(seen) == sorted(e.id for e in events[1:]), within=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_standing_pull_with_a_fill_wait_hands_a_backlog_over_in_full_batches(
    js: JetStreamContext,
) -> None:
    """While the newest delivery says more are pending, the open request is left to fill the
    batch: a backlog is handled in full batches (the persister's concurrent COPY path), and the
    batch that ends it has the rest."""
    events = [telemetry() for _ in range(1250)]
    for start in range(0, len(events), 250):
        await Publisher(js).publish_many([(SUBJECT, e) for e in events[start : start + 250]])
    batches: list[int] = []
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        batches.append(len(batch))
        if sum(batches) == len(events):
            done.set()

    # A fill wait far shorter than 500 deliveries take to arrive: only the pending count fills them.
    options = ConsumerOptions(batch_size=500, standing=True, fill_wait=0.0001, prefetch=True)
    consumer = make_consumer(js, handler, options)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert batches == [500, 500, 250]


async def test_a_standing_pull_gives_up_a_request_lost_on_the_way_and_sends_another(
    js: JetStreamContext,
) -> None:
    from llmscope.bus.consumer import StandingPull

    nc = js._nc
    requests: list[str] = []

    async def swallow(msg: Any) -> None:  # a request nobody answers, as one lost in a reconnect
        requests.append(msg.reply)

    sink = await nc.subscribe("test.pull.sink", cb=swallow)
    puller = StandingPull(nc, subjects.STREAM_TELEMETRY, "nobody")
    puller._api = "test.pull.sink"
    await puller.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await asyncio.wait_for(puller.fetch(10, 0.2), 5) == []
        assert loop.time() - started >= 0.6  # its expiry and the margin, no status having come
        assert await asyncio.wait_for(puller.fetch(10, 0.2), 5) == []
        await eventually(lambda: len(requests) == 2)
        assert requests[0] != requests[1]  # each request its own reply subject
    finally:
        await puller.stop()
        await sink.unsubscribe()


async def _standing_pull(js: JetStreamContext) -> Any:
    from llmscope.bus.consumer import StandingPull

    consumer = make_consumer(js, None)
    await js.add_consumer(subjects.STREAM_TELEMETRY, config=consumer.consumer_config())
    puller = StandingPull(js._nc, subjects.STREAM_TELEMETRY, "test")
    await puller.start()
    return puller


async def test_a_standing_pull_does_not_linger_when_the_rate_cannot_bring_another_message_in_time(
    js: JetStreamContext,
) -> None:
    """At a rate whose gaps are longer than the fill wait (a trickle), the batch goes at once: the
    linger could add nothing to it, only its own length to the message's latency."""
    puller = await _standing_pull(js)
    try:
        puller.gap = 120.0  # as learnt from a trickle: a message every two minutes
        await Publisher(js).publish(SUBJECT, telemetry())
        # A 60 s fill wait; before the change it was waited out in full.
        msgs = await asyncio.wait_for(puller.fetch(10, 5, fill_wait=60), 10)
        assert len(msgs) == 1
    finally:
        await puller.stop()


async def test_a_slow_linger_waits_for_a_few_messages_at_the_measured_rate(js: JetStreamContext) -> None:
    """Below one message per fill wait, a consumer with ``fill_wait_max`` lingers long enough for
    ``SLOW_FILL_MESSAGES`` more at the measured rate: a batch of several, not a transaction per
    message (at 100 events/s the persister paid one per event). Without it the 1 ms fill wait,
    shorter than the gap, sent each message alone."""
    from llmscope.bus.consumer import SLOW_FILL_MESSAGES

    publisher = Publisher(js)
    puller = await _standing_pull(js)
    puller.fill_wait_max = 60.0
    try:
        puller.spacing = 5.0  # as learnt at one message every 5 s: the linger is 15 s
        assert puller.linger_for(0.001) == SLOW_FILL_MESSAGES * 5.0
        await publisher.publish(SUBJECT, telemetry())
        fetch = asyncio.create_task(puller.fetch(SLOW_FILL_MESSAGES + 1, 30, fill_wait=0.001))
        await eventually(lambda: len(puller.taken_meanwhile()) == 1)
        await asyncio.sleep(0)
        assert not fetch.done()  # it lingers for the messages the rate promises
        await publisher.publish_many([(SUBJECT, telemetry()) for _ in range(SLOW_FILL_MESSAGES)])
        msgs = await asyncio.wait_for(fetch, 10)
        assert len(msgs) == SLOW_FILL_MESSAGES + 1  # one batch
    finally:
        await puller.stop()


async def test_a_slow_linger_ends_once_the_messages_it_waits_for_are_in(js: JetStreamContext) -> None:
    """A slow linger waits for ``SLOW_FILL_MESSAGES`` more, not for its length: when they come
    sooner (the rate jumped before the spacing followed it: 1,000 POSTs/s right after 100/s), the
    batch goes with them. Before, each batch was held the whole slow linger, here 15 s."""
    from llmscope.bus.consumer import SLOW_FILL_MESSAGES

    publisher = Publisher(js)
    puller = await _standing_pull(js)
    puller.fill_wait_max = 60.0
    try:
        puller.spacing = 5.0  # as learnt at one message every 5 s: a 15 s linger
        await publisher.publish(SUBJECT, telemetry())
        fetch = asyncio.create_task(puller.fetch(500, 30, fill_wait=0.001))
        await eventually(lambda: len(puller.taken_meanwhile()) == 1)
        await asyncio.sleep(0)
        assert not fetch.done()  # it lingers
        await publisher.publish_many([(SUBJECT, telemetry()) for _ in range(SLOW_FILL_MESSAGES)])
        msgs = await asyncio.wait_for(fetch, 10)  # not the 15 s
        assert len(msgs) == SLOW_FILL_MESSAGES + 1
    finally:
        await puller.stop()


async def test_a_rate_that_doubles_is_followed_within_a_window(js: JetStreamContext) -> None:
    """The spacing follows a faster rate at once (one window of at least 100 ms), a slower one
    by ``SPACING_WEIGHT``: after 100/s, a jump to 1,000/s took half a second and more of slow
    lingers (10 ms spacing -> 7.75 -> 6.1 -> 4.8 ms ...), each batch held up to 30 ms."""
    puller = await _standing_pull(js)
    puller.fill_wait_max = 0.03
    try:
        feed = _feed(60, every_ns=10_000_000)  # 100/s for 0.6 s
        last = feed[-1][1]
        feed += [(61 + k, last + (k + 1) * 1_000_000) for k in range(250)]  # then 1,000/s
        for seq, stored in feed:
            _take(js, puller, seq, stored)
            if seq <= 60 or seq % 5 == 0:
                puller.give_back()  # a batch taken: each message at 100/s, five at 1,000/s
            if seq == 60:
                assert 0.009 < puller.spacing < 0.011
                assert puller.linger_for(0.003) == 0.03
        assert puller.spacing < 0.0015  # three windows at 1,000/s, no longer 100/s's
        assert puller.linger_for(0.003) == 0.003
    finally:
        puller.give_back()
        await puller.stop()


async def test_a_slow_linger_is_capped_and_skipped_when_the_next_message_comes_after_it(
    js: JetStreamContext,
) -> None:
    """The slow linger lasts at most ``fill_wait_max``; a trickle slower than that (the next
    message expected after the cap) goes at once, as without it. At the rate a latency target is
    set for (messages closer than the fill wait) the linger stays the fill wait."""
    puller = await _standing_pull(js)
    puller.fill_wait_max = 60.0
    try:
        puller.spacing = 0.0005  # faster than the fill wait: the fill wait
        assert puller.linger_for(0.001) == 0.001
        puller.spacing = 50.0  # 3 x 50 s capped at 60 s
        assert puller.linger_for(0.001) == 60.0
        puller.spacing = puller.gap = 120.0  # the next message is expected after the cap: no linger
        assert puller.linger_for(0.001) == 0.001
        await Publisher(js).publish(SUBJECT, telemetry())
        msgs = await asyncio.wait_for(puller.fetch(10, 30, fill_wait=0.001), 10)
        assert len(msgs) == 1
    finally:
        await puller.stop()


async def test_a_pause_of_the_consumers_loop_does_not_read_as_a_slow_rate(js: JetStreamContext) -> None:
    """The spacing the slow linger waits on is the one at which JetStream stored the messages: a
    pause of this process's loop (the API's also serves the POSTs) hands over what was stored
    meanwhile in a burst after one long gap. Measured between arrivals, that gap lifted a
    1,000 events/s feed's estimate over the 3 ms fill wait, and the linger grew to 3 gaps when
    the latency target needs it short."""
    puller = await _standing_pull(js)
    puller.fill_wait_max = 0.03
    try:
        for seq, stored in _feed(400, every_ns=1_000_000):  # stored 1 ms apart: 1,000 events/s
            _take(js, puller, seq, stored)
            if seq % 10 == 0:
                puller.give_back()  # a batch taken
            if seq % 100 == 0:
                time.sleep(0.05)  # noqa: ASYNC251 (the loop held up on purpose: the next message arrives late)
        assert 0.0009 < puller.spacing < 0.0011
        assert puller.linger_for(0.003) == 0.003
    finally:
        puller.give_back()
        await puller.stop()


def _feed(n: int, every_ns: int, burst: int = 1, pause_ns: int = 0) -> list[tuple[int, int]]:
    """(stream sequence, store time in ns) of ``n`` messages stored ``every_ns`` apart, in bursts of
    ``burst`` with ``pause_ns`` between them."""
    stored = time.time_ns()
    feed: list[tuple[int, int]] = []
    for seq in range(1, n + 1):
        stored += every_ns + (pause_ns if seq > 1 and (seq - 1) % burst == 0 else 0)
        feed.append((seq, stored))
    return feed


def _take(js: JetStreamContext, puller: Any, seq: int, stored: int, delivered: int = 1) -> None:
    """Hand ``puller`` a message as its parser would: one with that ack subject."""
    from llmscope.bus.inbox import InboxMsg

    reply = f"$JS.ACK.{subjects.STREAM_TELEMETRY}.test.{delivered}.{seq}.{seq}.{stored}.0"
    puller._take(InboxMsg(js._nc, SUBJECT, reply, b"{}", None))


async def test_traffic_in_bursts_does_not_read_as_a_slow_rate(js: JetStreamContext) -> None:
    """1,000 events/s that come as 100 every 100 ms: short gaps and long pauses. Each burst is a
    batch, and over whole batches the spacing is 1 ms, so the linger stays the fill wait. A
    smoothed gap per message, each pause a sample of up to twice the slow linger's 30 ms, read
    7.5 ms after every pause and lingered 22 ms."""
    puller = await _standing_pull(js)
    puller.fill_wait_max = 0.03
    try:
        for seq, stored in _feed(1000, every_ns=10_000, burst=100, pause_ns=99_000_000):
            _take(js, puller, seq, stored)
            if seq % 100 == 0:
                puller.give_back()  # the burst, a batch
            if seq % 100 == 1:  # each batch's first message: the linger it would get
                assert puller.linger_for(0.003) == 0.003, seq
        assert 0.0009 < puller.spacing < 0.0011
    finally:
        puller.give_back()
        await puller.stop()


async def test_a_short_stall_of_nats_server_does_not_read_as_a_slow_rate(js: JetStreamContext) -> None:
    """1,000 events/s in batches of three, with nats-server stalled 12 ms now and then (the store
    times of what it took meanwhile close together after the gap). Over a window of whole
    batches the stall is a share of 100 ms; measured from one batch to the next, the stall was
    a third of three events' span, the spacing read over 3 ms, and the linger grew to 3 spacings."""
    puller = await _standing_pull(js)
    puller.fill_wait_max = 0.03
    try:
        stored = time.time_ns()
        for seq in range(1, 1001):
            stored += 12_000_000 if seq % 50 == 0 else 1_000_000
            _take(js, puller, seq, stored)
            if seq % 3 == 0:
                puller.give_back()  # a batch taken
            assert puller.linger_for(0.003) == 0.003, seq
        assert 0.001 < puller.spacing < 0.0015
    finally:
        puller.give_back()
        await puller.stop()


async def test_a_redelivered_message_does_not_read_as_a_slow_rate(js: JetStreamContext) -> None:
    """A message delivered again (its ack wait over, or nak'd by a persister that stopped) comes
    amid the live feed with the store time it was first stored at, long before the newest: no
    spacing is measured from it. Measured from its old store time, the next batch read as one
    long pause and the linger of a 1,000 events/s feed grew over the 3 ms fill wait."""
    puller = await _standing_pull(js)
    puller.fill_wait_max = 0.03
    old = time.time_ns() - 10_000_000_000  # first stored 10 s ago
    try:
        for seq, stored in _feed(400, every_ns=1_000_000):  # stored 1 ms apart: 1,000 events/s
            _take(js, puller, seq, stored)
            if seq % 10 == 0:
                puller.give_back()  # a batch taken
                if seq % 20 == 0:  # every other batch begins with a redelivery
                    _take(js, puller, seq // 10, old, delivered=2)
            assert puller.linger_for(0.003) == 0.003, seq
        # Measured over the batches begun by a live message (the redeliveries among their
        # messages: a spacing a little short, never long).
        assert 0.0009 < puller.spacing < 0.0011
    finally:
        puller.give_back()
        await puller.stop()


async def test_a_standing_pull_still_lingers_while_messages_come_faster_than_the_fill_wait(
    js: JetStreamContext,
) -> None:
    publisher = Publisher(js)
    puller = await _standing_pull(js)
    try:
        await publisher.publish(SUBJECT, telemetry())
        fetch = asyncio.create_task(puller.fetch(10, 30, fill_wait=60))
        await eventually(lambda: len(puller.taken_meanwhile()) == 1)
        await asyncio.sleep(0)
        assert not fetch.done()  # the rate is not known yet (no gap seen): it lingers
        # A burst: each gap far shorter than the wait, so the linger goes on until the batch is full.
        await publisher.publish_many([(SUBJECT, telemetry()) for _ in range(9)])
        msgs = await asyncio.wait_for(fetch, 10)
        assert len(msgs) == 10
        assert puller.gap < 60
    finally:
        await puller.stop()


async def test_a_lingering_standing_pull_wakes_only_for_what_can_end_the_linger(
    js: JetStreamContext,
) -> None:
    """A message that comes during a linger and cannot end it (the batch not full, the rate saying
    more come before the deadline) is only kept by the parser's callback: the waiting fetch is not
    woken for it (a task step, a timer and a future per message, for a decision that stays)."""
    publisher = Publisher(js)
    puller = await _standing_pull(js)
    waits = 0

    class CountingEvent(asyncio.Event):
        async def wait(self) -> Literal[True]:
            nonlocal waits
            waits += 1
            return await super().wait()

    puller._ready = CountingEvent()
    try:
        await publisher.publish(SUBJECT, telemetry())
        fetch = asyncio.create_task(puller.fetch(10, 30, fill_wait=60))
        await eventually(lambda: len(puller.taken_meanwhile()) == 1)
        for n in range(2, 11):  # one at a time, each taken before the next is published
            await publisher.publish(SUBJECT, telemetry())
            await eventually(lambda n=n: len(puller.taken_meanwhile()) == n or fetch.done())  # type: ignore[misc]
        msgs = await asyncio.wait_for(fetch, 10)
        assert len(msgs) == 10
        assert waits <= 3  # the first message, the linger, the tenth that fills it: not one per message
    finally:
        await puller.stop()


async def test_a_standing_pull_does_not_linger_for_a_message_that_arrives_late(
    js: JetStreamContext,
) -> None:
    """The linger counts from when JetStream stored the batch's first message: one that reached
    this process late (its loop or nats-server busy) has waited already, and goes at once when
    it is later than the fill wait. Its lateness is measured against the smallest transit seen,
    so the two clocks need not agree."""
    publisher = Publisher(js)
    puller = await _standing_pull(js)
    try:
        for _ in range(2):  # on time: the transit is learnt
            await publisher.publish(SUBJECT, telemetry())
            assert len(await asyncio.wait_for(puller.fetch(10, 30, fill_wait=0.001), 10)) == 1
        assert puller.transit < 60
        on_time = puller._wall
        puller._wall = lambda: on_time() + 120  # from now on, each message arrives 2 minutes late
        await publisher.publish(SUBJECT, telemetry())
        # A 60 s fill wait (and a request open for 30 s); before the change it was waited out
        # until the request expired.
        msgs = await asyncio.wait_for(puller.fetch(10, 30, fill_wait=60), 10)
        assert len(msgs) == 1
    finally:
        await puller.stop()


def _seen_n(seen: list[str], n: int) -> bool:
    return len(seen) == n


async def test_ack_all_every_acks_a_trickle_once_per_period_and_the_last_batch_on_time(
    js: JetStreamContext,
) -> None:
    seen: list[str] = []
    publisher = Publisher(js)
    options = ConsumerOptions(batch_size=10, fetch_timeout=30, ack_all=True, standing=True, ack_all_every=4.0)

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        seen.extend(d.event.id for d in batch)

    consumer = make_consumer(js, handler, options)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    events = [telemetry() for _ in range(4)]
    acks: list[str] = []

    async def count_acks(msg: Any) -> None:
        acks.append(msg.subject)

    ack_sub = await js._nc.subscribe("$JS.ACK.>", cb=count_acks)  # this client's acks, as sent
    try:
        await consumer_waiting(js)
        for i, event in enumerate(events):
            await publisher.publish(SUBJECT, event)
            await eventually(functools.partial(_seen_n, seen, i + 1))  # each event its own batch
        # The first batch is acked at once, the next three by one AckAll within the period.
        await eventually(lambda: len(acks) == 2, within=10)
        info = await js.consumer_info(subjects.STREAM_TELEMETRY, "test")
        assert (info.num_ack_pending, info.ack_floor.stream_seq) == (0, len(events))
        await asyncio.sleep(0.3)
        assert len(acks) == 2
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await ack_sub.unsubscribe()


async def test_concurrent_full_batches_are_handled_at_once_and_each_acked_after_its_own(
    js: JetStreamContext,
) -> None:
    events = [telemetry() for _ in range(40)]
    await Publisher(js).publish_many([(SUBJECT, e) for e in events])
    seen: list[str] = []
    done = asyncio.Event()
    calls = 0

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            # While this batch is in its handler, the other three are handled and each acked.
            async def others_acked() -> bool:
                return len(seen) == 30 and await _in_hand_is(js, 10)

            await eventually(others_acked, within=10, what="the other batches handled and acked")
        seen.extend(d.event.id for d in batch)
        if len(seen) == len(events):
            done.set()

    options = ConsumerOptions(batch_size=10, fetch_timeout=0.2, prefetch=True, concurrent=2)
    await run_until(make_consumer(js, handler, options), done)
    assert seen == [e.id for e in events[10:]] + [e.id for e in events[:10]]
    await eventually(lambda: _all_acked(js), within=10, what="every message acked")


async def test_an_outage_holding_concurrent_batches_is_one_outage(
    js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    events = [telemetry() for _ in range(40)]
    await Publisher(js).publish_many([(SUBJECT, e) for e in events])
    failing = 0
    stored: list[str] = []
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        nonlocal failing
        if failing < 6:  # the first two batches each fail a few times, both held at once
            failing += 1
            await asyncio.sleep(0.01)
            raise ConnectionRefusedError("store down")
        stored.extend(d.event.id for d in batch)
        if len(stored) == len(events):
            done.set()

    options = _options(
        backoff=(0.05,), transient=lambda exc: isinstance(exc, ConnectionRefusedError), concurrent=2
    )
    consumer = make_consumer(js, handler, options)
    with caplog.at_level(logging.INFO, logger="llmscope.bus.consumer"):
        await run_until(consumer, done, 20)
    assert sorted(stored) == sorted(e.id for e in events)
    assert len(stored) == len(events)
    messages = [r.getMessage() for r in caplog.records if r.name == "llmscope.bus.consumer"]
    assert sum("store unavailable" in m for m in messages) == 1
    assert sum("store available again" in m for m in messages) == 1
    assert consumer.outages == 1
    await eventually(lambda: _all_acked(js), within=10, what="every message acked")


class _Deadlock(Exception):
    """What asyncpg raises when Postgres breaks a deadlock: an error with ``sqlstate`` 40P01."""

    sqlstate = "40P01"


async def test_a_deadlock_is_logged_as_a_conflict_not_as_the_store_unavailable(
    js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    events = [telemetry() for _ in range(5)]
    await Publisher(js).publish_many([(SUBJECT, e) for e in events])
    failed = 0
    stored: list[str] = []
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        nonlocal failed
        if failed < 3:
            failed += 1
            raise _Deadlock("deadlock detected")
        stored.extend(d.event.id for d in batch)
        if len(stored) == len(events):
            done.set()

    # A summary on every try after the first: the periodic "still ..." line is worded too.
    options = _options(
        backoff=(0.05,), transient=lambda exc: isinstance(exc, _Deadlock), outage_summary_s=0.0
    )
    consumer = make_consumer(js, handler, options)
    with caplog.at_level(logging.INFO, logger="llmscope.bus.consumer"):
        await run_until(consumer, done, 20)
    assert sorted(stored) == sorted(e.id for e in events)
    messages = [r.getMessage() for r in caplog.records if r.name == "llmscope.bus.consumer"]
    assert not [m for m in messages if "unavailable" in m or "available again" in m], messages
    assert (
        sum("store could not take the batch now (_Deadlock); holding it and retrying" in m for m in messages)
        == 1
    )
    still = "store still declining the batch (conflicting transactions); retrying"
    assert sum(still in m for m in messages) == 2, messages
    assert sum("store took the batch; resuming" in m for m in messages) == 1
    # Counted as what it was: a conflict, no outage.
    assert (consumer.conflicts, consumer.outages) == (1, 0)


async def test_a_conflict_that_turns_into_an_outage_counts_as_one(
    js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    """Postgres went away while a deadlocked batch waited: the hold is an outage after all."""
    events = [telemetry() for _ in range(5)]
    await Publisher(js).publish_many([(SUBJECT, e) for e in events])
    errors: list[Exception] = [_Deadlock("deadlock detected"), ConnectionRefusedError("store down")]
    stored: list[str] = []
    done = asyncio.Event()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        if errors:
            raise errors.pop(0)
        stored.extend(d.event.id for d in batch)
        if len(stored) == len(events):
            done.set()

    options = _options(
        backoff=(0.05,),
        transient=lambda exc: isinstance(exc, (_Deadlock, ConnectionRefusedError)),
        outage_summary_s=0.0,
    )
    consumer = make_consumer(js, handler, options)
    with caplog.at_level(logging.INFO, logger="llmscope.bus.consumer"):
        await run_until(consumer, done, 20)
    messages = [r.getMessage() for r in caplog.records if r.name == "llmscope.bus.consumer"]
    assert sum("store still unavailable" in m for m in messages) == 1, messages
    assert sum("store available again" in m for m in messages) == 1
    assert (consumer.conflicts, consumer.outages) == (1, 1)


def test_concurrent_batches_need_explicit_acks() -> None:
    with pytest.raises(ValueError, match="explicit acks"):
        asyncio.run(
            DurableConsumer[TelemetryEvent](
                js=None,  # type: ignore[arg-type]
                stream=subjects.STREAM_TELEMETRY,
                durable="x",
                filter_subjects=[SUBJECT],
                decode=decode,
                handler=lambda batch: asyncio.sleep(0),
                dead_letters=None,  # type: ignore[arg-type]
                options=ConsumerOptions(concurrent=2, ack_all=True),
            ).run(asyncio.Event())
        )


async def test_cancelling_a_run_cancels_the_concurrent_batches_unacked(js: JetStreamContext) -> None:
    events = [telemetry() for _ in range(30)]
    await Publisher(js).publish_many([(SUBJECT, e) for e in events])
    started = 0
    never = asyncio.Event()

    async def stuck(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        nonlocal started
        started += 1
        await never.wait()

    options = ConsumerOptions(batch_size=10, fetch_timeout=0.2, prefetch=True, concurrent=2)
    task = asyncio.create_task(make_consumer(js, stuck, options).run(asyncio.Event()))
    await eventually(lambda: started == 2, within=10, what="two batches in their handlers")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    # Nothing acked: the batches in their handlers are redelivered after ack_wait.
    info = await js.consumer_info(subjects.STREAM_TELEMETRY, "test")
    assert (info.ack_floor.stream_seq or 0) == 0
    assert await _in_hand(js) >= 20


@pytest.mark.fault
async def test_a_memory_consumer_lost_with_a_nats_restart_is_made_again_after_what_it_handled(
    embedded_nats: EmbeddedNats,
) -> None:
    """``mem_storage`` (the SPC engine's partitions): nats-server keeps no state file for the
    consumer, so a restart loses it; the consumer makes it again when a pull finds it gone, and
    resumes right after the last message it handled: nothing skipped, nothing handled twice."""
    nc = await nats.connect(embedded_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    seen: list[str] = []

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        seen.extend(d.event.id for d in batch)

    options = ConsumerOptions(batch_size=10, fetch_timeout=1, ack_all=True, standing=True, mem_storage=True)
    consumer = make_consumer(js, handler, options)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    before, after = [telemetry() for _ in range(3)], [telemetry() for _ in range(3)]
    try:
        await Publisher(js).publish_many([(SUBJECT, e) for e in before])
        await eventually(lambda: seen == [e.id for e in before])
        info = await js.consumer_info(subjects.STREAM_TELEMETRY, "test")
        assert info.config.mem_storage
        embedded_nats.kill()
        embedded_nats.start()  # the same store: the stream and its messages are back, the consumer is not

        async def published() -> bool:
            try:
                await Publisher(js).publish_many([(SUBJECT, e) for e in after])
            except (nats.errors.Error, TimeoutError):  # still reconnecting
                return False
            return True

        await eventually(published, within=30, what="published after the restart")
        await eventually(
            lambda: len(seen) >= len(before + after), within=30, what="handled after the restart"
        )
        assert seen == [e.id for e in before + after]
        assert consumer.recreated >= 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await nc.close()


async def _just_after_a_tick(period: float) -> None:
    """Sleep until just after the next multiple of ``period`` on the loop's clock (the gathering
    consumers' ticks), so a test has almost a whole period before the one after."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(period - loop.time() % period + 0.02)


async def _delivered(js: JetStreamContext, unacked: int) -> bool:
    info = await js.consumer_info(subjects.STREAM_TELEMETRY, "test")
    return bool(info.num_ack_pending == unacked and info.num_pending == 0)


async def test_a_gathering_consumer_takes_a_burst_stored_during_the_gather_as_one_batch(
    js: JetStreamContext,
) -> None:
    """The first message wakes the consumer (its one-message request); what is stored until the
    next tick comes with it in one batch, pulled at the tick (a standing request handed each
    over as it came: [1, 9])."""
    gather = 2.0
    batches: list[list[str]] = []
    handled_at: list[float] = []
    loop = asyncio.get_running_loop()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        batches.append([d.event.id for d in batch])
        handled_at.append(loop.time())

    options = ConsumerOptions(batch_size=100, fetch_timeout=30, ack_all=True, gather=gather)
    consumer = make_consumer(js, handler, options)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    publisher = Publisher(js)
    events = [telemetry() for _ in range(10)]
    try:
        await consumer_waiting(js)
        await _just_after_a_tick(gather)
        await publisher.publish(SUBJECT, events[0])
        await eventually(functools.partial(_delivered, js, 1), what="the first delivered")
        await publisher.publish_many([(SUBJECT, e) for e in events[1:]])
        await eventually(lambda: len(batches) >= 1, within=10)
        await asyncio.sleep(0.2)
        assert batches == [[e.id for e in events]]
        assert handled_at[0] % gather < 0.5  # at the tick (the loop's clock), not before
        await eventually(functools.partial(_delivered, js, 0), what="the batch acked")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def _more_than(items: list[float], n: int) -> bool:
    return len(items) > n


async def test_an_idle_gathering_consumer_waits_on_one_request_and_handles_a_first_message_within_the_gather(
    js: JetStreamContext,
) -> None:
    """Idle, one request for one message stays open (nothing sent per tick); a message wakes the
    consumer and is handled by the next tick: within the gather period and a margin."""
    gather = 0.3
    handled: list[float] = []
    loop = asyncio.get_running_loop()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        handled.extend(loop.time() for _ in batch)

    options = ConsumerOptions(batch_size=100, fetch_timeout=30, ack_all=True, gather=gather)
    consumer = make_consumer(js, handler, options)
    nc = js._nc
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await consumer_waiting(js)
        sent = nc.stats["out_msgs"]
        await asyncio.sleep(4 * gather)
        assert nc.stats["out_msgs"] == sent  # four ticks went by: no pull was sent
        info = await js.consumer_info(subjects.STREAM_TELEMETRY, "test")
        assert info.num_waiting == 1
        for _ in range(3):
            count = len(handled)
            published = loop.time()
            await Publisher(js).publish(SUBJECT, telemetry())
            await eventually(functools.partial(_more_than, handled, count), within=10)
            assert handled[-1] - published <= gather + 0.25  # the margin: a busy machine's loop
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_gathering_consumer_drains_a_backlog_in_full_batches_without_waiting_for_ticks(
    js: JetStreamContext,
) -> None:
    """A backlog is taken at once, not at the next tick, and in full batches one after the other
    (a tick's pull that comes back full is followed by another at once), not one batch a tick."""
    gather = 2.0
    events = [telemetry() for _ in range(1250)]
    await Publisher(js).publish_many([(SUBJECT, e) for e in events])
    batches: list[int] = []
    handled_at: list[float] = []
    seen: list[str] = []
    loop = asyncio.get_running_loop()

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        batches.append(len(batch))
        handled_at.append(loop.time())
        seen.extend(d.event.id for d in batch)

    options = ConsumerOptions(batch_size=500, fetch_timeout=30, ack_all=True, gather=gather)
    consumer = make_consumer(js, handler, options)
    stop = asyncio.Event()
    await _just_after_a_tick(gather)
    started = loop.time()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await eventually(lambda: len(seen) == len(events), within=15)
        assert seen == [e.id for e in events]
        assert batches == [500, 500, 250]
        # The first message says more are pending: not held for the tick (almost 2 s away).
        assert handled_at[-1] - started < gather / 2
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


@pytest.mark.parametrize("ack_all", [False, True])
async def test_a_gathering_consumer_stopped_during_a_gather_loses_nothing(
    js: JetStreamContext, ack_all: bool
) -> None:
    """A message delivered and held for the tick when the consumer stops is not handled and not
    acked; the stop does not wait for the tick. With explicit acks it is nak'd, so the next
    reader gets it at once (ack_wait is 60 s); with AckAll (the SPC engine's partitions) the
    ack floor stays before it, and a consumer made again from there (as a partition's next
    owner does from its checkpoint) delivers it."""
    gather = 5.0
    seen: list[str] = []

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        seen.extend(d.event.id for d in batch)

    options = ConsumerOptions(batch_size=10, fetch_timeout=30, ack_wait=60, ack_all=ack_all, gather=gather)
    consumer = make_consumer(js, handler, options)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    publisher = Publisher(js)
    first, held = telemetry(), telemetry()
    loop = asyncio.get_running_loop()
    try:
        await consumer_waiting(js)
        await publisher.publish(SUBJECT, first)
        await eventually(lambda: seen == [first.id], within=2 * gather)
        await _just_after_a_tick(gather)
        await eventually(functools.partial(_delivered, js, 0), what="the first acked")
        await publisher.publish(SUBJECT, held)
        await eventually(functools.partial(_delivered, js, 1), what="the second delivered")
        stopping = loop.time()
        stop.set()
        await asyncio.wait_for(task, 5)
        assert loop.time() - stopping < 1.0  # not held back until the tick
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert seen == [first.id]
    info = await js.consumer_info(subjects.STREAM_TELEMETRY, "test")
    assert info.ack_floor.stream_seq == 1
    again: list[str] = []

    async def next_reader(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        again.extend(d.event.id for d in batch)

    reader = make_consumer(js, next_reader, ConsumerOptions(batch_size=10, fetch_timeout=1, ack_all=ack_all))
    if ack_all:
        assert info.num_ack_pending == 1  # delivered, never acked
        await js.delete_consumer(subjects.STREAM_TELEMETRY, "test")
        cfg = reader.consumer_config()
        cfg.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        cfg.opt_start_seq = info.ack_floor.stream_seq + 1
        reader.consumer_config = lambda: cfg  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(reader.run(stop))
    try:
        await eventually(lambda: again == [held.id], within=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def test_gathering_takes_one_batch_a_tick() -> None:
    with pytest.raises(ValueError, match="gather"):
        asyncio.run(
            DurableConsumer[TelemetryEvent](
                js=None,  # type: ignore[arg-type]
                stream=subjects.STREAM_TELEMETRY,
                durable="x",
                filter_subjects=[SUBJECT],
                decode=decode,
                handler=lambda batch: asyncio.sleep(0),
                dead_letters=None,  # type: ignore[arg-type]
                options=ConsumerOptions(gather=0.1, prefetch=True),
            ).run(asyncio.Event())
        )


def test_ticks_fall_at_the_consumers_phase_of_the_period() -> None:
    assert tick_after(1.0, 0.5) == 1.5
    assert tick_after(1.1, 0.5) == 1.5
    assert tick_after(1.0, 0.5, 0.25) == 1.25
    assert tick_after(1.25, 0.5, 0.25) == 1.75
    assert tick_after(0.1, 0.5, 0.25) == 0.25


@pytest.mark.parametrize("phase", [0.0, 0.5])
async def test_a_gathering_consumer_sends_its_deferred_ack_all_on_a_tick(
    js: JetStreamContext, phase: float
) -> None:
    """With ``ack_all_every`` the AckAll goes at a tick (at the consumer's phase of the period),
    with the pulls of the process's other consumers of that phase (one write), not at its own
    moment; still after its batch was handled."""
    gather = 0.5
    loop = asyncio.get_running_loop()
    handled: list[float] = []
    acks: list[float] = []

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        await asyncio.sleep(0.07)  # the ack would go 0.07 s after the tick
        handled.append(loop.time())

    async def count_acks(msg: Any) -> None:
        acks.append(loop.time())

    options = ConsumerOptions(
        batch_size=10, fetch_timeout=30, ack_all=True, gather=gather, gather_phase=phase, ack_all_every=1.0
    )
    consumer = make_consumer(js, handler, options)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    ack_sub = await js._nc.subscribe("$JS.ACK.>", cb=count_acks)  # this client's acks, as sent
    try:
        await consumer_waiting(js)
        for _ in range(3):
            count = len(handled)
            await Publisher(js).publish(SUBJECT, telemetry())
            await eventually(functools.partial(_more_than, handled, count), within=10)
        await eventually(lambda: len(acks) >= 2, within=10)
        for at in acks:
            into = (at - phase * gather) % gather
            assert min(into, gather - into) < 0.06  # on its tick (+ the loop's lag)
        assert acks[0] > handled[0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await ack_sub.unsubscribe()


async def test_a_gathering_consumer_takes_the_common_tick_after_a_small_batch(js: JetStreamContext) -> None:
    """With ``gather_spread_from`` a consumer keeps its phase of the period only while its batches
    are that big: after a small one its next pull (and its deferred AckAll) go at the common tick,
    with every other consumer of the process, so a trickle costs one wake-up a period, not one
    per phase."""
    gather, phase = 0.5, 0.5
    loop = asyncio.get_running_loop()
    handled: list[tuple[float, int]] = []
    acks: list[float] = []

    async def handler(batch: Sequence[Delivery[TelemetryEvent]]) -> None:
        handled.append((loop.time(), len(batch)))

    async def count_acks(msg: Any) -> None:
        acks.append(loop.time())

    options = ConsumerOptions(
        batch_size=20,
        fetch_timeout=30,
        ack_all=True,
        gather=gather,
        gather_phase=phase,
        gather_spread_from=5,
        ack_all_every=1.0,
    )
    consumer = make_consumer(js, handler, options)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    ack_sub = await js._nc.subscribe("$JS.ACK.>", cb=count_acks)

    def into(at: float) -> float:
        return at % gather  # 0: the common tick; 0.25: this consumer's phase

    async def publish(n: int) -> tuple[float, int]:
        count = len(handled)
        for _ in range(n):
            await Publisher(js).publish(SUBJECT, telemetry())
        await eventually(lambda: len(handled) > count, within=10)
        return handled[count]

    try:
        await consumer_waiting(js)
        at, size = await publish(1)  # a small batch: the common tick
        assert size == 1
        assert min(into(at), gather - into(at)) < 0.06
        at, size = await publish(6)  # one by the sentinel, the rest at the common tick
        assert size == 6
        assert min(into(at), gather - into(at)) < 0.06
        at, size = await publish(1)  # after a big batch: the consumer's phase
        assert size == 1
        assert abs(into(at) - phase * gather) < 0.06
        phased = at
        while True:  # small batches again: the common tick
            at, size = await publish(1)
            assert size == 1
            assert min(into(at), gather - into(at)) < 0.06
            if at > phased + 1.6:
                break
        # An AckAll timed after the last phased batch (its timer at most ``ack_all_every`` plus
        # a period after it): on the common tick too.
        await eventually(lambda: bool(acks) and acks[-1] > phased + 1.6, within=10)
        assert min(into(acks[-1]), gather - into(acks[-1])) < 0.06
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await ack_sub.unsubscribe()
