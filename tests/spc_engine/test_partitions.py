"""Partition ownership and leases: who may chart a partition, and when it moves."""

from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import urlparse

import nats
import pytest
from nats.js import JetStreamContext

from llmscope.bus.kv import open_bucket
from llmscope.config.env import ConfigError, Env
from llmscope.spc_engine.lease import LeaseLostError, PartitionLease, renew_leases
from llmscope.spc_engine.membership import MemberConflictError, Membership, open_members, owned_partitions
from llmscope.spc_engine.partition_consumer import gather_phase
from llmscope.spc_engine.settings import SpcSettings
from tests.alerter.harness import eventually


def test_replicas_own_disjoint_partitions_that_cover_all() -> None:
    for replicas in (1, 2, 3, 5, 16):
        owned = [set(owned_partitions(16, replicas, i)) for i in range(replicas)]
        assert set().union(*owned) == set(range(16))
        assert sum(len(o) for o in owned) == 16


def test_settings_read_partitions_and_accept_the_old_replica_count() -> None:
    env = {"LLMSCOPE_SPC_PARTITIONS": "8", "LLMSCOPE_SPC_REPLICAS": "3", "LLMSCOPE_SPC_REPLICA": "2"}
    s = SpcSettings.from_env(Env(env))
    assert (s.partitions, s.replica, s.lease_ttl_s) == (8, 2, 10.0)
    # The replicas find each other: more than partitions is allowed (the extra ones wait).
    s = SpcSettings.from_env(Env({"LLMSCOPE_SPC_PARTITIONS": "2", "LLMSCOPE_SPC_REPLICAS": "3"}))
    assert s.partitions == 2
    with pytest.raises(ConfigError):
        SpcSettings.from_env(Env({"LLMSCOPE_SPC_REPLICA": "-1"}))


def test_settings_read_the_gather_period_and_refuse_a_bad_one_by_name() -> None:
    assert SpcSettings.from_env(Env({})).gather_ms == 500
    assert SpcSettings.from_env(Env({"LLMSCOPE_SPC_GATHER_MS": "0"})).gather_ms == 0
    for bad in ("-1", "5001", "soon"):
        with pytest.raises(ConfigError, match="LLMSCOPE_SPC_GATHER_MS"):
            SpcSettings.from_env(Env({"LLMSCOPE_SPC_GATHER_MS": bad}))


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


class SlowLink:
    """A TCP relay to nats-server that holds every chunk ``delay`` seconds each way: a real
    connection over a slow link (a congested network, a server catching up after a stall)."""

    def __init__(self, target: str) -> None:
        parsed = urlparse(target)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 4222
        self.delay = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(self.host, self.port)
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._tasks.add(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await held.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(forward())
        try:
            while data := await reader.read(65536):
                held.put_nowait((loop.time() + self.delay, data))
        finally:
            sender.cancel()
            writer.close()


async def test_leases_are_renewed_together_so_a_slow_nats_costs_one_round_trip(nats_url: str) -> None:
    """A replica renews all its leases at once: with NATS slow to answer (0.6 s a request here),
    one round for 8 partitions takes about one round trip, not eight (4.8 s, past the 3 s a lease
    of 4 s is trusted: one after another, the replica gave up partitions it still held)."""
    link = SlowLink(nats_url)
    nc = await nats.connect(await link.start())
    try:
        kv = await open_bucket(nc.jetstream(), "test_leases_slow", description="test")
        stop = asyncio.Event()
        leases = [PartitionLease(kv, f"_lease.p{k}", "0-of-1@a", ttl=4.0) for k in range(8)]
        for lease in leases:
            assert await lease.acquire(stop)
        link.delay = 0.3
        started = time.monotonic()
        await renew_leases(leases)
        elapsed = time.monotonic() - started
        assert 0.6 <= elapsed < 2.4, elapsed  # the slow link is in the way, and crossed once
        for lease in leases:
            lease.check()  # every one renewed within the bound
        # A lease taken over meanwhile is reported as lost (the others are still renewed).
        link.delay = 0.0
        await kv.put("_lease.p3", b"1-of-2@b")
        with pytest.raises(LeaseLostError):
            await renew_leases(leases)
        leases[0].check()
    finally:
        await nc.close()
        await link.close()


async def test_members_find_each_other_leave_expire_and_a_twin_is_refused(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        settings = SpcSettings(lease_ttl_s=2.0)
        kv = await open_members(js, settings)
        assert (await kv.status()).ttl == 2.0  # one lease TTL
        await open_members(js, SpcSettings(lease_ttl_s=5.0))  # the next replica opens it as it is
        assert (await kv.status()).ttl == 2.0
        a = Membership(js, kv, settings.members_bucket, "0@a")
        b = Membership(js, kv, settings.members_bucket, "1@b")
        await a.announce()
        assert await a.live() == ["0@a"]
        await b.announce()
        assert await a.live() == await b.live() == ["0@a", "1@b"]
        await b.leave()  # a clean stop: gone at once
        assert await a.live() == ["0@a"]
        await b.announce()
        assert await a.live() == ["0@a", "1@b"]

        async def only_a() -> bool:  # b stopped announcing (killed): gone after the max age
            await a.announce()
            return await a.live() == ["0@a"]

        await eventually(only_a, within=20, what="b expired")
        # A second live process with a's identity would share its leases: refused. The same
        # identity restarted after a crash is not a twin (its first announcement replaces the key).
        twin = Membership(js, kv, settings.members_bucket, "0@a")
        await twin.announce()
        with pytest.raises(MemberConflictError):
            await a.announce()
        await twin.announce()
        assert await twin.live() == ["0@a"]
    finally:
        await nc.close()


async def test_the_members_watch_starts_a_round_when_a_replica_joins_or_leaves_not_when_one_announces(
    nats_url: str,
) -> None:
    """Rounds run every TTL / 4 (2.5 s by default, every second before): a join or a clean leave
    starts one at once, another member's announcement (every round) does not."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        settings = SpcSettings(lease_ttl_s=60.0)
        kv = await open_members(js, settings)
        a = Membership(js, kv, settings.members_bucket, "0@a")
        b = Membership(js, kv, settings.members_bucket, "1@b")
        await a.announce()
        members = await a.live()
        changed = asyncio.Event()
        asked: list[int] = []

        def known() -> list[str]:
            asked.append(1)
            return members

        watch = asyncio.create_task(a.watch(changed, known, retry=0.1))
        try:
            await a.announce()  # its own announcement: nothing to read
            await b.announce()  # a join
            await eventually(changed.is_set, what="the join seen")
            changed.clear()
            members = await a.live()
            assert members == ["0@a", "1@b"]
            seen = len(asked)
            await b.announce()  # a known member announcing itself: no round
            await eventually(lambda: len(asked) > seen, what="the announcement seen")
            assert not changed.is_set()
            await b.leave()  # a clean leave
            await eventually(changed.is_set, what="the leave seen")
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
    finally:
        await nc.close()


def test_partitions_gather_at_eight_moments_of_the_period() -> None:
    """The 16 partitions' ticks are spread (GATHER_GROUPS): a tick's telemetry comes in eight
    smaller bursts, not one (which held the persister's tail up on a 2-core host)."""
    phases = [gather_phase(k, 16) for k in range(16)]
    assert sorted(set(phases)) == [k / 8 for k in range(8)]
    assert phases.count(0.0) == 2
    assert {gather_phase(k, 2) for k in range(2)} == {0.0, 0.5}
    assert gather_phase(0, 1) == 0.0
