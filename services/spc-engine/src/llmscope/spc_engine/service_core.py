"""What every part of the SPC service shares: its connections, engine, leases and stop."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from llmscope.bus.kv import current_entries, open_bucket
from llmscope.bus.publisher import Publisher
from llmscope.bus.streams import telemetry_partition
from llmscope.config.logs import get_logger
from llmscope.proto.chartconfig import (
    ModelOverrides,
)
from llmscope.spc_engine.config import ChartConfig, default_config
from llmscope.spc_engine.engine import Engine, Snapshot
from llmscope.spc_engine.lease import PartitionLease
from llmscope.spc_engine.metrics import EngineCollector, Ownership, SpcMetrics
from llmscope.spc_engine.settings import SpcSettings
from llmscope.spc_engine.store import ChartStore
from llmscope.spc_engine.traffic import TrafficPartition

log = get_logger("llmscope.spc_engine")


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


async def open_state_bucket(js: JetStreamContext, settings: SpcSettings) -> KeyValue:
    """The engine's private chart state (file storage, history 1): nobody else reads it."""
    return await open_bucket(
        js,
        settings.state_bucket,
        description="LLMscope SPC engine's private chart state (exact recovery; read by the engine only)",
        replicas=settings.bus.replicas,
    )


class ServiceCore:
    """The SPC service's shared state; its concerns are the subclasses :class:`SpcService` combines."""

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
        self._charted_since_state = 0
        """Events charted since the chart state was last written (``Checkpoints.state_due``)."""
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

    def _entries(self, kv: KeyValue, bucket: str, keys: str) -> AsyncIterator[tuple[str, bytes]]:
        """The current (key, value) of the keys matching ``keys`` (a KV key filter)."""
        return current_entries(self._js, kv, bucket, keys)

    async def store(self) -> ChartStore:
        """Where charts are loaded from and written to (the state bucket opened at first use)."""
        if self._store is None:
            state = await open_state_bucket(self._js, self.settings)
            if self._store is None:  # not opened meanwhile by another task
                self._store = ChartStore(self._kv, state)
        return self._store

    async def _load(self, key: str) -> Snapshot | None:
        return await (await self.store()).load(key)

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
