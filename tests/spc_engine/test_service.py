"""The service on a real nats-server: ack after publish, kill -9 recovery, two replicas."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

import msgspec
import nats
import pytest
from nats.js import JetStreamContext

from llmscope.bus.kv import bucket_keys, open_bucket
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams, telemetry_partition
from llmscope.proto import codec, subjects
from llmscope.proto.charts import decode_record
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine.checkpoints import checkpoint_key
from llmscope.spc_engine.engine import ChartSnapshot, Engine
from llmscope.spc_engine.lease import lease_key
from llmscope.spc_engine.membership import member_key, owned_partitions
from llmscope.spc_engine.partition_consumer import partition_durable
from llmscope.spc_engine.service import SpcService, serve
from llmscope.spc_engine.service_core import config_for
from llmscope.spc_engine.settings import SpcSettings
from llmscope.spc_engine.store import ChartStore
from llmscope.stack.embedded import EmbeddedNats
from tests.alerter.harness import eventually
from tests.processes import stop_process, tied

from .helpers import telemetry_stream

BASELINE = 40
PARTITIONS = 16


async def expected_ids(events: Sequence[TelemetryEvent], settings: SpcSettings) -> list[str]:
    engine = Engine(config_for=lambda m: config_for(settings, m))
    out: list[str] = []
    for seq, ev in enumerate(events, start=1):
        out += [v.id for v in await engine.on_telemetry(ev, seq)]
    return out


def by_model(got: Sequence[ViolationEvent]) -> dict[str, list[str]]:
    """Violation ids per model, in publication order (partitions interleave freely)."""
    out: dict[str, list[str]] = {}
    for v in got:
        out.setdefault(v.model, []).append(v.id)
    return out


def assert_exactly(got: Sequence[ViolationEvent], expected: Sequence[str]) -> None:
    """The same violations as one uninterrupted engine, each once, in order within each model."""
    assert sorted(v.id for v in got) == sorted(expected)
    order = {vid: i for i, vid in enumerate(expected)}
    for ids in by_model(got).values():
        assert ids == sorted(ids, key=order.__getitem__)


PUBLISH_ACKS_WITHIN_S = 120.0
"""A publish ack lost with its connection is never answered: the test fails after this (it is
not a wait for an event, only the bound on one that will not come), not at CI's timeout."""


async def publish_all(js: JetStreamContext, events: Sequence[TelemetryEvent]) -> None:
    acks = [
        await js.publish_async(
            subjects.telemetry(e.provider, e.model), codec.encode(e), headers={"Nats-Msg-Id": e.id}
        )
        for e in events
    ]
    await asyncio.wait_for(asyncio.gather(*acks), PUBLISH_ACKS_WITHIN_S)


class Trickle:
    """Publishes a stream in the background in small batches, slower than an engine consumes
    it, and holds the last ``hold`` events back until :meth:`finish`: a kill while it runs
    always lands mid-stream, however fast the engine has become."""

    def __init__(self, js: JetStreamContext, events: Sequence[TelemetryEvent], hold: int = 100) -> None:
        self._release = asyncio.Event()
        self._task = asyncio.create_task(self._run(js, events, hold))

    async def _run(self, js: JetStreamContext, events: Sequence[TelemetryEvent], hold: int) -> None:
        head, tail = events[: len(events) - hold], events[len(events) - hold :]
        for i in range(0, len(head), 20):
            await publish_all(js, head[i : i + 20])
            await asyncio.sleep(0.03)
        await self._release.wait()
        await publish_all(js, tail)

    async def finish(self) -> None:
        """Publish the held-back events and wait until everything is published."""
        self._release.set()
        await self._task


async def violations(js: JetStreamContext) -> list[ViolationEvent]:
    info = await js.stream_info(subjects.STREAM_VIOLATIONS)
    n = info.state.messages
    if n == 0:
        return []
    sub = await js.pull_subscribe(subjects.VIOLATIONS_ALL, stream=subjects.STREAM_VIOLATIONS)
    out: list[ViolationEvent] = []
    while len(out) < n:
        out += [
            codec.decode_as(m.data, ViolationEvent)
            for m in await sub.fetch(min(500, n - len(out)), timeout=5)
        ]
    await sub.unsubscribe()
    return out


def partition_of(ev: TelemetryEvent) -> int:
    return telemetry_partition(ev.provider, ev.model, PARTITIONS)


def partition_ends(events: Sequence[TelemetryEvent], last_seq: int) -> dict[int, int]:
    """The last stream sequence of each partition among the first ``last_seq`` events."""
    return {partition_of(ev): seq for seq, ev in enumerate(events[:last_seq], start=1)}


async def unfinished(js: JetStreamContext, events: Sequence[TelemetryEvent], last_seq: int) -> list[int]:
    """Partitions whose consumer has not acked its share of the first ``last_seq`` events."""
    out = []
    for partition, seq in partition_ends(events, last_seq).items():
        try:
            info = await js.consumer_info(subjects.STREAM_TELEMETRY, partition_durable(partition))
        except nats.js.errors.NotFoundError:
            out.append(partition)
            continue
        if info.ack_floor is None or info.ack_floor.stream_seq < seq:
            out.append(partition)
    return out


async def wait_consumed(
    js: JetStreamContext, events: Sequence[TelemetryEvent], last_seq: int, within: float = 60
) -> None:
    """Wait until the partition consumers acked the first ``last_seq`` events."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while loop.time() < end:
        if not await unfinished(js, events, last_seq):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"not consumed up to {last_seq}: partitions {await unfinished(js, events, last_seq)}"
    )


async def wait_checkpoint(
    js: JetStreamContext, events: Sequence[TelemetryEvent], last_seq: int, within: float = 30
) -> None:
    """Wait until the snapshot covering the first ``last_seq`` events is in the KV bucket.

    Charts are written before the checkpoint (``SpcService.snapshot``), so once each partition's
    checkpoint has reached its share, so have its charts.
    """
    kv = await js.key_value(subjects.SPC_CHARTS_BUCKET)
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    behind: dict[int, int] = {}
    while loop.time() < end:
        behind = {}
        for partition, seq in partition_ends(events, last_seq).items():
            try:
                done = int((await kv.get(checkpoint_key(partition))).value or b"0")
            except nats.js.errors.KeyNotFoundError:
                done = 0
            if done < seq:
                behind[partition] = done
        if not behind:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no snapshot up to {last_seq}: checkpoints {behind}")


async def wait_started(js: JetStreamContext, durable: str, before: object, within: float = 30) -> object:
    """Wait until a (re)started engine has recreated its consumer; returns its creation time."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while loop.time() < end:
        try:
            info = await js.consumer_info(subjects.STREAM_TELEMETRY, durable)
            if info.created != before:
                return info.created
        except nats.js.errors.NotFoundError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the engine did not start")


def settings(url: str, replicas: int = 1, replica: int = 0) -> SpcSettings:
    return SpcSettings(
        bus=BusSettings(nats_url=url),
        baseline_n=BASELINE,
        snapshot_interval_s=0.05,
        batch_size=64,
        partitions=PARTITIONS,
        replicas=replicas,
        replica=replica,
        lease_ttl_s=2.0,
        # The state every 15 s however few events came, as before LLMSCOPE_SPC_STATE_EVENTS:
        # the tests that wait for a checkpoint see one within their wait.
        state_max_interval_s=15.0,
    )


async def test_violations_published_then_acked_and_charts_in_kv(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(500, shift_at=350)
    await publish_all(js, events)
    cfg = settings(nats_url)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(cfg, stop))
    try:
        await wait_consumed(js, events, len(events))
        got = await violations(js)
        assert [v.id for v in got] == await expected_ids(events, cfg)
        assert any(v.severity == "critical" for v in got)
        kv = await js.key_value(subjects.SPC_CHARTS_BUCKET)
        # The checkpoint and the charts are written by the next snapshot.
        await wait_checkpoint(js, events, len(events))
        checkpoint = checkpoint_key(partition_of(events[0]))
        assert int((await kv.get(checkpoint)).value or b"0") == len(events)
        key = next(v.chart_key for v in got if v.state == "open" and v.metric == "latency_ms")
        record = decode_record((await kv.get(key)).value or b"")
        assert record.seq > 0
        assert record.view is not None
        assert record.view.phase == "armed"
        # The chart's state is in the engine's own bucket, not in the record readers watch.
        assert b'"state"' not in ((await kv.get(key)).value or b"")
        state = await js.key_value(subjects.SPC_STATE_BUCKET)
        # Re-baseline on request, with who and why: open episodes clear, the chart collects again.
        body = msgspec.json.encode({"chart_key": key, "by": "ann", "reason": "new GPU"})
        reply = msgspec.json.decode((await nc.request(subjects.spc_rebaseline(), body, timeout=5)).data)
        assert reply["ok"] is True
        record = decode_record((await kv.get(key)).value or b"")
        assert record.view is not None
        assert record.view.phase == "collecting"
        snap = await ChartStore(kv, state).load(key)
        assert isinstance(snap, ChartSnapshot)
        assert snap.state.pending_by == "ann"
        cleared = [v for v in await violations(js) if v.state == "cleared" and v.chart_key == key]
        assert len(cleared) >= reply["cleared"]
    finally:
        stop.set()
        assert await task == 0
    await nc.close()


@pytest.mark.fault
@pytest.mark.parametrize(
    ("state_interval", "state_events"),
    [("0.3", "1"), ("2", "1"), ("0.3", "400")],
    ids=["state-each-snapshot", "state-every-2s", "state-every-400-events"],
)
async def test_kill_9_and_restart_publishes_exactly_the_uninterrupted_violations(
    nats_url: str, state_interval: str, state_events: str
) -> None:
    """Killed twice mid-stream: with the state written at each snapshot, with the public
    records written every 0.3 s and the state every 2 s (public records ahead of the state), and
    with the state written once 400 events were charted since the last write."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(3000, models=("a", "b"), shift_at=1500, seed=7)
    publishing = Trickle(js, events)
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "LLMSCOPE_SPC_BASELINE_N": str(BASELINE),
        "LLMSCOPE_SPC_SNAPSHOT_INTERVAL_S": "0.3",
        "LLMSCOPE_SPC_STATE_INTERVAL_S": state_interval,
        "LLMSCOPE_SPC_STATE_EVENTS": state_events,
        "LLMSCOPE_SPC_STATE_MAX_INTERVAL_S": "600",
        "LLMSCOPE_SPC_BATCH_SIZE": "32",
    }
    cmd = [sys.executable, "-m", "llmscope.spc_engine"]
    durable = partition_durable(partition_of(events[0]))
    created = None
    for kill_at in (700, 1900):  # kill it twice mid-stream, once after the shift began
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stderr=asyncio.subprocess.DEVNULL, **tied()
        )
        try:
            created = await wait_started(js, durable, created)
            await wait_consumed(js, events, kill_at)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        assert await unfinished(js, events, len(events)), "killed too late to test anything"
    await publishing.finish()
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.DEVNULL, **tied())
    try:
        await wait_started(js, durable, created)
        await wait_consumed(js, events, len(events), within=120)
    finally:
        code = await stop_process(proc, within=20)  # killed if it does not stop: never left running
    assert code == 0
    assert_exactly(await violations(js), await expected_ids(events, settings(nats_url)))
    await nc.close()


async def test_state_and_checkpoints_wait_for_enough_events_not_for_the_clock(nats_url: str) -> None:
    """``LLMSCOPE_SPC_STATE_EVENTS``: the chart records readers see follow every snapshot, the
    state and checkpoints only once that many events were charted since their last write."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(400, models=("a",), seed=11)
    await publish_all(js, events[:200])
    cfg = dataclasses.replace(
        settings(nats_url), baseline_n=1000, state_interval_s=0.05, state_events=300, state_max_interval_s=600
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(cfg, stop))
    try:
        await wait_consumed(js, events, 200)
        kv = await js.key_value(subjects.SPC_CHARTS_BUCKET)

        async def snapshotted_after_200() -> bool:
            # Charts still collecting show their progress: their records follow each snapshot.
            seqs = [0]
            for key in await kv.keys():
                if not key.startswith("_"):
                    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                        seqs.append(decode_record((await kv.get(key)).value or b"").seq)
            return max(seqs) >= 200

        await eventually(snapshotted_after_200, what="the records of the first 200 events")
        checkpoint = checkpoint_key(partition_of(events[0]))
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get(checkpoint)
        state = await bucket_keys(js, subjects.SPC_STATE_BUCKET)
        assert [k for k in state if not k.startswith("_part.")] == []
        await publish_all(js, events[200:])
        await wait_consumed(js, events, len(events))
        await wait_checkpoint(js, events, 300)
        assert int((await kv.get(checkpoint)).value or b"0") >= 300
    finally:
        stop.set()
        assert await task == 0
    await nc.close()


async def test_two_replicas_share_the_charts(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(1200, models=("a", "b", "c", "d"), shift_at=800, seed=3)
    await publish_all(js, events)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(serve(settings(nats_url, replicas=2, replica=i), stop)) for i in range(2)]
    await wait_consumed(js, events, len(events))
    stop.set()
    assert await asyncio.gather(*tasks) == [0, 0]
    got = await violations(js)
    assert_exactly(got, await expected_ids(events, settings(nats_url)))
    assert len({v.model for v in got}) >= 2
    await nc.close()


class Spied:
    """A service whose engine records which points it charted: (holder, partition, seq)."""

    def __init__(self, service: SpcService, log: list[tuple[str, int, int]]) -> None:
        self.service = service
        # Every probe is charted by on_telemetry_loaded: the service calls it, and on_telemetry
        # calls it again once a chart was loaded (None, nothing charted, before that).
        inner = service.engine.on_telemetry_loaded

        def on_telemetry_loaded(ev: TelemetryEvent, seq: int = 0) -> list[ViolationEvent] | None:
            out = inner(ev, seq)
            if out is not None and service.engine.owns(ev.provider, ev.model):
                log.append((service.holder, service.partition_of(ev.provider, ev.model), seq))
            return out

        service.engine.on_telemetry_loaded = on_telemetry_loaded  # type: ignore[method-assign]


async def publish_slowly(js: JetStreamContext, events: Sequence[TelemetryEvent]) -> None:
    """Telemetry that keeps flowing while replicas come and go."""
    for i in range(0, len(events), 20):
        await publish_all(js, events[i : i + 20])
        await asyncio.sleep(0.05)


async def test_partitions_rebalance_from_1_to_3_to_2_replicas_while_telemetry_flows(nats_url: str) -> None:
    """Nothing says how many replicas run: they find each other. One replica takes every
    partition; two more join and each ends up with its share; one leaves cleanly and the other
    two take its partitions. Every partition has an owner after each change, and every point is
    charted exactly once: the violations are exactly one uninterrupted replica's."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(2400, models=tuple(f"m{i}" for i in range(8)), shift_at=1500, seed=5)
    assert len({partition_of(ev) for ev in events}) >= 4
    charts = await open_bucket(js, subjects.SPC_CHARTS_BUCKET, description="test")
    charted: list[tuple[str, int, int]] = []
    running: dict[str, tuple[SpcService, asyncio.Task[None], asyncio.Event]] = {}

    # A lease TTL longer than the test: every move is a hand-over or a clean stop, never an expiry.
    slow = dataclasses.replace(settings(nats_url), lease_ttl_s=600)

    def start(holder: str) -> None:
        service = Spied(SpcService(slow, nc, js, charts, holder=holder), charted).service
        stop = asyncio.Event()
        running[holder] = (service, asyncio.create_task(service.run(stop)), stop)

    def stop(holder: str) -> Awaitable[None]:
        return stopped(*running.pop(holder))  # gone from ``running`` before anything else runs

    async def stopped(service: SpcService, task: asyncio.Task[None], event: asyncio.Event) -> None:
        event.set()
        await task
        assert service.failed is None
        assert not service.held

    async def balanced(within: float = 60) -> None:
        """Each running replica holds exactly the partitions of its rank (so all, once)."""
        names = sorted(running)
        for _ in range(int(within / 0.05)):
            shares = [running[name][0].held for name in names]
            if all(held == set(owned_partitions(PARTITIONS, len(names), i)) for i, held in enumerate(shares)):
                return
            await asyncio.sleep(0.05)
        raise AssertionError([(name, running[name][0].held) for name in names])

    start("a")
    await asyncio.gather(balanced(), publish_slowly(js, events[:600]))
    assert running["a"][0].held == set(range(PARTITIONS))
    start("b")
    start("c")
    await asyncio.gather(balanced(), publish_slowly(js, events[600:1200]))
    assert all(len(s.held) in (5, 6) for s, _, _ in running.values())
    await publish_slowly(js, events[1200:1500])  # every model has points here: each new owner charts
    await wait_consumed(js, events, 1500)
    assert {h for h, _, _ in charted} == {"a", "b", "c"}
    await asyncio.gather(stop("c"), balanced(), publish_slowly(js, events[1500:1800]))
    await publish_all(js, events[1800:])
    await wait_consumed(js, events, len(events))
    await asyncio.gather(stop("a"), stop("b"))

    got = await violations(js)
    assert_exactly(got, await expected_ids(events, settings(nats_url)))
    assert any(v.severity == "critical" for v in got)
    # Every point charted exactly once: a hand-over replays nothing and skips nothing.
    assert sorted(seq for _, _, seq in charted) == list(range(1, len(events) + 1))
    moved = {p for p in range(PARTITIONS) if len({h for h, q, _ in charted if q == p}) > 1}
    assert moved, "no partition moved while it had telemetry"
    await nc.close()


async def lease_holders(js: JetStreamContext) -> dict[int, str]:
    kv = await open_bucket(js, subjects.SPC_CHARTS_BUCKET, description="test")
    out = {}
    for k in range(PARTITIONS):
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            out[k] = ((await kv.get(lease_key(k))).value or b"").decode()
    return out


@pytest.mark.fault
async def test_a_killed_replicas_partitions_are_taken_over_after_the_ttl(nats_url: str) -> None:
    """Two replicas share the partitions; one is killed with SIGKILL (its leases stay held, its
    membership stays until it expires). The survivor alone, with no restart and nothing
    reconfigured, takes the dead one's partitions after the lease TTL, from their last
    checkpoints, and finishes the stream: the violations are exactly an uninterrupted run's."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(2400, models=tuple(f"m{i}" for i in range(6)), shift_at=1400, seed=11)
    await publish_all(js, events[:1000])
    base = {
        **os.environ,
        "NATS_URL": nats_url,
        "LLMSCOPE_SPC_BASELINE_N": str(BASELINE),
        "LLMSCOPE_SPC_SNAPSHOT_INTERVAL_S": "0.3",
        "LLMSCOPE_SPC_BATCH_SIZE": "32",
        "LLMSCOPE_SPC_PARTITIONS": str(PARTITIONS),
        "LLMSCOPE_SPC_LEASE_TTL_S": "2",
    }
    cmd = [sys.executable, "-m", "llmscope.spc_engine"]

    def start(replica: int) -> asyncio.Future[asyncio.subprocess.Process]:
        env = {**base, "LLMSCOPE_SPC_REPLICA": str(replica)}  # two identities on one host
        return asyncio.ensure_future(
            asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.DEVNULL, **tied())
        )

    await lease_holders(js)  # the chart bucket, made here before the engines race to make it
    survivor = await start(0)
    try:
        await _survive_the_other(js, events, start, survivor)
    finally:
        await stop_process(survivor, signal.SIGKILL)  # SIGTERM was sent and awaited on success
    got = await violations(js)
    assert_exactly(got, await expected_ids(events, settings(nats_url)))
    assert any(v.severity == "critical" for v in got)
    await nc.close()


async def _survive_the_other(
    js: JetStreamContext,
    events: list[TelemetryEvent],
    start: Callable[[int], Awaitable[asyncio.subprocess.Process]],
    survivor: asyncio.subprocess.Process,
) -> None:
    """Replica 1 starts, takes its share, is SIGKILLed mid-stream; ``survivor`` charts the rest."""
    victim = await start(1)
    publishing = Trickle(js, events[1000:1600])
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        while True:  # both hold their shares: "0@<host>" ranks first, "1@<host>" second
            holders = await lease_holders(js)
            if len(holders) == PARTITIONS and all(h.startswith(f"{k % 2}@") for k, h in holders.items()):
                break
            assert loop.time() < end, holders
            await asyncio.sleep(0.1)
        dead = {k for k in range(PARTITIONS) if k % 2}
        assert {partition_of(ev) for ev in events} & dead, "the victim must own some of the models"
        await wait_consumed(js, events, 1200)
    finally:
        await stop_process(victim, signal.SIGKILL)
    assert await unfinished(js, events, 1600), "killed too late to test anything"
    await publishing.finish()
    await publish_all(js, events[1600:])
    await wait_consumed(js, events, len(events), within=120)
    assert all(h.startswith("0@") for h in (await lease_holders(js)).values())
    assert await stop_process(survivor, within=20) == 0


@pytest.mark.fault
async def test_replicas_rejoin_and_share_after_nats_restarts_and_the_members_bucket_goes(
    embedded_nats: EmbeddedNats,
) -> None:
    """A restarted nats-server (same file store: streams, leases, checkpoints and the members
    bucket survive) keeps the replica's announcement. If the members bucket goes anyway (deleted
    by hand; an earlier version kept it in memory, where a restart dropped it), the running
    replica makes it again and announces itself, and a replica started afterwards gets its share
    of the partitions."""
    nc = await nats.connect(embedded_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    charts = await open_bucket(js, subjects.SPC_CHARTS_BUCKET, description="test")
    # A lease TTL longer than the test: the outage costs no lease, every move is a hand-over.
    slow = dataclasses.replace(settings(embedded_nats.url), lease_ttl_s=600)
    running: dict[str, tuple[SpcService, asyncio.Task[None], asyncio.Event]] = {}

    def start(holder: str) -> None:
        service = SpcService(slow, nc, js, charts, holder=holder)
        stop = asyncio.Event()
        running[holder] = (service, asyncio.create_task(service.run(stop)), stop)

    def shared() -> bool:
        names = sorted(running)
        return all(
            running[name][0].held == set(owned_partitions(PARTITIONS, len(names), i))
            for i, name in enumerate(names)
        )

    async def announced(holder: str) -> bool:
        try:  # never creates the bucket: only the engine may bring it back
            members = await js.key_value(slow.members_bucket)
            await members.get(member_key(holder))
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
            return False
        except (nats.errors.Error, TimeoutError):  # still reconnecting
            return False
        return True

    start("a")
    await eventually(shared, within=60, what="a holds every partition")
    assert await announced("a")
    embedded_nats.kill()
    embedded_nats.start()
    await eventually(lambda: announced("a"), within=60, what="a announced after the restart")
    await eventually(
        lambda: _delete_stream(js, f"KV_{slow.members_bucket}"), within=60, what="bucket deleted"
    )
    await eventually(lambda: announced("a"), within=60, what="a announced again in a bucket it made again")
    start("b")
    await eventually(shared, within=60, what="a and b share the partitions")
    for name in sorted(running):
        service, task, stop = running.pop(name)
        stop.set()
        await task
        assert service.failed is None
        assert not service.held
    await nc.close()


async def _delete_stream(js: JetStreamContext, name: str) -> bool:
    try:
        await js.delete_stream(name)
    except (nats.errors.Error, TimeoutError):  # still reconnecting
        return False
    return True


@pytest.mark.fault
async def test_a_nats_restart_under_a_running_engine_charts_exactly_the_uninterrupted_stream(
    embedded_nats: EmbeddedNats,
) -> None:
    """The partitions' consumers live in nats-server's memory (no state file rewritten per
    delivery and ack): a restart loses them, and the running engine makes each again, resuming
    after what it charted, so it publishes exactly the violations of an uninterrupted run."""
    nc = await nats.connect(embedded_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    charts = await open_bucket(js, subjects.SPC_CHARTS_BUCKET, description="test")
    # A lease TTL longer than the test: the outage costs no lease, the service goes on.
    slow = dataclasses.replace(settings(embedded_nats.url), lease_ttl_s=600)
    events = telemetry_stream(1200, models=("a", "b"), shift_at=700, seed=11)
    service = SpcService(slow, nc, js, charts, holder="a")
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await publish_all(js, events[:500])
        await wait_consumed(js, events, 500)
        # Snapshotted: a chart write that NATS refused would stop the service (a restart replays).
        await eventually(lambda: not any(e.dirty for e in service.engine.charts.values()))
        embedded_nats.kill()
        embedded_nats.start()  # the same store: streams, checkpoints and leases are back

        async def published() -> bool:
            try:
                # An ack lost with the old connection never comes: each try is bounded.
                await asyncio.wait_for(publish_all(js, events[500:]), 10)
            except (nats.errors.Error, TimeoutError):  # still reconnecting
                return False
            return True

        await eventually(published, within=60, what="published after the restart")
        await wait_consumed(js, events, len(events), within=120)
        assert service.failed is None
    finally:
        stop.set()
        await task
    assert_exactly(await violations(js), await expected_ids(events, settings(embedded_nats.url)))
    await nc.close()
