"""The SPC engine on the bus: consume telemetry, publish violations, snapshot charts.

Each concern has its module: :mod:`~llmscope.spc_engine.partition_consumer` (taking, charting and
handing over partitions; ack after publish), :mod:`~llmscope.spc_engine.membership` (who shares the
partitions), :mod:`~llmscope.spc_engine.lease` (one holder per partition),
:mod:`~llmscope.spc_engine.checkpoints` (exact recovery), :mod:`~llmscope.spc_engine.publishing`,
:mod:`~llmscope.spc_engine.settings_watch` (per-model settings) and
:mod:`~llmscope.spc_engine.rebaseline_requests`. This module starts them (:func:`serve`).

Migration from per-replica consumers (``spc-engine-<i>-of-<N>`` reading the whole stream, with
checkpoints ``_checkpoint.<i>-of-<N>``): stop every old replica first. At start the service
deletes those consumers and checkpoints; charts keep their snapshots and continue from them.
Telemetry stored before the stream was partitioned is not read again (it has no partition).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.errors import ConnectionReconnectingError
from nats.js.api import KeyValueConfig
from nats.js.errors import (
    NotFoundError,
)

from llmscope.bus.connection import connect, subscriptions_in_place
from llmscope.bus.kv import bucket_keys, open_bucket, watch_bucket
from llmscope.bus.layout import bucket_configs, prepare
from llmscope.bus.metrics import sample_consumers
from llmscope.bus.streams import PartitionMismatchError
from llmscope.config.logs import get_logger
from llmscope.config.startup import Stopped
from llmscope.proto import subjects
from llmscope.spc_engine.lease import LeaseLostError, nats_unavailable, renew_leases
from llmscope.spc_engine.membership import (
    MEMBER_ROUND_S,
    MEMBER_TTLS,
    MemberConflictError,
    MembersGoneError,
    Membership,
    open_members,
    recreate_members,
)
from llmscope.spc_engine.metrics import SpcMetrics
from llmscope.spc_engine.partition_consumer import PartitionConsumption, partition_durable
from llmscope.spc_engine.rebaseline_requests import RebaselineRequests
from llmscope.spc_engine.service_core import open_state_bucket
from llmscope.spc_engine.settings import SpcSettings

log = get_logger("llmscope.spc_engine")


_LEGACY_CONSUMER = re.compile(r"spc-engine-\d+-of-\d+")
_LEGACY_CHECKPOINT = re.compile(r"_checkpoint\.\d+-of-\d+")


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


class SpcService(PartitionConsumption, RebaselineRequests):
    """Wires the pure :class:`Engine` to JetStream (consumers, publisher, KV snapshots)."""

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

        # A round starts when this is set (a member joined or left: Membership.watch), or every
        # ``round_every`` s.
        changed = asyncio.Event()
        # Announced four times per max age, whatever TTL the bucket was made with, and at least
        # every MEMBER_ROUND_S (a members bucket that went is made again that soon); a replica
        # that joins or leaves cleanly is noticed at once by the watch, one whose key expired
        # (it died) at the next round, long before its leases' TTL lets anybody take its
        # partitions.
        round_every = min(self.settings.lease_ttl_s / 4, member_ttl / 4, MEMBER_ROUND_S)

        async def members() -> None:
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
                    await asyncio.wait_for(changed.wait(), round_every)
                changed.clear()

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
            asyncio.create_task(membership.watch(changed, lambda: self.members, round_every)),
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
