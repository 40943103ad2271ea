"""The SPC engine on the bus: consume telemetry, publish violations, snapshot charts.

Ack after publish: the lead's :class:`~llmscope.bus.consumer.DurableConsumer` acks a batch only
after the handler returns, and the handler returns only after JetStream acknowledged every
violation it published (the batch's violations go pipelined, ``Publisher.publish_many``, and
every PubAck is awaited; ``Nats-Msg-Id`` = violation id). One ack per batch: AckAll on its
highest sequence (a partition has one reader, its lease holder), sent at most every
``ACK_EVERY_S`` (a trickle's one-event batches share one). Each partition keeps one pull request
open (``ConsumerOptions.standing``): no request per event at a trickle.

Partitions (scale-out): the telemetry stream stores every model's messages in one of
``LLMSCOPE_SPC_PARTITIONS`` (P) partitions, a hash of provider and model computed by nats-server
(:mod:`llmscope.bus.streams`). Each partition has its own durable consumer ``spc-engine-p<k>``,
filtered to that partition, and its own checkpoint ``_checkpoint.p<k>``, so a replica reads only
its share of the stream. P is fixed for the life of the stream; the number of replicas can change
at any time, and nothing tells a replica how many there are: they find each other.

Membership (who shares the partitions): every replica announces itself in the KV bucket
``llmscope_spc_members`` (key ``m.<hex of its identity>``, value its identity and a random
instance id) every ``ttl / 4`` or second; the bucket's max age (``LLMSCOPE_SPC_LEASE_TTL_S``, set by the
first replica that creates it) removes a replica that stopped announcing, and a replica that stops
cleanly deletes its key. Each round a replica reads the live members, sorts their identities, and
wants the partitions k with ``k % len(members) == its rank``: it starts taking the ones it wants
and hands over the ones it no longer wants (it stops that partition's consumer after the batch in
hand, snapshots, forgets the partition's charts and releases its lease), so the replica that wants
it next takes it at once. Replicas that briefly see different members may both want a partition
(the lease lets only one chart it) or neither (it is taken one round later). A second live
process announcing the same identity is refused (exit 1): it would share this one's leases.

One holder per partition: before consuming a partition a replica takes its lease (KV key
``_lease.p<k>``, written with compare-and-set on the revision, renewed every ``ttl / 4``). A
lease is free when deleted (released after a hand-over or on a clean stop), taken at once when
its holder has this replica's identity (``<LLMSCOPE_SPC_REPLICA>@<host>``: the same replica
restarted), and taken over when its revision has not changed for ``LLMSCOPE_SPC_LEASE_TTL_S``
(its holder died). A replica whose lease renewal fails, or that could not renew within
``0.75 ttl``, stops charting and acking before anybody else may take the partition, and exits 1.
So a partition moves only after its old owner stopped charting it (or its lease expired), and the
new owner resumes the partition from its checkpoint: never from the stream's start, never while
the old owner still charts it. Safety comes from the leases, liveness from the membership.

Exact recovery: every ``state_interval_s`` (15 s by default) the state of the charts that took
points is written to the state bucket (each chart with the last stream sequence it applied), then
the public records whose view changed to the chart bucket, then each partition's checkpoint with the last
sequence of that partition every chart has covered (:mod:`llmscope.spc_engine.store`); every
``snapshot_interval_s`` in between, only the public records whose view changed and the traffic
charts (their aggregator skips, on a replay, the sequences its state covers). A re-baseline,
a hand-over and a stop write everything at once. A
partition's consumer is recreated, when it is taken, to deliver from its checkpoint + 1; charts
load lazily from the state bucket (so the new owner of a partition continues its charts) and
skip sequences they already applied (so a takeover after a crash replays up to a state interval
of the partition's telemetry: 1,500 events at 100/s, 15,000 at 1,000/s, 25-50 µs each).
Acks do not wait for the checkpoint: a batch is acked once its violations are published, so
``max_ack_pending`` never fills between state writes. Replayed
points recompute the same violations with the same ids, and JetStream's duplicate window drops
them (the API persister also stores by id). A publish that fails after the publisher's retries
stops the service (exit 1): its supervisor restarts it and the replay from the checkpoint
publishes what was missed.

Migration from per-replica consumers (``spc-engine-<i>-of-<N>`` reading the whole stream, with
checkpoints ``_checkpoint.<i>-of-<N>``): stop every old replica first. At start the service
deletes those consumers and checkpoints; charts keep their snapshots and continue from them.
Telemetry stored before the stream was partitioned is not read again (it has no partition).

Per-model settings (:mod:`llmscope.proto.chartconfig`): the service watches the overrides bucket
``llmscope_spc_config``. A change it sees for a model of a partition it holds is adopted before
the partition's next batch of telemetry is charted, from that batch's first stream sequence on:
the model's settings log (``_settings.<provider>.<model>`` in the chart bucket) is written, and
acknowledged by JetStream, before the batch is charted, and loaded when the partition is taken,
so a replay after a crash or a move applies the change at the same point. Changes older than the
partition's checkpoint are pruned from the log, except the one still in force. At start the
service also writes its defaults (``_defaults``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionReconnectingError, NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, KeyValueConfig
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from llmscope.bus.connection import connect, subscriptions_in_place
from llmscope.bus.consumer import ConsumerOptions, Delivery, DurableConsumer
from llmscope.bus.deadletter import DeadLetters
from llmscope.bus.kv import bucket_keys, current_entries, open_bucket, put_many, watch_bucket
from llmscope.bus.layout import SETUP_COMMAND, bucket_configs, prepare
from llmscope.bus.metrics import sample_consumers
from llmscope.bus.publisher import Publisher
from llmscope.bus.streams import PartitionMismatchError, telemetry_partition
from llmscope.config.logs import get_logger
from llmscope.config.startup import Stopped
from llmscope.proto import codec, subjects
from llmscope.proto.chartconfig import (
    DEFAULTS_KEY,
    METRIC_NAMES,
    ChartSettings,
    ModelOverrides,
    SpcDefaults,
    decode_overrides,
)
from llmscope.proto.charts import (
    ModelRebaselineReply,
    ModelRebaselineRequest,
    RebaselinedChart,
    RebaselineReply,
    RebaselineRequest,
    decode_record,
    is_chart_key,
    is_traffic_chart,
    model_charts_filter,
    parse_chart_key,
)
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.traffic import TrafficMinuteEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine.config import ChartConfig, default_config, to_settings
from llmscope.spc_engine.engine import Engine, SettingsLog, Snapshot
from llmscope.spc_engine.metrics import EngineCollector, Ownership, SpcMetrics
from llmscope.spc_engine.settings import SpcSettings
from llmscope.spc_engine.store import ChartStore
from llmscope.spc_engine.subgroup import SubgroupConfig
from llmscope.spc_engine.traffic import TrafficPartition, default_configs, traffic_key

log = get_logger("llmscope.spc_engine")


def owned_partitions(partitions: int, replicas: int, replica: int) -> list[int]:
    """The partitions the member ranked ``replica`` among ``replicas`` live members wants."""
    return [k for k in range(partitions) if k % replicas == replica]


MEMBERS_BUCKET = subjects.SPC_MEMBERS_BUCKET
MEMBER_TTLS = 1.0
"""The members bucket's max age, in lease TTLs: a replica that stopped announcing itself is
dropped after this, so its partitions are wanted by others when its leases expire. No shorter
than a lease needs: a replica that could not announce itself for a TTL has given up its leases
(``PartitionLease.check``)."""


def member_key(holder: str) -> str:
    # Identities hold characters KV keys refuse ('@'); hex keeps every identity apart.
    return "m." + holder.encode().hex()


def partition_durable(partition: int) -> str:
    """Name of a partition's durable consumer on the telemetry stream."""
    return f"spc-engine-p{partition}"


def checkpoint_key(partition: int) -> str:
    return f"_checkpoint.p{partition}"


def lease_key(partition: int) -> str:
    return f"_lease.p{partition}"


_LEGACY_CONSUMER = re.compile(r"spc-engine-\d+-of-\d+")
_LEGACY_CHECKPOINT = re.compile(r"_checkpoint\.\d+-of-\d+")


def config_for(settings: SpcSettings, metric: str) -> ChartConfig:
    base = default_config(metric)
    transform = settings.tokens_transform if metric == "tokens_per_s" else base.transform
    return msgspec.structs.replace(
        base,
        baseline_n=settings.baseline_n,
        sigma_estimator=settings.sigma_estimator,
        transform=transform,
        clear_after=settings.clear_after,
        min_change=settings.min_change,
        min_spike_change=settings.min_spike_change,
    )


ACK_EVERY_S = 0.5
"""A partition's AckAll is sent at most this often: at a trickle each probe event is a batch of
its own, and one ack each cost a write and a server ack per event. Acks still follow the effect
(the batch's violations published); the consumer is recreated from the checkpoint whenever the
partition is taken, so an ack not sent before a crash changes nothing."""

PULL_EXPIRES_S = 5.0
"""A partition's open pull request expires after this (a request lost with the connection is
given up then, so a partition resumes at most this long after NATS comes back)."""

SETTINGS_PREFIX = "_settings."
CATCH_UP_SLACK_S = 2.0
"""A quiet partition's minutes close by the wall clock this long behind it: a message stored a
moment ago may not have been delivered yet."""
GC_YOUNGEST_THRESHOLD = 20_000
"""Allocations between two collections of the youngest generation (CPython's default: 700)."""


def tune_gc() -> None:
    """Collect the youngest generation every ``GC_YOUNGEST_THRESHOLD`` allocations, not every 700.

    A batch keeps its deliveries alive until its AckAll (nats-py's messages and their header
    dicts, the decoded events), so at the default threshold every collection walked them again,
    and every tenth of those the older generation too (the charts' states): measured with
    ``bench/spc_bench.py`` (b), ~3 µs of the service's ~37 µs of CPU per event on uvloop, ~0.1
    µs after (events are freed by reference counting, not by the collector). Process wide and
    idempotent, as the API's persister does (``persister.tune_gc``): the process that runs the
    engine sets it at start (:func:`serve`)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNGEST_THRESHOLD, older, oldest)


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


def settings_key(provider: str, model: str) -> str:
    """Chart-bucket key of a model's settings log."""
    return SETTINGS_PREFIX + subjects.kv_key(provider, model)


def nats_unavailable(exc: BaseException) -> bool:
    """NATS or JetStream cannot answer just now (disconnected, restarting, electing a leader)."""
    if isinstance(exc, (TimeoutError, NoRespondersError, ConnectionReconnectingError)):
        return True
    return isinstance(exc, APIError) and exc.code == 503


def _pending(d: Delivery[TelemetryEvent]) -> int:
    """Messages of the partition still to deliver after this one (-1: unknown)."""
    tokens = (d.msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[8])  # as nats-py's Metadata reads it, without building the rest of it
    try:
        return d.msg.metadata.num_pending
    except Exception:
        return -1


class LeaseLostError(RuntimeError):
    """This replica can no longer be sure it is the only holder of a partition."""


class PartitionLease:
    """Exclusive hold of one partition: a KV key written with compare-and-set (see module doc)."""

    def __init__(
        self,
        kv: KeyValue,
        key: str,
        holder: str,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kv = kv
        self.key = key
        self.holder = holder
        self.ttl = ttl
        self._clock = clock
        self._revision = 0
        self._renewed = float("-inf")
        self._lost = False
        # A renewal in flight when the lease is released (a hand-over) must neither fail the
        # release nor be taken for a lost lease.
        self._io = asyncio.Lock()
        self._released = False

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until the lease is ours (True), or until ``stop`` (False)."""
        seen: tuple[int, float] | None = None
        waiting_on = ""
        while not stop.is_set():
            try:
                entry = await self._kv.get(self.key)
            except KeyNotFoundError:  # never taken, or released (deleted)
                entry = None
            except Exception as exc:
                # An outage while waiting for a partition is waited out like the holder is.
                if not nats_unavailable(exc):
                    raise
                await self._pause(stop, f"NATS unavailable: {exc!r}")
                waiting_on = ""
                continue
            sent = self._clock()
            try:
                if entry is None or not entry.value:
                    revision = await self._kv.create(self.key, self.holder.encode())
                    return self._taken(revision, sent, "free")
                holder = entry.value.decode()
                revision = entry.revision or 0
                if seen is None or seen[0] != revision:
                    seen = (revision, sent)
                if holder == self.holder or sent - seen[1] >= self.ttl:
                    revision = await self._kv.update(self.key, self.holder.encode(), last=revision)
                    return self._taken(revision, sent, holder)
            except KeyWrongLastSequenceError:
                continue  # somebody else moved first: look again
            except Exception as exc:
                if not nats_unavailable(exc):
                    raise
                # Whether the write landed is unknown: the next read tells (a lease holding our
                # identity is taken at once).
                await self._pause(stop, f"NATS unavailable: {exc!r}")
                waiting_on = ""
                continue
            if waiting_on != holder:
                waiting_on = holder
                log.info("waiting for partition", lease=self.key, holder=holder, ttl_s=self.ttl)
            await self._pause(stop)
        return False

    async def _pause(self, stop: asyncio.Event, why: str = "") -> None:
        if why:
            log.warning("waiting for partition", lease=self.key, reason=why)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(self.ttl / 4, 1.0))

    def _taken(self, revision: int, sent: float, previous: str) -> bool:
        self._revision = revision
        self._renewed = sent
        self._lost = False
        self._released = False
        log.info("partition lease taken", lease=self.key, holder=self.holder, previous=previous)
        return True

    async def renew(self) -> None:
        async with self._io:
            if self._released:
                return
            sent = self._clock()
            try:
                self._revision = await self._kv.update(self.key, self.holder.encode(), last=self._revision)
            except (KeyWrongLastSequenceError, KeyNotFoundError) as exc:
                self._lost = True
                raise LeaseLostError(f"{self.key} was taken over") from exc
            self._renewed = sent

    def check(self) -> None:
        """Raise :class:`LeaseLostError` unless the lease is surely still ours."""
        if self._lost or self._clock() - self._renewed > 0.75 * self.ttl:
            self._lost = True
            raise LeaseLostError(f"{self.key} was not renewed in time")

    async def release(self) -> None:
        async with self._io:
            self._released = True
            if self._lost or not self._revision:
                return
            with contextlib.suppress(Exception):
                await self._kv.delete(self.key, last=self._revision)
            self._revision = 0


async def renew_leases(leases: Sequence[PartitionLease]) -> None:
    """Renew every lease at once, so a round takes one round trip however many partitions this
    replica holds: one after another, a NATS hiccup of a few seconds (each renewal waiting out its
    timeout in turn) left the last leases unrenewed past ``check()``'s bound, and the replica gave
    up partitions it still held. Raises :class:`LeaseLostError` when one was taken over; other
    failures are logged (``check()`` stops charting a partition whose lease stays unrenewed)."""
    results = await asyncio.gather(*(lease.renew() for lease in leases), return_exceptions=True)
    lost: LeaseLostError | None = None
    for lease, result in zip(leases, results, strict=True):
        if isinstance(result, LeaseLostError):
            lost = lost or result
        elif isinstance(result, BaseException):
            log.warning("lease renewal failed", lease=lease.key, error=repr(result))
    if lost is not None:
        raise lost


class Member(msgspec.Struct, frozen=True, kw_only=True):
    """A replica's announcement in the members bucket."""

    holder: str
    instance: str


def engine_buckets(settings: SpcSettings) -> list[KeyValueConfig]:
    """The buckets the engine writes, as ``llmscope.bus.layout`` declares them."""
    declared = bucket_configs(
        settings.bus,
        charts_bucket=settings.charts_bucket,
        state_bucket=settings.state_bucket,
        member_ttl_s=MEMBER_TTLS * settings.lease_ttl_s,
    )
    names = {
        settings.charts_bucket,
        settings.state_bucket,
        subjects.SPC_CONFIG_BUCKET,
        settings.members_bucket,
    }
    return [config for config in declared if config.bucket in names]


class MemberConflictError(RuntimeError):
    """Another live process announces itself with this replica's identity (it would share its leases)."""


def members_config(settings: SpcSettings) -> KeyValueConfig:
    """The members bucket as ``llmscope.bus.layout`` declares it (the setup step makes the same)."""
    declared = bucket_configs(settings.bus, member_ttl_s=MEMBER_TTLS * settings.lease_ttl_s)
    config = next(c for c in declared if c.bucket == subjects.SPC_MEMBERS_BUCKET)
    return dataclasses.replace(config, bucket=settings.members_bucket)


async def open_members(js: JetStreamContext, settings: SpcSettings) -> KeyValue:
    """The members bucket, created with a max age of ``MEMBER_TTLS`` lease TTLs if missing."""
    config = members_config(settings)
    for _ in range(3):
        try:
            return await js.key_value(settings.members_bucket)
        except BucketNotFoundError:
            pass
        with contextlib.suppress(BadRequestError):  # created by another replica meanwhile
            return await js.create_key_value(config)
    return await js.key_value(settings.members_bucket)


class MembersGoneError(RuntimeError):
    """The members bucket is gone and this replica's user may not make it again."""


async def recreate_members(js: JetStreamContext, settings: SpcSettings) -> bool:
    """Make the members bucket again if it is gone; whether it was gone.

    It is on disk, but an earlier version kept it in memory, where a nats-server restart dropped
    it; an operator may also delete it. Without this every replica's announcement failed until
    one restarted, and a replica started meanwhile could not be told apart from none. With
    ``LLMSCOPE_MANAGE_STREAMS=false`` the user may not create streams (``llmscope.proto.permissions``): raises
    :class:`MembersGoneError` (the setup step must run again; the partitions stay as they are)."""
    try:
        await js.stream_info(f"KV_{settings.members_bucket}")
        return False
    except NotFoundError:
        pass
    if not settings.bus.manage_streams:
        raise MembersGoneError(
            f"the members bucket {settings.members_bucket} is gone (nats-server restarted?) and this"
            f" user may not create it: run `{SETUP_COMMAND}` as the setup user"
        )
    with contextlib.suppress(BadRequestError):  # made by another replica meanwhile
        await js.create_key_value(members_config(settings))
    return True


class Membership:
    """This replica's key in the members bucket, and the live members (see the module doc)."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str, holder: str) -> None:
        self._js = js
        self._kv = kv
        self._bucket = bucket
        self.holder = holder
        self.key = member_key(holder)
        self.instance = uuid.uuid4().hex
        self._value = msgspec.json.encode(Member(holder=holder, instance=self.instance))
        self._revision = 0

    async def announce(self) -> None:
        """Put this replica's key; raise :class:`MemberConflictError` if another process took it."""
        if self._revision:
            try:
                self._revision = await self._kv.update(self.key, self._value, last=self._revision)
                return
            except KeyWrongLastSequenceError:
                other = await self._instance()
                if other is not None and other != self.instance:
                    raise MemberConflictError(
                        f"another live replica announces itself as {self.holder!r}: give every "
                        "replica on a host its own LLMSCOPE_SPC_REPLICA"
                    ) from None
        # The first announcement, or after the key expired (this replica stalled past the max
        # age) or an update whose answer was lost: an unconditional put (a crashed predecessor
        # with the same identity is replaced).
        self._revision = await self._kv.put(self.key, self._value)

    async def _instance(self) -> str | None:
        try:
            entry = await self._kv.get(self.key)
        except KeyNotFoundError:
            return None
        try:
            return msgspec.json.decode(entry.value or b"", type=Member).instance
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    async def live(self) -> list[str]:
        """The identities of the live members, sorted (this replica always among them)."""
        keys = await bucket_keys(self._js, self._bucket)

        async def holder(key: str) -> str | None:
            try:
                entry = await self._kv.get(key)
                return msgspec.json.decode(entry.value or b"", type=Member).holder
            except KeyNotFoundError:  # left, or expired, since listed
                return None
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("ignored a malformed member", key=key)
                return None

        found = await asyncio.gather(*(holder(k) for k in keys))
        return sorted({h for h in found if h} | {self.holder})

    async def leave(self) -> None:
        if self._revision:
            with contextlib.suppress(Exception):
                await self._kv.delete(self.key, last=self._revision)
            self._revision = 0


async def open_state_bucket(js: JetStreamContext, settings: SpcSettings) -> KeyValue:
    """The engine's private chart state (file storage, history 1): nobody else reads it."""
    return await open_bucket(
        js,
        settings.state_bucket,
        description="LLMscope SPC engine's private chart state (exact recovery; read by the engine only)",
        replicas=settings.bus.replicas,
    )


class _ResumingConsumer(DurableConsumer[TelemetryEvent]):
    """A partition's durable consumer, recreated to start right after its checkpoint."""

    def __init__(self, *, start_seq: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._start_seq = start_seq

    def consumer_config(self) -> ConsumerConfig:
        cfg = super().consumer_config()
        cfg.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        cfg.opt_start_seq = self._start_seq
        return cfg


class SpcService:
    """Wires the pure :class:`Engine` to JetStream (consumers, publisher, KV snapshots)."""

    def __init__(
        self,
        settings: SpcSettings,
        nc: NATS,
        js: JetStreamContext,
        kv: KeyValue,
        *,
        state: KeyValue | None = None,
        holder: str | None = None,
        metrics: SpcMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or SpcMetrics()
        self._nc = nc
        self._js = js
        self._kv = kv
        # The charts' public records go to ``kv``, their state to the state bucket (opened at
        # first use when not given): see :mod:`llmscope.spc_engine.store`.
        self._store = ChartStore(kv, state) if state is not None else None
        self._publisher = Publisher(js)
        self.holder = holder or f"{settings.replica}@{socket.gethostname()}"
        self.members: list[str] = []
        """The live members as of the last round, sorted (see the module doc)."""
        self.partitions: set[int] = set()
        """The partitions this replica wants (its rank among :attr:`members`)."""
        self.held: set[int] = set()
        """Partitions whose lease this replica holds (their charts are its to process)."""
        self._parts: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._closing = asyncio.Event()
        self._leases: dict[int, PartitionLease] = {}
        self.engine = Engine(
            config_for=lambda metric: config_for(settings, metric),
            load=self._load,
            owns=self._owns,
        )
        self._last_seq: dict[int, int] = {}
        self.traffic: dict[int, TrafficPartition] = {}
        """Per held partition: its traffic minutes and their charts (module ``traffic``)."""
        self._caught_up: dict[int, bool] = {}
        self._checkpointed: dict[int, int] = {}
        self._last_snapshot = time.monotonic()
        self._last_state = self._last_snapshot
        self._lock = asyncio.Lock()
        self.failed: BaseException | None = None
        self._halt = asyncio.Event()
        self.published = 0
        # Overrides seen in the bucket and not yet adopted, by (provider, model).
        self._pending: dict[tuple[str, str], ModelOverrides | None] = {}
        self._stop = asyncio.Event()
        self.ownership = Ownership(settings.lease_ttl_s)
        self.metrics.registry.register(
            EngineCollector(
                lambda: ((e.meta.metric, e.chart) for e in self.engine.charts.values()),
                lambda: self.held,
                self.ownership,
                members=lambda: len(self.members),
            )
        )

    def partition_of(self, provider: str, model: str) -> int:
        return telemetry_partition(provider, model, self.settings.partitions)

    def _owns(self, provider: str, model: str) -> bool:
        # partition_of without the extra call: the engine asks this for every probe.
        return telemetry_partition(provider, model, self.settings.partitions) in self.held

    @property
    def answers_for_all(self) -> bool:
        """Whether this replica answers requests no partition owner can (the lowest-ranked member)."""
        return bool(self.members) and self.members[0] == self.holder

    @property
    def pending_overrides(self) -> frozenset[tuple[str, str]]:
        """Models whose overrides changed and apply from their partition's next batch."""
        return frozenset(self._pending)

    def on_overrides(self, key: str, value: bytes | None) -> None:
        """One update of the overrides bucket (a ValueError for a bad one is logged and skipped)."""
        provider, model = subjects.parse_kv_key(key, 2)
        if self.engine.owns(provider, model):
            self._pending[(provider, model)] = None if value is None else decode_overrides(value)

    async def adopt_overrides(self, partition: int, from_seq: int) -> None:
        """Make a partition's pending overrides apply from ``from_seq``, durably, before charting it."""
        mine = [pm for pm in self._pending if self.partition_of(*pm) == partition]
        for provider, model in mine:
            overrides = self._pending.pop((provider, model))
            if not self.engine.set_overrides(provider, model, overrides, from_seq):
                continue
            self.engine.prune_settings(provider, model, self._checkpointed.get(partition, 0))
            log_ = self.engine.settings_log(provider, model)
            await self._kv.put(settings_key(provider, model), msgspec.json.encode(log_))
            who = overrides.updated_by if overrides is not None else "(removed)"
            log.info("settings adopted", provider=provider, model=model, from_seq=from_seq, by=who)

    def _entries(self, kv: KeyValue, bucket: str, keys: str) -> AsyncIterator[tuple[str, bytes]]:
        """The current (key, value) of the keys matching ``keys`` (a KV key filter)."""
        return current_entries(self._js, kv, bucket, keys)

    async def load_settings(self, partitions: Collection[int]) -> None:
        """The settings logs of the models of ``partitions``, from the chart bucket."""
        async for _key, value in self._entries(self._kv, self.settings.charts_bucket, SETTINGS_PREFIX + ">"):
            settings_log = msgspec.json.decode(value, type=SettingsLog)
            if self.partition_of(settings_log.provider, settings_log.model) in partitions:
                self.engine.load_settings_log(settings_log)

    async def write_defaults(self) -> None:
        metrics: dict[str, ChartSettings] = {
            m: to_settings(config_for(self.settings, m)) for m in METRIC_NAMES
        }
        defaults = SpcDefaults(metrics=metrics, updated_at=datetime.now(UTC))
        await self._kv.put(DEFAULTS_KEY, msgspec.json.encode(defaults))

    async def store(self) -> ChartStore:
        """Where charts are loaded from and written to (the state bucket opened at first use)."""
        if self._store is None:
            state = await open_state_bucket(self._js, self.settings)
            if self._store is None:  # not opened meanwhile by another task
                self._store = ChartStore(self._kv, state)
        return self._store

    async def _load(self, key: str) -> Snapshot | None:
        return await (await self.store()).load(key)

    async def _read_overrides(self, kv: KeyValue, partitions: Collection[int]) -> None:
        # The current overrides, before a partition's first batch: its charts start with them.
        async for key, value in self._entries(kv, subjects.SPC_CONFIG_BUCKET, ">"):
            try:
                provider, model = subjects.parse_kv_key(key, 2)
                if self.partition_of(provider, model) in partitions:
                    self.on_overrides(key, value)
            except ValueError as exc:
                log.warning("ignored malformed overrides", key=key, error=str(exc))

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

    async def checkpoint(self, partition: int) -> int:
        try:
            entry = await self._kv.get(checkpoint_key(partition))
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

    async def publish_minutes(self, minutes: Sequence[TrafficMinuteEvent]) -> None:
        if minutes:
            await self._publisher.publish_many(
                [(subjects.traffic_minute(m.provider, m.model), m) for m in minutes]
            )

    async def close_quiet_minutes(self) -> None:
        """Close the minutes of caught-up partitions by the wall clock, and publish them."""
        now = datetime.fromtimestamp(time.time() - CATCH_UP_SLACK_S, UTC)
        for partition, traffic in list(self.traffic.items()):
            if partition not in self.held or not self._caught_up.get(partition, False):
                continue
            self._leases[partition].check()
            minutes, violations = traffic.advance(now)
            await self.publish_minutes(minutes)
            await self.publish(violations)

    async def publish(self, events: Sequence[ViolationEvent]) -> None:
        """Publish pipelined and return when JetStream acknowledged every one."""
        if not events:
            return
        await self._publisher.publish_many(
            [(subjects.violations(v.provider, v.model, v.rule), v) for v in events]
        )
        self.published += len(events)
        for v in events:
            self.metrics.violations.labels(v.rule, v.severity, v.state).inc()

    def _stop_on(self, exc: BaseException) -> None:
        # Chart state has moved past what was published (or the partition may have a new owner):
        # only a replay from the checkpoint can make it whole again, so stop and let the
        # supervisor restart.
        if self.failed is None:
            self.failed = exc
            if self._stop.is_set():  # e.g. NATS away while asked to stop: the signal decides
                log.warning("stopping; a step failed on the way", error=repr(exc))
            else:
                log.error("stopping", error=repr(exc))
        self._halt.set()

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
                if time.monotonic() - self._last_snapshot >= self.settings.snapshot_interval_s:
                    await self.snapshot(state=self.state_due)
                lease.check()  # the acks follow: only while nobody else can hold the partition
            except Exception as exc:
                self._stop_on(exc)
                raise
        self.metrics.telemetry.labels(str(partition)).inc(len(batch))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return None

    @property
    def state_due(self) -> bool:
        """Whether the next snapshot writes the charts' state (``LLMSCOPE_SPC_STATE_INTERVAL_S``)."""
        return time.monotonic() - self._last_state >= self.settings.state_interval_s

    async def snapshot(self, *, state: bool = True) -> None:
        """Write the changed charts' public records (with ``state``, first the state of every
        chart that took a point since the last such write), the traffic charts, then, with
        ``state``, the checkpoint of every partition that moved. Without ``state`` the checkpoints
        stay where they are: a takeover replays from them, so the public records may run ahead of
        the state (see :mod:`llmscope.spc_engine.store`)."""
        for lease in self._leases.values():
            lease.check()
        now = datetime.now(UTC)
        store = await self.store()
        # The state of every chart that took a point and the public records that changed, each
        # pipelined, all stored before the checkpoints.
        await store.write(self.engine, self.engine.take_dirty(), now, state=state)
        for partition, traffic in self.traffic.items():
            if traffic.dirty and partition in self._leases:
                # The charts' records (what readers see), the subgroups, then the head (its
                # clock): all before any checkpoint below. Every snapshot, not every state
                # interval: readers see a closed minute at once, and a traffic state ahead of the
                # checkpoint is exact (the aggregator skips the sequences it covers on a replay).
                await put_many(self._kv, traffic.take_records(now))
                for key, value in traffic.take_dirty(partition):
                    await self._kv.put(key, value)
        if not state:
            self._last_snapshot = time.monotonic()
            return
        for partition, last in self._last_seq.items():
            if last > self._checkpointed.get(partition, 0):
                await self._kv.put(checkpoint_key(partition), str(last).encode())
                self._checkpointed[partition] = last
        self._last_snapshot = self._last_state = time.monotonic()

    async def on_rebaseline(self, msg: Msg) -> None:
        try:
            req = msgspec.json.decode(msg.data, type=RebaselineRequest)
            provider, model, _target, _prompt, _metric = parse_chart_key(req.chart_key)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            if self.answers_for_all:  # one answer for a bad request
                await msg.respond(msgspec.json.encode(RebaselineReply(ok=False, error=str(exc))))
            return
        if not self.engine.owns(provider, model):
            return
        async with self._lock:
            events = None
            if is_traffic_chart(req.chart_key):
                traffic = self.traffic.get(self.partition_of(provider, model))
                if traffic is not None:
                    events = traffic.rebaseline(req.chart_key, req.by, req.reason)
            elif await self.engine.ensure_loaded(req.chart_key):
                events = self.engine.rebaseline(req.chart_key, req.by, req.reason, datetime.now(UTC))
            if events is None:
                reply = RebaselineReply(ok=False, chart_key=req.chart_key, error="no such chart")
            else:
                try:
                    await self.publish(events)
                    await self.snapshot()
                except Exception as exc:
                    self._stop_on(exc)
                    raise
                reply = RebaselineReply(
                    ok=True, chart_key=req.chart_key, replica=self.settings.replica, cleared=len(events)
                )
        log.info("re-baseline", chart=req.chart_key, by=req.by, reason=req.reason, ok=reply.ok)
        await msg.respond(msgspec.json.encode(reply))

    async def on_rebaseline_model(self, msg: Msg) -> None:
        """Re-baseline every chart of a model (or of one target) at once: one request, one answer."""
        try:
            req = msgspec.json.decode(msg.data, type=ModelRebaselineRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            if self.answers_for_all:  # one answer for a bad request
                await msg.respond(msgspec.json.encode(ModelRebaselineReply(ok=False, error=str(exc))))
            return
        if not self.engine.owns(req.provider, req.model):
            return
        which = f"{req.provider}/{req.model}" + (f" on target {req.target!r}" if req.target else "")
        async with self._lock:
            try:
                # Charts that got their first points since the last snapshot are written now, so
                # the bucket lists every chart of the model, those in memory and those only stored.
                await self.snapshot()
            except Exception as exc:
                self._stop_on(exc)
                raise
            try:
                keys = await bucket_keys(
                    self._js,
                    self.settings.charts_bucket,
                    model_charts_filter(req.provider, req.model, req.target),
                )
            except Exception as exc:  # nothing changed yet: refuse, and let the caller try again
                reply = ModelRebaselineReply(ok=False, error=f"cannot list the charts: {exc!r}")
                await msg.respond(msgspec.json.encode(reply))
                return
            now = datetime.now(UTC)
            done: list[RebaselinedChart] = []
            events: list[ViolationEvent] = []
            traffic = self.traffic.get(self.partition_of(req.provider, req.model))
            for key in keys:
                if is_traffic_chart(key):
                    cleared = traffic.rebaseline(key, req.by, req.reason) if traffic is not None else None
                elif not is_chart_key(key) or not await self.engine.ensure_loaded(key):
                    continue  # a deleted key is still listed until the bucket compacts
                else:
                    cleared = self.engine.rebaseline(key, req.by, req.reason, now)
                if cleared is not None:
                    events += cleared
                    done.append(RebaselinedChart(chart_key=key, cleared=len(cleared)))
            if done:
                try:
                    await self.publish(events)
                    await self.snapshot()
                except Exception as exc:
                    self._stop_on(exc)
                    raise
                reply = ModelRebaselineReply(
                    ok=True,
                    provider=req.provider,
                    model=req.model,
                    target=req.target,
                    replica=self.settings.replica,
                    charts=tuple(done),
                    cleared=len(events),
                )
            else:
                reply = ModelRebaselineReply(
                    ok=False,
                    provider=req.provider,
                    model=req.model,
                    target=req.target,
                    error=f"no charts of {which}",
                )
        log.info(
            "re-baseline model", model=which, by=req.by, reason=req.reason, charts=len(done), ok=reply.ok
        )
        await msg.respond(msgspec.json.encode(reply))

    async def remove_legacy(self) -> None:
        """Delete the per-replica consumers and checkpoints of engines before partitions."""
        for info in await self._js.consumers_info(subjects.STREAM_TELEMETRY):
            name = info.name or ""
            if _LEGACY_CONSUMER.fullmatch(name):
                with contextlib.suppress(NotFoundError):
                    await self._js.delete_consumer(subjects.STREAM_TELEMETRY, name)
                log.info("deleted a pre-partition consumer", consumer=name)
        checkpoints = await bucket_keys(self._js, self.settings.charts_bucket, "_checkpoint.>")
        legacy = [k for k in checkpoints if _LEGACY_CHECKPOINT.fullmatch(k)]
        for key in legacy:
            await self._kv.delete(key)

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
                    standing=True,
                    fetch_timeout=PULL_EXPIRES_S,
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

    async def watch_ownership(self, stop: asyncio.Event, every: float) -> None:
        """Read every partition's lease each ``every`` s; say loudly when one has no owner."""
        while not stop.is_set():
            try:
                for partition in range(self.settings.partitions):
                    try:
                        entry = await self._kv.get(lease_key(partition))
                        holder = (entry.value or b"").decode()
                        self.ownership.observe(partition, holder, entry.revision or 0)
                    except KeyNotFoundError:  # never taken, or released
                        self.ownership.observe(partition, None, 0)
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

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        await self.write_defaults()
        await self.remove_legacy()
        overrides_kv = await open_bucket(
            self._js,
            subjects.SPC_CONFIG_BUCKET,
            description="LLMscope per-model SPC chart settings (overrides)",
            replicas=self.settings.bus.replicas,
        )
        members_kv = await open_members(self._js, self.settings)
        membership = Membership(self._js, members_kv, self.settings.members_bucket, self.holder)
        member_ttl = (await members_kv.status()).ttl or MEMBER_TTLS * self.settings.lease_ttl_s
        await membership.announce()
        self.members = await membership.live()  # who answers a malformed request, from the start
        sub = await self._nc.subscribe(subjects.spc_rebaseline(), cb=self.on_rebaseline)
        model_sub = await self._nc.subscribe(subjects.spc_rebaseline_model(), cb=self.on_rebaseline_model)
        await subscriptions_in_place(self._nc)  # a re-baseline request sent right after start must find us
        log.info("starting", holder=self.holder, partitions=self.settings.partitions)
        inner_stop = self._closing

        async def relay() -> None:
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._halt.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
                inner_stop.set()

        async def tick() -> None:
            # An idle stream still gets its last points snapshotted.
            while True:
                await asyncio.sleep(max(self.settings.snapshot_interval_s, 0.05))
                async with self._lock:
                    if (
                        self.failed is None
                        and time.monotonic() - self._last_snapshot >= self.settings.snapshot_interval_s
                    ):
                        try:
                            await self.close_quiet_minutes()
                            await self.snapshot(state=self.state_due)
                        except Exception as exc:
                            self._stop_on(exc)
                            return

        async def members() -> None:
            # Announced at least four times per max age, whatever TTL the bucket was made with,
            # and at least every second: a replica that joins or leaves is noticed that fast.
            every = min(self.settings.lease_ttl_s / 4, member_ttl / 4, 1.0)

            async def read() -> list[str]:
                try:
                    await membership.announce()
                    return await membership.live()
                except MemberConflictError:
                    raise
                except Exception:
                    # A restarted nats-server has no members bucket (memory storage): make it
                    # again and announce at once, not a round later.
                    if not await recreate_members(self._js, self.settings):
                        raise
                    log.warning("members bucket was gone (nats-server restarted?): made it again")
                    await membership.announce()
                    return await membership.live()

            gone_reported = False
            while not inner_stop.is_set():
                try:
                    live = await read()
                except MemberConflictError as exc:
                    self._stop_on(exc)
                    return
                except MembersGoneError as exc:
                    if not gone_reported:  # once per disappearance, not every second
                        log.error("members not read: the partitions stay as they are", error=str(exc))
                        gone_reported = True
                except Exception as exc:
                    log.warning("members not read: the partitions stay as they are", error=repr(exc))
                else:
                    gone_reported = False
                    if not inner_stop.is_set():
                        self.assign(live, overrides_kv)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(inner_stop.wait(), every)

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.settings.lease_ttl_s / 4)
                try:
                    await renew_leases(list(self._leases.values()))
                except LeaseLostError as exc:
                    self._stop_on(exc)
                    return

        # Leases are read, and lag sampled, a few times per TTL (at most every 10 s): an
        # unowned partition is reported two TTLs after its lease last changed.
        every = min(10.0, self.settings.lease_ttl_s)
        lag = sample_consumers(
            self.metrics.consumers,
            self._js,
            subjects.STREAM_TELEMETRY,
            lambda: [partition_durable(k) for k in self.held],
            inner_stop,
            every,
        )
        helpers = [
            asyncio.create_task(relay()),
            asyncio.create_task(tick()),
            asyncio.create_task(renew()),
            asyncio.create_task(self.watch_ownership(inner_stop, every)),
            asyncio.create_task(lag),
        ]
        watch_task = asyncio.create_task(watch_bucket(overrides_kv, self.on_overrides, inner_stop))
        assigning = asyncio.create_task(members())
        try:
            await inner_stop.wait()
        finally:
            inner_stop.set()  # first: the partitions stop without handing over one by one
            assigning.cancel()  # not awaited through a request timeout with NATS away
            await asyncio.wait([assigning])
            parts = [task for task, _ in self._parts.values()]
            for _, part_stop in self._parts.values():
                part_stop.set()
            await asyncio.gather(*parts, return_exceptions=True)
            for task in helpers:
                task.cancel()
            with contextlib.suppress(Exception):
                await watch_task
            await sub.unsubscribe()
            await model_sub.unsubscribe()
            if self._nc.is_connected:
                await membership.leave()  # the others want this replica's partitions at once
            async with self._lock:
                await self._final_snapshot()
                self.held.clear()
                if self._nc.is_connected:
                    # At once, not one request timeout after another when NATS is slow.
                    await asyncio.gather(*(lease.release() for lease in self._leases.values()))
                self._leases.clear()

    async def _final_snapshot(self) -> None:
        """The last snapshot before stopping, unless it cannot be written: then the next owner
        replays from the last checkpoint (charts skip what they applied), which is as exact."""
        if self.failed is not None:
            return
        if not self._nc.is_connected:
            log.warning("NATS unavailable at stop: no final snapshot; leases expire after their TTL")
            return
        try:
            await self.snapshot()
        except LeaseLostError:
            pass
        except Exception as exc:
            log.warning("final snapshot not written", error=repr(exc))


async def serve(
    settings: SpcSettings,
    stop: asyncio.Event,
    on_connected: Callable[[NATS], None] | None = None,
    metrics: SpcMetrics | None = None,
) -> int:
    """Run until ``stop``; 0 once ``stop`` is set (whatever failed while stopping, e.g. with NATS
    away), 1 when a publish failed, a lease was lost or another live replica has this one's
    identity before that, 2 when the telemetry stream has another number of partitions. A
    ``stop`` while NATS has not answered yet ends the wait at once (0). ``on_connected`` gets the
    connection once the streams and buckets are there (readiness follows it)."""
    tune_gc()
    try:
        nc = await connect(settings.bus.nats_url, f"llmscope-spc-engine-{settings.replica}", stop=stop)
    except Stopped:
        log.info("stopped before NATS answered")
        return 0
    try:
        js = nc.jetstream()
        try:
            await prepare(
                js, settings.bus, stop, buckets=engine_buckets(settings), partitions=settings.partitions
            )
        except PartitionMismatchError as exc:
            log.error("cannot start", error=str(exc))
            return 2
        except Stopped:
            log.info("stopped before the streams were set up")
            return 0
        kv = await open_bucket(
            js,
            settings.charts_bucket,
            description="LLMscope SPC charts as readers see them (phase, limits, baseline, view)",
            replicas=settings.bus.replicas,
        )
        state = await open_state_bucket(js, settings)
        service = SpcService(settings, nc, js, kv, state=state, metrics=metrics)
        if on_connected is not None:
            on_connected(nc)
        try:
            await service.run(stop)
        except Exception as exc:
            if not stop.is_set():
                raise
            if nats_unavailable(exc):
                log.warning("stopping with NATS unavailable", error=repr(exc))
            else:
                log.warning("stopping; a step failed on the way", exc_info=True)
        if stop.is_set():
            return 0  # asked to stop: whatever failed on the way, the next start replays it
        return 1 if service.failed is not None else 0
    finally:
        try:
            await nc.drain()
        except (ConnectionReconnectingError, TimeoutError):  # NATS away: nothing left to flush
            # The socket is gone already: asyncio says OSError, uvloop RuntimeError ("the handler
            # is closed") when nats-py flushes its pending bytes into the closed transport.
            with contextlib.suppress(OSError, RuntimeError):
                await nc.close()
