"""Partition consumption: take a partition, chart its telemetry, hand it over.

Ack after publish: the lead's :class:`~llmscope.bus.consumer.DurableConsumer` acks a batch only
after the handler returns, and the handler returns only after JetStream acknowledged every
violation it published (the batch's violations go pipelined, ``Publisher.publish_many``, and
every PubAck is awaited; ``Nats-Msg-Id`` = violation id). One ack per batch: AckAll on its
highest sequence (a partition has one reader, its lease holder), sent at most every
``ACK_EVERY_S`` (a trickle's one-event batches share one). Telemetry is taken in gathered batches
(``ConsumerOptions.gather``, ``LLMSCOPE_SPC_GATHER_MS``): idle, a partition keeps one request
for a single message open; once one came, it pulls what was stored meanwhile at the next tick of
a clock all the partitions of the process share, so the 16 partitions' pulls go in one write and
their batches come back together: a wake-up per tick, not one per probe event, for up to the
gather period added to a violation's delay. With ``LLMSCOPE_SPC_GATHER_MS=0`` each partition
keeps one pull request open (``ConsumerOptions.standing``) and charts each event as it is stored.

Partitions (scale-out): the telemetry stream stores every model's messages in one of
``LLMSCOPE_SPC_PARTITIONS`` (P) partitions, a hash of provider and model computed by nats-server
(:mod:`llmscope.bus.streams`). Each partition has its own durable consumer ``spc-engine-p<k>``,
filtered to that partition, and its own checkpoint ``_checkpoint.p<k>``, so a replica reads only
its share of the stream. P is fixed for the life of the stream; the number of replicas can change
at any time, and nothing tells a replica how many there are: they find each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import msgspec
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import (
    KeyNotFoundError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from llmscope.bus.consumer import ConsumerOptions, Delivery, DurableConsumer
from llmscope.bus.deadletter import DeadLetters
from llmscope.config.logs import get_logger
from llmscope.proto import codec, subjects
from llmscope.proto.charts import (
    decode_record,
)
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.traffic import TrafficMinuteEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine.checkpoints import Checkpoints
from llmscope.spc_engine.lease import PartitionLease, lease_key
from llmscope.spc_engine.membership import owned_partitions
from llmscope.spc_engine.publishing import Publishing
from llmscope.spc_engine.settings import SpcSettings
from llmscope.spc_engine.settings_watch import SettingsWatch
from llmscope.spc_engine.subgroup import SubgroupConfig
from llmscope.spc_engine.traffic import TrafficPartition, default_configs, traffic_key

log = get_logger("llmscope.spc_engine")


def partition_durable(partition: int) -> str:
    """Name of a partition's durable consumer on the telemetry stream."""
    return f"spc-engine-p{partition}"


ACK_EVERY_S = 1.0
"""A partition's AckAll is sent at most this often: at a trickle each probe event is a batch of
its own, and one ack each cost a write and a server ack per event. Acks still follow the effect
(the batch's violations published); the consumer is recreated from the checkpoint whenever the
partition is taken, so an ack not sent before a crash changes nothing. Each of the 16 partitions
has its own timer: at 0.5 s they were up to 32 wake-ups of the engine and 32 acks to nats-server
a second at 100 probe events/s."""

MAX_ACK_PENDING = 50_000
"""Messages a partition may have delivered and not acked: more than one ``ACK_EVERY_S`` of the
fastest a partition is charted (a backlog, 20,000-40,000 events/s), so the acks' cadence never
holds a catch-up back (at the default 10,000 a partition could take 10,000 events a second)."""

PULL_EXPIRES_S = 5.0
"""A partition's open pull request expires after this (a request lost with the connection is
given up then, so a partition resumes at most this long after NATS comes back)."""


GATHER_GROUPS = 8
"""The partitions' gather ticks are spread over this many moments of the period (partition k at
``(k % GATHER_GROUPS) / GATHER_GROUPS`` of it). All 16 on one tick made one burst of half a second
of telemetry, charted at once: at 1,000 probe events/s ~25 ms of the engine's CPU every half
second, while the API, Postgres and nats-server shared the other core of a 2-core host, and the
posted -> stored p99 at 1,000 POSTs/s rose to 11.1-15.5 ms (7.7-10.2 with gather off). Alternated
``stack_bench`` rounds (session 15, load 0.4-1.1), groups: p99 ms; engine ms per probe event at
100/s and 1,000/s: 1: 11.1-12.2; 0.139, 0.056 -- 4: 8.8-10.9; 0.156, 0.059 -- 8: 7.7-8.3; 0.217,
0.067 -- 16: 7.3-8.1; 0.279, 0.071. Eight keep the tail and most of the gain."""


GATHER_SPREAD_FROM = 8
"""A partition keeps its phase of the gather period (``GATHER_GROUPS``) only while its batches
have at least this many events (``ConsumerOptions.gather_spread_from``); smaller ones take the
common tick. The phases spread the bursts of a heavy flow (1,000 probe events/s: ~30 events per
partition per tick); at a trickle (100/s: ~3) a burst of all 16 partitions is a few milliseconds,
and eight ticks a period cost eight wake-ups, eight writes of pulls and AckAlls and eight reply
bursts where one does."""


def gather_phase(partition: int, partitions: int) -> float:
    """Where in the gather period partition ``partition``'s ticks fall (see ``GATHER_GROUPS``)."""
    groups = max(1, min(GATHER_GROUPS, partitions))
    return (partition % groups) / groups


def traffic_configs(settings: SpcSettings) -> dict[str, SubgroupConfig]:
    return default_configs(settings.traffic_min_requests, settings.traffic_baseline_minutes)


def stored_at(d: Delivery[TelemetryEvent]) -> datetime:
    """When JetStream stored the message (the stream's clock, the same on every replay)."""
    tokens = (d.msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        # As nats-py's Metadata reads it, without building the rest of it for every message.
        return datetime.fromtimestamp(int(tokens[7]) / 1_000_000_000.0, UTC)
    try:
        return d.msg.metadata.timestamp
    except Exception:  # not a JetStream message (never from the consumer): the wall clock
        return datetime.now(UTC)


def _pending(d: Delivery[TelemetryEvent]) -> int:
    """Messages of the partition still to deliver after this one (-1: unknown)."""
    tokens = (d.msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[8])  # as nats-py's Metadata reads it, without building the rest of it
    try:
        return d.msg.metadata.num_pending
    except Exception:
        return -1


class _ResumingConsumer(DurableConsumer[TelemetryEvent]):
    """A partition's durable consumer, recreated to start right after its checkpoint."""

    def __init__(self, *, start_seq: int, lease: PartitionLease, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._start_seq = start_seq
        self._lease = lease

    def may_recreate(self) -> bool:
        # Only while nobody else can hold the partition (LeaseLostError otherwise: the service
        # stops): a replica that took it over deletes and makes its consumer itself.
        self._lease.check()
        return True

    def consumer_config(self) -> ConsumerConfig:
        cfg = super().consumer_config()
        cfg.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        # Made again after a nats-server restart lost it (``mem_storage``): from the first
        # sequence not handled yet, so nothing is skipped and little is charted twice (charts
        # skip the sequences they applied).
        cfg.opt_start_seq = max(self._start_seq, self.handled_seq + 1)
        return cfg


class PartitionConsumption(Checkpoints, SettingsWatch, Publishing):
    """Serves the partitions this replica wants: one durable consumer each, charted under the lock."""

    async def load_traffic(self, partition: int) -> None:
        """The partition's traffic minutes and charts as of its checkpoint."""
        try:
            entry = await self._kv.get(traffic_key(partition))
            head = TrafficPartition.load_head(entry.value) if entry.value else None
        except KeyNotFoundError:
            head = None
        records = [
            TrafficPartition.load_record(value)
            async for _key, value in self._entries(
                self._kv, self.settings.charts_bucket, traffic_key(partition) + ".*"
            )
        ]
        configs = traffic_configs(self.settings)
        traffic = self.traffic[partition] = TrafficPartition(
            configs.__getitem__,
            grace_s=self.settings.traffic_grace_s,
            window_s=self.settings.traffic_window_s,
            head=head,
            records=records,
        )
        # The recent minutes the dashboard shows are only in the charts' records: carry them on.
        for key in sorted({key for record in records for key in record.charts}):
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                continue
            try:
                stored = decode_record(entry.value or b"")
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("unreadable traffic chart record", key=key, error=str(exc))
                continue
            if stored.traffic is not None:
                traffic.seed(key, stored.traffic.recent)
        self._caught_up[partition] = False

    async def handle(
        self, partition: int, batch: Sequence[Delivery[TelemetryEvent]]
    ) -> Mapping[int, str] | None:
        """Chart one batch of a partition; returns only when its violations are published."""
        async with self._lock:
            started = time.perf_counter()  # charting, not waiting for another partition's batch
            try:
                lease = self._leases[partition]
                lease.check()
                if self._pending and batch:
                    await self.adopt_overrides(partition, min(d.stream_seq for d in batch))
                if self.failed is not None:  # nothing more is charted once the service stops
                    raise RuntimeError("the service is stopping") from self.failed
                last = self._last_seq.get(partition, 0)
                violations: list[ViolationEvent] = []
                traffic = self.traffic.get(partition)
                minutes: list[TrafficMinuteEvent] = []
                on_telemetry = self.engine.on_telemetry
                # No coroutine per event while the probe's charts are in memory.
                on_loaded = self.engine.on_telemetry_loaded
                for d in batch:
                    seq = d.stream_seq
                    if seq > last:
                        last = seq
                    ev = d.event
                    if traffic is not None:
                        if ev.source == "traffic":
                            closed, found = traffic.on_request(ev, stored_at(d), seq)
                            minutes += closed
                            violations += found
                            if not self.settings.traffic_per_request:
                                continue  # requests are not like for like: only their minutes are charted
                        elif traffic.aggregator.state.groups:
                            # A probe only moves the traffic clock: with no traffic groups
                            # (``observe`` does nothing then) its store time is never read.
                            closed, found = traffic.observe(stored_at(d), seq)
                            minutes += closed
                            violations += found
                    charted = on_loaded(ev, seq)
                    if charted is None:
                        charted = await on_telemetry(ev, seq)
                    if charted:
                        violations += charted
                if batch:
                    self._caught_up[partition] = _pending(batch[-1]) == 0
                # The closed minutes, then the batch's violations, in order; the batch is acked
                # (AckAll) after both.
                await self.publish_minutes(minutes)
                await self.publish(violations)
                self._last_seq[partition] = last
                self._charted_since_state += len(batch)
                if time.monotonic() - self._last_snapshot >= self.settings.snapshot_interval_s:
                    await self.snapshot(state=self.state_due)
                lease.check()  # the acks follow: only while nobody else can hold the partition
            except Exception as exc:
                self._stop_on(exc)
                raise
        self.metrics.telemetry_of(partition).inc(len(batch))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return None

    async def serve_partition(self, partition: int, overrides_kv: KeyValue, stop: asyncio.Event) -> None:
        """Take a partition's lease, consume it from its checkpoint until ``stop``, then hand it
        over (unless the whole service is stopping: :meth:`run` then releases every lease)."""
        lease = PartitionLease(self._kv, lease_key(partition), self.holder, self.settings.lease_ttl_s)
        if not await lease.acquire(stop):
            return
        durable = partition_durable(partition)
        start = 0
        # Renewed from now on, not once the lock is free: the setup of a partition taken while the
        # others are charted may wait for the lock a while. Released at a hand-over, or with the
        # others at stop.
        self._leases[partition] = lease
        async with self._lock:
            if not stop.is_set():
                # Partitions queue here for the lock; with NATS away each setup below takes a
                # request timeout or more, and a stop must not wait for all of them in turn.
                self.held.add(partition)
                await self.load_settings({partition})
                await self._read_overrides(overrides_kv, {partition})
                start = await self.checkpoint(partition) + 1
                self._checkpointed[partition] = start - 1
                await self.load_traffic(partition)
                with contextlib.suppress(NotFoundError):
                    await self._js.delete_consumer(subjects.STREAM_TELEMETRY, durable)
        if not stop.is_set():
            consumer = _ResumingConsumer(
                start_seq=start,
                lease=lease,
                js=self._js,
                stream=subjects.STREAM_TELEMETRY,
                durable=durable,
                filter_subjects=[subjects.telemetry_partition_filter(partition)],
                decode=lambda data: codec.decode_as(data, TelemetryEvent),
                handler=functools.partial(self.handle, partition),
                dead_letters=DeadLetters(self._publisher, "spc-engine"),
                # One AckAll per batch: this replica is the partition's only reader (its lease),
                # and the consumer is recreated from the checkpoint whenever the partition is taken.
                # So one pull request may stay open (filled as telemetry arrives, idle it costs a
                # request per PULL_EXPIRES_S): not a few requests per probe event at a trickle.
                options=ConsumerOptions(
                    batch_size=self.settings.batch_size,
                    ack_all=True,
                    ack_all_every=ACK_EVERY_S,
                    max_ack_pending=MAX_ACK_PENDING,
                    standing=True,
                    gather=self.settings.gather_ms / 1000,
                    gather_phase=gather_phase(partition, self.settings.partitions),
                    gather_spread_from=GATHER_SPREAD_FROM,
                    fetch_timeout=PULL_EXPIRES_S,
                    # No state file rewritten by nats-server per delivery and AckAll (the
                    # consumer is recreated from the checkpoint whenever the partition is taken):
                    # measured, most of nats-server's CPU per probe event at 100/s beyond what
                    # a bare consumer of the same feed costs it.
                    mem_storage=True,
                ),
                metrics=self.metrics.consumers,
            )
            log.info("resuming partition", holder=self.holder, partition=partition, from_seq=start)
            await consumer.run(stop)
        if not self._closing.is_set():
            await self.hand_over(partition)

    async def hand_over(self, partition: int) -> None:
        """Give up a partition whose consumer stopped: snapshot, forget it, release its lease, so
        the replica that wants it takes it at once and resumes exactly where this one stopped."""
        async with self._lock:
            if self.failed is not None:
                return  # the service stops: its leases are released then, its checkpoints replayed
            try:
                await self.snapshot()
            except Exception as exc:
                self._stop_on(exc)
                return
            self.held.discard(partition)
            gone = [
                key
                for key, entry in self.engine.charts.items()
                if self.partition_of(entry.meta.provider, entry.meta.model) == partition
            ]
            for key in gone:
                # Reloaded from its snapshot if the partition comes back: the next owner
                # changes it meanwhile.
                del self.engine.charts[key]
            if self._store is not None:
                self._store.forget(gone)
                self._store.forget_series(lambda p, m: self.partition_of(p, m) == partition)
            for pm in [pm for pm in self._pending if self.partition_of(*pm) == partition]:
                del self._pending[pm]
            for per_partition in (self.traffic, self._caught_up, self._last_seq, self._checkpointed):
                per_partition.pop(partition, None)
            lease = self._leases.pop(partition, None)
        if lease is not None:
            await lease.release()
            log.info("partition handed over", holder=self.holder, partition=partition)

    async def _serve(self, partition: int, overrides_kv: KeyValue, stop: asyncio.Event) -> None:
        try:
            await self.serve_partition(partition, overrides_kv, stop)
        except Exception as exc:
            self._stop_on(exc)

    def assign(self, members: Sequence[str], overrides_kv: KeyValue) -> None:
        """Want the partitions of this replica's rank among ``members``: start taking the new
        ones, hand over the others (their consumers stop after the batch in hand)."""
        members = sorted(set(members) | {self.holder})
        wanted = set(owned_partitions(self.settings.partitions, len(members), members.index(self.holder)))
        if members != self.members or wanted != self.partitions:
            log.info(
                "partitions assigned",
                holder=self.holder,
                members=",".join(members),
                partitions=",".join(map(str, sorted(wanted))) or "none",
            )
        self.members, self.partitions = members, wanted
        for partition, (task, _) in list(self._parts.items()):
            if task.done():
                del self._parts[partition]
        for partition in sorted(wanted - self._parts.keys()):
            stop = asyncio.Event()
            task = asyncio.create_task(self._serve(partition, overrides_kv, stop))
            self._parts[partition] = (task, stop)
        for partition, (_, stop) in self._parts.items():
            if partition not in wanted and not stop.is_set():
                stop.set()

    async def _lease_entry(self, partition: int) -> KeyValue.Entry | None:
        try:
            return await self._kv.get(lease_key(partition))
        except KeyNotFoundError:
            return None

    async def watch_ownership(self, stop: asyncio.Event, every: float) -> None:
        """Read every partition's lease each ``every`` s; say loudly when one has no owner."""
        while not stop.is_set():
            try:
                # All at once (one write, the answers together): one get after another woke
                # nats-server a dozen times each, P times a round.
                entries = await asyncio.gather(
                    *(self._lease_entry(partition) for partition in range(self.settings.partitions))
                )
                for partition, entry in enumerate(entries):
                    if entry is None:  # never taken, or released
                        self.ownership.observe(partition, None, 0)
                    else:
                        holder = (entry.value or b"").decode()
                        self.ownership.observe(partition, holder, entry.revision or 0)
            except Exception as exc:
                log.debug("partition leases not read", error=repr(exc))
                self.ownership.forget()
            else:
                reported, unowned = self.ownership.reported, self.ownership.unowned()
                self.ownership.reported = unowned
                for partition in sorted(unowned.keys() - reported.keys()):
                    last = self.ownership.holders.get(partition)
                    log.error(
                        "partition has no owner: its telemetry is not charted",
                        partition=partition,
                        lease=f"{last}, not renewed" if last else "free",
                        for_s=round(unowned[partition]),
                        hint="is any replica running? see its 'partitions assigned' log",
                    )
                for partition in sorted(reported.keys() - unowned.keys()):
                    log.info(
                        "partition has an owner again",
                        partition=partition,
                        holder=self.ownership.holders.get(partition, ""),
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
