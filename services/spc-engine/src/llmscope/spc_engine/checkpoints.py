"""Exact recovery: chart state, public records and each partition's checkpoint.

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
