"""The :class:`Persister`: a durable consumer per stream, each batch written and then acked."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import asyncpg
from nats.js import JetStreamContext

from llmscope.api.incidents_store import store_incidents
from llmscope.api.metrics import ApiMetrics
from llmscope.api.persister.connections import KeptConnections
from llmscope.api.persister.writes import (
    Conn,
    refused_for_its_data,
    store_dead_letters,
    store_telemetry,
    store_violations,
)
from llmscope.bus.consumer import ConsumerOptions, Delivery, DurableConsumer
from llmscope.bus.deadletter import DeadLetters
from llmscope.bus.metrics import sample_consumers
from llmscope.bus.publisher import Publisher
from llmscope.config.logs import get_logger
from llmscope.config.startup import postgres_unavailable
from llmscope.proto import codec, subjects
from llmscope.proto.deadletter import DeadLetterEvent
from llmscope.proto.incident import IncidentEvent
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent

log = get_logger("llmscope.api.persister")

SOURCE = subjects.PERSISTER
FILL_WAIT_S = 0.003
FILL_WAIT_MAX_S = 0.03
"""The longest a batch's first event waits for others at a low rate (s; ``fill_wait_max``): the
posted -> stored p99 target (< 10 ms) is set at 1,000 events/s, where the wait stays
``FILL_WAIT_S``; slower, nobody reading a dashboard that refreshes every 2 s sees 30 ms."""
PERSIST_BATCH = 2000
"""Events per transaction with a backlog. A batch's rollup, series, series target and model upserts
are about one row per model however many events it holds, and a COMMIT one fsync: going from 500
to 2000 cut Postgres's CPU per drained event from 15-16 to 8-10 us (``bench/ingest_bench.py``).
A trickle is not held back by it: a pull takes what is there (``ConsumerOptions.fill_wait``)."""
LAG_SAMPLE_S = 5.0
"""How often each consumer's lag is read from the server (one request per consumer)."""
QUIET_EXPIRES_S = 5.0
"""The open pull request's expiry of the persister's violation, dead-letter and incident
consumers (telemetry's: ``ConsumerOptions.fetch_timeout``, 1 s). Those streams are quiet most of
the time, and each expiry is a request and a status through nats-server and a wake-up here:
eight messages a second for the three and telemetry, idle, with 1 s. A message still comes at
once on the open request; a request lost with the connection is given up after this (and 0.5 s),
so those three resume at most that long after NATS comes back."""
TELEMETRY_CONCURRENT = 2
"""Full telemetry batches stored at once, each on its own connection (``ConsumerOptions.concurrent``):
one batch's rows are COPY'd while the other's aggregates are upserted and its COMMIT waits on
the disk; the aggregates and COMMITs themselves go one after the other (``store_telemetry``)."""

E = TypeVar("E")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def persister_consumer_options(**overrides: Any) -> ConsumerOptions:
    """How the persister consumes: batches of up to ``PERSIST_BATCH``; a Postgres outage of any
    length is waited out (the batch is held and retried with capped backoff, never
    dead-lettered); a batch refused for its data is split so only the guilty events are
    dead-lettered (:meth:`Persister._write`).

    Each consumer keeps one pull request open (``standing``): at a trickle one request and one
    expiry status a second, not two requests per wake-up, and what arrives while a batch is
    written is the next batch at once (no fill wait for it). An idle persister that wakes for one
    event waits up to ``FILL_WAIT_S`` for the events behind it, so a steady rate is written in
    batches (a transaction per event cost ~1.5 ms each); but only while the rate says another
    event will come within the wait (:class:`llmscope.bus.consumer.StandingPull`). Below one event
    per ``FILL_WAIT_S`` (333/s) the wait grows to about three events' gaps, up to
    ``FILL_WAIT_MAX_S`` (:meth:`~llmscope.bus.consumer.StandingPull.linger_for`): at 100 events/s a
    batch of about four, stored within ~30 ms, instead of a transaction, a commit and a wake-up
    per event; slower than one event per 30 ms, no wait. The wait counts from
    when JetStream stored the batch's first event: one that reached this process late (its loop
    or nats-server busy) waits only the rest, or nothing. Acks stay one per
    message: several API processes may run a persister on the same durable consumer, and an
    AckAll from one would ack what another has not committed yet. With a backlog, the next batch
    is pulled while one is written (``prefetch``): the client's parsing of one batch overlaps
    Postgres's work on the other."""
    options = ConsumerOptions(
        batch_size=PERSIST_BATCH,
        transient=postgres_unavailable,
        fill_wait=FILL_WAIT_S,
        fill_wait_max=FILL_WAIT_MAX_S,
        prefetch=True,
        standing=True,
    )
    return replace(options, **overrides)


class Persister:
    """Durable consumers (telemetry, violations, dead letters, incidents) writing through one pool."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        publisher: Publisher,
        batch_size: int = PERSIST_BATCH,
        metrics: ApiMetrics | None = None,
        durable_prefix: str = subjects.PERSISTER,
        options: ConsumerOptions | None = None,
        lag_sample_s: float = LAG_SAMPLE_S,
        on_stored: Callable[[str, Sequence[Any]], None] | None = None,
    ) -> None:
        self._pool = pool
        self._kept = KeptConnections(pool)
        # Told after each committed write (kind, the events written): the open dashboard tabs
        # re-read a chart once its new points can be read, never before.
        self._on_stored = on_stored
        self._metrics = metrics
        self._counters: dict[str, tuple[Any, Any]] = {}
        self._js = js
        self.lag_sample_s = lag_sample_s
        # Their names are in the `persister` NATS user's allow list (llmscope.proto.permissions).
        self._durables = {
            stream: subjects.persister_durable(stream, durable_prefix)
            for stream in subjects.PERSISTER_STREAMS
        }
        consumers = metrics.consumers if metrics is not None else None
        dead = DeadLetters(publisher, SOURCE)
        opts = options or persister_consumer_options(batch_size=batch_size)
        self._serial = asyncio.Lock()
        quiet = (
            replace(opts, fetch_timeout=max(opts.fetch_timeout, QUIET_EXPIRES_S)) if opts.standing else opts
        )
        self.telemetry = DurableConsumer[TelemetryEvent](
            js=js,
            stream=subjects.STREAM_TELEMETRY,
            durable=self._durables[subjects.STREAM_TELEMETRY],
            filter_subjects=[subjects.TELEMETRY_ALL],
            decode=codec.decoder(TelemetryEvent),
            handler=self.on_telemetry,
            dead_letters=dead,
            # Only telemetry: a violation batch's clears must find the episodes opened before them.
            options=replace(opts, concurrent=TELEMETRY_CONCURRENT) if not opts.ack_all else opts,
            metrics=consumers,
        )
        self.violations = DurableConsumer[ViolationEvent](
            js=js,
            stream=subjects.STREAM_VIOLATIONS,
            durable=self._durables[subjects.STREAM_VIOLATIONS],
            filter_subjects=[subjects.VIOLATIONS_ALL],
            decode=codec.decoder(ViolationEvent),
            handler=self.on_violations,
            dead_letters=dead,
            options=quiet,
            metrics=consumers,
        )
        self.dead_letters = DurableConsumer[DeadLetterEvent](
            js=js,
            stream=subjects.STREAM_DEADLETTER,
            durable=self._durables[subjects.STREAM_DEADLETTER],
            filter_subjects=[subjects.DEADLETTER_ALL],
            decode=codec.decoder(DeadLetterEvent),
            handler=self.on_dead_letters,
            dead_letters=dead,
            options=quiet,
            metrics=consumers,
        )
        self.incidents = DurableConsumer[IncidentEvent](
            js=js,
            stream=subjects.STREAM_INCIDENTS,
            durable=self._durables[subjects.STREAM_INCIDENTS],
            filter_subjects=[subjects.INCIDENTS_ALL],
            decode=codec.decoder(IncidentEvent),
            handler=self.on_incidents,
            dead_letters=dead,
            options=quiet,
            metrics=consumers,
        )

    def _count(self, kind: str, stored: int) -> None:
        if self._metrics is None:
            return
        counters = self._counters.get(kind)
        if counters is None:
            # Each kind's children looked up once: ``labels()`` takes a lock and builds a key per call.
            counters = self._counters[kind] = (
                self._metrics.persisted.labels(kind),
                self._metrics.batches.labels(kind),
            )
        counters[0].inc(stored)
        counters[1].inc()

    async def on_telemetry(self, batch: Sequence[Delivery[TelemetryEvent]]) -> Mapping[int, str]:
        store = functools.partial(store_telemetry, serial=self._serial)
        # One by one (a batch refused for its data), while another batch may be in its store:
        # each event takes its row before ``serial``, as a large batch does (store_telemetry).
        each = functools.partial(store_telemetry, serial=self._serial, copy_min_rows=1)
        return await self._write("telemetry", batch, store, each)

    async def on_violations(self, batch: Sequence[Delivery[ViolationEvent]]) -> Mapping[int, str]:
        return await self._write("violations", batch, store_violations)

    async def on_dead_letters(self, batch: Sequence[Delivery[DeadLetterEvent]]) -> Mapping[int, str]:
        return await self._write("dead_letters", batch, store_dead_letters)

    async def on_incidents(self, batch: Sequence[Delivery[IncidentEvent]]) -> Mapping[int, str]:
        return await self._write("incidents", batch, store_incidents)

    async def _write(
        self,
        kind: str,
        batch: Sequence[Delivery[E]],
        store: Callable[[Conn, Sequence[E]], Awaitable[int]],
        store_each: Callable[[Conn, Sequence[E]], Awaitable[int]] | None = None,
    ) -> Mapping[int, str]:
        """Store the batch; events Postgres refuses for their data are returned as rejected
        (each event then written alone by ``store_each``, by default ``store``)."""
        try:
            async with self._kept.connection() as conn:
                stored = await store(conn, [d.event for d in batch])
        except Exception as exc:
            if not refused_for_its_data(exc):
                raise  # unavailable: waited out by the consumer; anything else: counted tries
            if len(batch) == 1:
                return {0: f"refused by Postgres: {_describe(exc)}"}
            return await self._write_one_by_one(kind, batch, store_each or store)
        self._count(kind, stored)
        self._tell(kind, [d.event for d in batch])
        return {}

    def _tell(self, kind: str, events: Sequence[Any]) -> None:
        if self._on_stored is None or not events:
            return
        try:
            self._on_stored(kind, events)
        except Exception:  # a listener's bug must not make the bus redeliver stored events
            log.exception("on_stored listener failed", kind=kind)

    async def _write_one_by_one(
        self,
        kind: str,
        batch: Sequence[Delivery[E]],
        store: Callable[[Conn, Sequence[E]], Awaitable[int]],
    ) -> Mapping[int, str]:
        # Each event in its own transaction; an outage meanwhile propagates (what was stored
        # stays stored: the retry of the whole batch writes it once, by id).
        rejected: dict[int, str] = {}
        stored = 0
        async with self._pool.acquire() as conn:
            for index, delivery in enumerate(batch):
                try:
                    stored += await store(conn, [delivery.event])
                except Exception as exc:
                    if not refused_for_its_data(exc):
                        raise
                    rejected[index] = f"refused by Postgres: {_describe(exc)}"
        self._count(kind, stored)
        self._tell(kind, [d.event for i, d in enumerate(batch) if i not in rejected])
        return rejected

    async def run(self, stop: asyncio.Event) -> None:
        """Consume every stream until ``stop`` is set (a crashed consumer is restarted), and
        sample each consumer's lag from the server (with metrics)."""
        consumers = (self.telemetry, self.violations, self.dead_letters, self.incidents)
        lag = []
        if self._metrics is not None:
            metrics = self._metrics.consumers
            lag = [
                sample_consumers(metrics, self._js, stream, _constant((durable,)), stop, self.lag_sample_s)
                for stream, durable in self._durables.items()
            ]
        try:
            await asyncio.gather(*(self._supervise(c, stop) for c in consumers), *lag)
        finally:
            await self._kept.close()

    async def _supervise(self, consumer: DurableConsumer[Any], stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await consumer.run(stop)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consumer crashed; restarting in 1 s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)


def _constant(durables: tuple[str, ...]) -> Callable[[], tuple[str, ...]]:
    return lambda: durables
