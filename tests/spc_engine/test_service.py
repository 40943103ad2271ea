"""The service on a real nats-server: ack after publish, kill -9 recovery, two replicas."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence

import msgspec
import nats
from nats.js import JetStreamContext

from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.proto import codec, subjects
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine.engine import ChartSnapshot, Engine, decode_snapshot
from llmscope.spc_engine.service import config_for, serve
from llmscope.spc_engine.settings import SpcSettings

from .helpers import telemetry_stream

BASELINE = 40


async def expected_ids(events: Sequence[TelemetryEvent], settings: SpcSettings) -> list[str]:
    engine = Engine(config_for=lambda m: config_for(settings, m))
    out: list[str] = []
    for seq, ev in enumerate(events, start=1):
        out += [v.id for v in await engine.on_telemetry(ev, seq)]
    return out


async def publish_all(js: JetStreamContext, events: Sequence[TelemetryEvent]) -> None:
    acks = [
        await js.publish_async(
            subjects.telemetry(e.provider, e.model), codec.encode(e), headers={"Nats-Msg-Id": e.id}
        )
        for e in events
    ]
    await asyncio.gather(*acks)


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


async def wait_consumed(js: JetStreamContext, durable: str, last_seq: int, within: float = 60) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while loop.time() < end:
        try:
            info = await js.consumer_info(subjects.STREAM_TELEMETRY, durable)
            if info.ack_floor is not None and info.ack_floor.stream_seq >= last_seq:
                return
        except nats.js.errors.NotFoundError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{durable} did not reach {last_seq}")


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
        replicas=replicas,
        replica=replica,
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
        await wait_consumed(js, "spc-engine-0-of-1", len(events))
        got = await violations(js)
        assert [v.id for v in got] == await expected_ids(events, cfg)
        assert any(v.severity == "critical" for v in got)
        kv = await js.key_value(subjects.SPC_CHARTS_BUCKET)
        # The checkpoint and the charts are written within the snapshot interval.
        await asyncio.sleep(0.3)
        assert int((await kv.get("_checkpoint.0-of-1")).value or b"0") == len(events)
        key = next(v.chart_key for v in got if v.state == "open" and v.metric == "latency_ms")
        snap = decode_snapshot(key, (await kv.get(key)).value or b"")
        assert isinstance(snap, ChartSnapshot)
        assert snap.seq > 0
        assert snap.view is not None
        assert snap.view.phase == "armed"
        # Re-baseline on request, with who and why: open episodes clear, the chart collects again.
        body = msgspec.json.encode({"chart_key": key, "by": "ann", "reason": "new GPU"})
        reply = msgspec.json.decode((await nc.request(subjects.spc_rebaseline(), body, timeout=5)).data)
        assert reply["ok"] is True
        snap = decode_snapshot(key, (await kv.get(key)).value or b"")
        assert isinstance(snap, ChartSnapshot)
        assert snap.state.pending_by == "ann"
        assert snap.view is not None
        assert snap.view.phase == "collecting"
        cleared = [v for v in await violations(js) if v.state == "cleared" and v.chart_key == key]
        assert len(cleared) >= reply["cleared"]
    finally:
        stop.set()
        assert await task == 0
    await nc.close()


async def test_kill_9_and_restart_publishes_exactly_the_uninterrupted_violations(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(3000, models=("a", "b"), shift_at=1500, seed=7)
    await publish_all(js, events)
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "LLMSCOPE_SPC_BASELINE_N": str(BASELINE),
        "LLMSCOPE_SPC_SNAPSHOT_INTERVAL_S": "0.3",
        "LLMSCOPE_SPC_BATCH_SIZE": "32",
    }
    cmd = [sys.executable, "-m", "llmscope.spc_engine"]
    durable = "spc-engine-0-of-1"
    created = None
    for kill_at in (700, 1900):  # kill it twice mid-stream, once after the shift began
        proc = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.DEVNULL)
        try:
            created = await wait_started(js, durable, created)
            await wait_consumed(js, durable, kill_at)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        info = await js.consumer_info(subjects.STREAM_TELEMETRY, durable)
        assert info.ack_floor is not None
        assert info.ack_floor.stream_seq < len(events), "killed too late to test anything"
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_started(js, durable, created)
        await wait_consumed(js, durable, len(events), within=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    got = [v.id for v in await violations(js)]
    cfg = settings(nats_url)
    assert got == await expected_ids(events, cfg)
    await nc.close()


async def test_two_replicas_share_the_charts(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(1200, models=("a", "b", "c", "d"), shift_at=800, seed=3)
    await publish_all(js, events)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(serve(settings(nats_url, replicas=2, replica=i), stop)) for i in range(2)]
    for i in range(2):
        await wait_consumed(js, f"spc-engine-{i}-of-2", len(events))
    stop.set()
    assert await asyncio.gather(*tasks) == [0, 0]
    got = await violations(js)
    assert sorted(v.id for v in got) == sorted(await expected_ids(events, settings(nats_url)))
    assert len({v.model for v in got}) >= 2
    await nc.close()
