"""Exact recovery: chart state, public records and each partition's checkpoint.

Exact recovery: from time to time (:attr:`Checkpoints.state_due`) the state of the charts that
took points is written to the state bucket (each chart with the last stream sequence it applied),
then the public records whose view changed to the chart bucket, then each partition's checkpoint
with the last sequence of that partition every chart has covered
(:mod:`llmscope.spc_engine.store`); every ``snapshot_interval_s`` in between, only the public
records whose view changed and the traffic charts (their aggregator skips, on a replay, the
sequences its state covers). A re-baseline, a hand-over and a stop write everything at once. A
partition's consumer is recreated, when it is taken, to deliver from its checkpoint + 1; charts
load lazily from the state bucket (so the new owner of a partition continues its charts) and
skip sequences they already applied (so a takeover after a crash replays what came since the
last state write, 25-50 µs an event).

How often the state is written: once ``state_events`` (15,000) events were charted since the
last write, at most every ``state_interval_s`` (15 s) and at the latest every
``state_max_interval_s`` (120 s). What a write costs is a record per probe series that took a
point, whatever the rate (at a 2 s probe interval and one write per 15 s, 0.13 series records and
as many availability records per probe event, 1.8 KB, each a JetStream write); what it saves is
replay after a crash, which costs per event. So the events since the last write decide, and a
takeover replays at most about ``state_events`` events (0.4-0.8 s of CPU) at any rate up to
``state_events / state_interval_s`` (1,000/s) and ``state_interval_s`` of telemetry above it, as
before; at 100 events/s the state is written every 120 s instead of every 15 s (8x fewer
records), and a takeover replays up to 12,000 events instead of 1,500.

Acks do not wait for the checkpoint: a batch is acked once its violations are published, so
``max_ack_pending`` never fills between state writes. Replayed
points recompute the same violations with the same ids, and JetStream's duplicate window drops
them (the API persister also stores by id). A publish that fails after the publisher's retries
stops the service (exit 1): its supervisor restarts it and the replay from the checkpoint
publishes what was missed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from nats.js.errors import (
    KeyNotFoundError,
)

from llmscope.bus.kv import put_many
from llmscope.config.logs import get_logger
from llmscope.spc_engine.lease import LeaseLostError
from llmscope.spc_engine.service_core import ServiceCore

log = get_logger("llmscope.spc_engine")


def checkpoint_key(partition: int) -> str:
    return f"_checkpoint.p{partition}"


class Checkpoints(ServiceCore):
    """Snapshots of the charts and the partitions' checkpoints (see the module doc)."""

    async def checkpoint(self, partition: int) -> int:
        try:
            entry = await self._kv.get(checkpoint_key(partition))
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

    @property
    def state_due(self) -> bool:
        """Whether the next snapshot writes the charts' state: ``LLMSCOPE_SPC_STATE_INTERVAL_S``
        after the last write, once ``LLMSCOPE_SPC_STATE_EVENTS`` events were charted since, and
        ``LLMSCOPE_SPC_STATE_MAX_INTERVAL_S`` after it in any case (see the module doc)."""
        settings = self.settings
        elapsed = time.monotonic() - self._last_state
        if elapsed < settings.state_interval_s:
            return False
        return self._charted_since_state >= settings.state_events or elapsed >= settings.state_max_interval_s

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
        self._charted_since_state = 0

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
