"""Partition ownership and leases: who may chart a partition, and when it moves."""

from __future__ import annotations

import asyncio

import pytest
from nats.js import JetStreamContext

from llmscope.bus.kv import open_bucket
from llmscope.config.env import ConfigError, Env
from llmscope.spc_engine.service import LeaseLostError, PartitionLease, owned_partitions
from llmscope.spc_engine.settings import SpcSettings


def test_replicas_own_disjoint_partitions_that_cover_all() -> None:
    for replicas in (1, 2, 3, 5, 16):
        owned = [set(owned_partitions(16, replicas, i)) for i in range(replicas)]
        assert set().union(*owned) == set(range(16))
        assert sum(len(o) for o in owned) == 16


def test_settings_read_partitions_and_refuse_more_replicas_than_partitions() -> None:
    env = {"LLMSCOPE_SPC_PARTITIONS": "8", "LLMSCOPE_SPC_REPLICAS": "3", "LLMSCOPE_SPC_REPLICA": "2"}
    s = SpcSettings.from_env(Env(env))
    assert (s.partitions, s.replicas, s.replica, s.lease_ttl_s) == (8, 3, 2, 10.0)
    with pytest.raises(ConfigError):
        SpcSettings.from_env(Env({"LLMSCOPE_SPC_PARTITIONS": "2", "LLMSCOPE_SPC_REPLICAS": "3"}))


async def test_a_lease_is_exclusive_taken_over_only_after_its_holder_stops_renewing(
    js: JetStreamContext,
) -> None:
    kv = await open_bucket(js, "test_leases", description="test")
    stop = asyncio.Event()
    # A TTL well above a loaded event loop's stalls: renewing every 0.2 s keeps it however slow
    # a KV update is, up to 1.1 s (check() trusts a lease for 0.75 of the TTL).
    old = PartitionLease(kv, "_lease.p0", "0-of-2@a", ttl=1.5)
    assert await old.acquire(stop)
    new = PartitionLease(kv, "_lease.p0", "0-of-3@b", ttl=1.5)
    waiting = asyncio.create_task(new.acquire(stop))
    for _ in range(10):  # the holder renews for longer than the TTL: the lease never expires
        await asyncio.sleep(0.2)
        await old.renew()
        old.check()
        assert not waiting.done()
    assert await asyncio.wait_for(waiting, 5)  # renewals stopped: taken over after the ttl
    with pytest.raises(LeaseLostError):
        old.check()  # it stopped trusting the lease before the new holder could take it
    with pytest.raises(LeaseLostError):
        await old.renew()
    new.check()
    # The same replica restarted (same identity) takes its lease back at once; a release frees it.
    again = PartitionLease(kv, "_lease.p0", "0-of-3@b", ttl=60)
    assert await asyncio.wait_for(again.acquire(stop), 10)
    await again.release()
    other = PartitionLease(kv, "_lease.p0", "1-of-3@c", ttl=60)
    assert await asyncio.wait_for(other.acquire(stop), 10)
    # A stop ends a wait.
    stop.set()
    assert not await PartitionLease(kv, "_lease.p0", "2-of-3@d", ttl=60).acquire(stop)
