"""The SPC engine on the bus: consume telemetry, publish violations, snapshot charts.

Ack after publish: the lead's :class:`~llmscope.bus.consumer.DurableConsumer` acks a batch only
after the handler returns, and the handler returns only after JetStream acknowledged every
violation it published (``Publisher`` awaits the PubAck, ``Nats-Msg-Id`` = violation id).

Exact recovery: every ``snapshot_interval_s`` the changed charts are written to the KV bucket
(each with the last stream sequence it applied), then the replica's checkpoint key
``_checkpoint.<replica>-of-<replicas>`` with the sequence every chart has covered. At start the
durable consumer is recreated to deliver from checkpoint + 1; charts load lazily from the KV
bucket and skip sequences they already applied. Replayed points recompute the same violations
with the same ids, and JetStream's duplicate window drops them (the API persister also stores
by id). A publish that fails after the publisher's retries stops the service (exit 1): its
supervisor restarts it and the replay from the checkpoint publishes what was missed.

Scale-out: replica i of N owns the charts of models with ``sha256(provider/model) % N == i``;
each replica has its own durable consumer and checkpoint, sees the whole telemetry stream and
skips what it does not own. Changing N gives new consumer names with no checkpoint: they
replay the stream from its start, and charts skip what their snapshots already cover, so no
chart is lost and none is processed twice.

Per-model settings (:mod:`llmscope.proto.chartconfig`): the service watches the overrides bucket
``llmscope_spc_config``. A change it sees for a model it owns is adopted before the next batch
of telemetry is charted, from that batch's first stream sequence on: the model's settings log
(``_settings.<provider>.<model>`` in the chart bucket) is written, and acknowledged by
JetStream, before the batch is charted, and loaded at start, so a replay after a crash applies
the change at the same point. Changes older than the checkpoint are pruned from the log, except
the one still in force. At start the service also writes its defaults (``_defaults``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from llmscope.bus.connection import connect
from llmscope.bus.consumer import ConsumerOptions, Delivery, DurableConsumer
from llmscope.bus.deadletter import DeadLetters
from llmscope.bus.kv import open_bucket, watch_bucket
from llmscope.bus.publisher import Publisher
from llmscope.bus.streams import ensure_streams
from llmscope.config.logs import get_logger
from llmscope.proto import codec, subjects
from llmscope.proto.chartconfig import (
    DEFAULTS_KEY,
    METRIC_NAMES,
    ChartSettings,
    ModelOverrides,
    SpcDefaults,
    decode_overrides,
)
from llmscope.proto.charts import AVAILABILITY, RebaselineReply, RebaselineRequest, parse_chart_key
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine.config import ChartConfig, default_config, to_settings
from llmscope.spc_engine.engine import Engine, SettingsLog, Snapshot, decode_snapshot
from llmscope.spc_engine.settings import SpcSettings

log = get_logger("llmscope.spc_engine")


def owner(provider: str, model: str, replicas: int) -> int:
    """The replica that owns a model's charts."""
    digest = hashlib.sha256(f"{provider}/{model}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % replicas


def config_for(settings: SpcSettings, metric: str) -> ChartConfig:
    base = default_config(metric)
    transform = settings.tokens_transform if metric == "tokens_per_s" else base.transform
    return msgspec.structs.replace(
        base,
        baseline_n=settings.baseline_n,
        sigma_estimator=settings.sigma_estimator,
        transform=transform,
        clear_after=settings.clear_after,
    )


SETTINGS_PREFIX = "_settings."


def settings_key(provider: str, model: str) -> str:
    """Chart-bucket key of a model's settings log."""
    return SETTINGS_PREFIX + subjects.kv_key(provider, model)


class _ResumingConsumer(DurableConsumer[TelemetryEvent]):
    """The shared durable consumer, recreated to start right after the checkpoint."""

    def __init__(self, *, start_seq: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._start_seq = start_seq

    def consumer_config(self) -> ConsumerConfig:
        cfg = super().consumer_config()
        cfg.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        cfg.opt_start_seq = self._start_seq
        return cfg


class SpcService:
    """Wires the pure :class:`Engine` to JetStream (consumer, publisher, KV snapshots)."""

    def __init__(self, settings: SpcSettings, nc: NATS, js: JetStreamContext, kv: KeyValue) -> None:
        self.settings = settings
        self._nc = nc
        self._js = js
        self._kv = kv
        self._publisher = Publisher(js)
        self._name = f"{settings.replica}-of-{settings.replicas}"
        self._checkpoint_key = f"_checkpoint.{self._name}"
        self.engine = Engine(
            config_for=lambda metric: config_for(settings, metric),
            load=self._load,
            owns=lambda p, m: owner(p, m, settings.replicas) == settings.replica,
        )
        self._last_seq = 0
        self._last_snapshot = time.monotonic()
        self._lock = asyncio.Lock()
        self.failed: BaseException | None = None
        self._halt = asyncio.Event()
        self.published = 0
        self._checkpointed = 0
        # Overrides seen in the bucket and not yet adopted, by (provider, model).
        self._pending: dict[tuple[str, str], ModelOverrides | None] = {}

    @property
    def pending_overrides(self) -> frozenset[tuple[str, str]]:
        """Models whose overrides changed and apply from the next batch."""
        return frozenset(self._pending)

    def on_overrides(self, key: str, value: bytes | None) -> None:
        """One update of the overrides bucket (a ValueError for a bad one is logged and skipped)."""
        provider, model = subjects.parse_kv_key(key, 2)
        if self.engine.owns(provider, model):
            self._pending[(provider, model)] = None if value is None else decode_overrides(value)

    async def adopt_overrides(self, from_seq: int) -> None:
        """Make the pending overrides apply from ``from_seq``, durably, before charting it."""
        pending, self._pending = self._pending, {}
        for (provider, model), overrides in pending.items():
            if not self.engine.set_overrides(provider, model, overrides, from_seq):
                continue
            self.engine.prune_settings(provider, model, self._checkpointed)
            log_ = self.engine.settings_log(provider, model)
            await self._kv.put(settings_key(provider, model), msgspec.json.encode(log_))
            who = overrides.updated_by if overrides is not None else "(removed)"
            log.info("settings adopted", provider=provider, model=model, from_seq=from_seq, by=who)

    async def load_settings(self) -> None:
        """The settings logs of the models this replica owns, from the chart bucket."""
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return
        for key in keys:
            if not key.startswith(SETTINGS_PREFIX):
                continue
            entry = await self._kv.get(key)
            if entry.value is None:
                continue
            settings_log = msgspec.json.decode(entry.value, type=SettingsLog)
            if self.engine.owns(settings_log.provider, settings_log.model):
                self.engine.load_settings_log(settings_log)

    async def write_defaults(self) -> None:
        metrics: dict[str, ChartSettings] = {
            m: to_settings(config_for(self.settings, m)) for m in METRIC_NAMES
        }
        defaults = SpcDefaults(metrics=metrics, updated_at=datetime.now(UTC))
        await self._kv.put(DEFAULTS_KEY, msgspec.json.encode(defaults))

    async def _load(self, key: str) -> Snapshot | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        return None if entry.value is None else decode_snapshot(key, entry.value)

    async def _read_overrides(self, kv: KeyValue) -> None:
        # The current overrides, before the first batch: charts start with them.
        try:
            keys = await kv.keys()
        except NoKeysError:
            return
        for key in keys:
            with contextlib.suppress(KeyNotFoundError):
                entry = await kv.get(key)
                try:
                    self.on_overrides(key, entry.value)
                except ValueError as exc:
                    log.warning("ignored malformed overrides", key=key, error=str(exc))

    async def checkpoint(self) -> int:
        try:
            entry = await self._kv.get(self._checkpoint_key)
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

    async def publish(self, events: Sequence[ViolationEvent]) -> None:
        for v in events:
            await self._publisher.publish(subjects.violations(v.provider, v.model, v.rule), v)
            self.published += 1

    async def handle(self, batch: Sequence[Delivery[TelemetryEvent]]) -> Mapping[int, str] | None:
        async with self._lock:
            try:
                if self._pending and batch:
                    await self.adopt_overrides(min(d.stream_seq for d in batch))
                for d in batch:
                    await self.publish(await self.engine.on_telemetry(d.event, d.stream_seq))
                    self._last_seq = max(self._last_seq, d.stream_seq)
                if time.monotonic() - self._last_snapshot >= self.settings.snapshot_interval_s:
                    await self.snapshot()
            except Exception as exc:
                # Chart state has moved past what was published: only a replay from the
                # checkpoint can make it whole again, so stop and let the supervisor restart.
                self.failed = exc
                self._halt.set()
                raise
        return None

    async def snapshot(self) -> None:
        now = datetime.now(UTC)
        for key in self.engine.take_dirty():
            await self._kv.put(key, msgspec.json.encode(self.engine.snapshot(key, now)))
        if self._last_seq:
            await self._kv.put(self._checkpoint_key, str(self._last_seq).encode())
            self._checkpointed = self._last_seq
        self._last_snapshot = time.monotonic()

    async def on_rebaseline(self, msg: Msg) -> None:
        try:
            req = msgspec.json.decode(msg.data, type=RebaselineRequest)
            provider, model, _target, _prompt, metric = parse_chart_key(req.chart_key)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            if self.settings.replica == 0:  # one answer for a bad request
                await msg.respond(msgspec.json.encode(RebaselineReply(ok=False, error=str(exc))))
            return
        if not self.engine.owns(provider, model):
            return
        async with self._lock:
            events = None
            if metric != AVAILABILITY and await self.engine.ensure_loaded(req.chart_key):
                events = self.engine.rebaseline(req.chart_key, req.by, req.reason, datetime.now(UTC))
            if events is None:
                reply = RebaselineReply(ok=False, chart_key=req.chart_key, error="no such metric chart")
            else:
                await self.publish(events)
                await self.snapshot()
                reply = RebaselineReply(
                    ok=True, chart_key=req.chart_key, replica=self.settings.replica, cleared=len(events)
                )
        log.info("re-baseline", chart=req.chart_key, by=req.by, reason=req.reason, ok=reply.ok)
        await msg.respond(msgspec.json.encode(reply))

    async def run(self, stop: asyncio.Event) -> None:
        durable = f"spc-engine-{self._name}"
        start = await self.checkpoint() + 1
        self._checkpointed = start - 1
        await self.load_settings()
        await self.write_defaults()
        overrides_kv = await open_bucket(
            self._js,
            subjects.SPC_CONFIG_BUCKET,
            description="LLMscope per-model SPC chart settings (overrides)",
            replicas=self.settings.bus.replicas,
        )
        await self._read_overrides(overrides_kv)
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(subjects.STREAM_TELEMETRY, durable)
        consumer = _ResumingConsumer(
            start_seq=start,
            js=self._js,
            stream=subjects.STREAM_TELEMETRY,
            durable=durable,
            filter_subjects=[subjects.TELEMETRY_ALL],
            decode=lambda data: codec.decode_as(data, TelemetryEvent),
            handler=self.handle,
            dead_letters=DeadLetters(self._publisher, "spc-engine"),
            options=ConsumerOptions(batch_size=self.settings.batch_size),
        )
        sub = await self._nc.subscribe(subjects.spc_rebaseline(), cb=self.on_rebaseline)
        log.info("resuming", replica=self._name, from_seq=start)
        inner_stop = asyncio.Event()

        async def relay() -> None:
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._halt.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
                inner_stop.set()

        relay_task = asyncio.create_task(relay())

        async def tick() -> None:
            # An idle stream still gets its last points snapshotted.
            while True:
                await asyncio.sleep(max(self.settings.snapshot_interval_s, 0.05))
                async with self._lock:
                    if (
                        self.failed is None
                        and time.monotonic() - self._last_snapshot >= self.settings.snapshot_interval_s
                    ):
                        await self.snapshot()

        tick_task = asyncio.create_task(tick())
        watch_task = asyncio.create_task(watch_bucket(overrides_kv, self.on_overrides, inner_stop))
        try:
            await consumer.run(inner_stop)
        finally:
            relay_task.cancel()
            tick_task.cancel()
            inner_stop.set()
            with contextlib.suppress(Exception):
                await watch_task
            await sub.unsubscribe()
            if self.failed is None:
                async with self._lock:
                    await self.snapshot()


async def serve(settings: SpcSettings, stop: asyncio.Event) -> int:
    """Run until ``stop``; 0 on a clean stop, 1 when a publish failure ended the run."""
    nc = await connect(settings.bus.nats_url, f"llmscope-spc-engine-{settings.replica}")
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings.bus)
        kv = await open_bucket(
            js,
            settings.charts_bucket,
            description="LLMscope SPC chart snapshots (config, state, limits)",
            replicas=settings.bus.replicas,
        )
        service = SpcService(settings, nc, js, kv)
        await service.run(stop)
        return 1 if service.failed is not None else 0
    finally:
        await nc.drain()
