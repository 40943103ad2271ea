"""Exact recovery with the charts split in two: a public record readers watch and the engine's state.

Each test ends with the charts of an engine that never stopped: the same state, the same
violations (ids, in order per model) and what readers see rendered from that state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from llmscope.bus.kv import bucket_keys, open_bucket
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.proto import subjects
from llmscope.proto.charts import chart_key, decode_record
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.spc_engine.checkpoints import checkpoint_key
from llmscope.spc_engine.config import CHARTED_METRICS
from llmscope.spc_engine.engine import ChartSnapshot, Engine
from llmscope.spc_engine.service import serve
from llmscope.spc_engine.service_core import config_for
from llmscope.spc_engine.settings import SpcSettings
from llmscope.spc_engine.store import ChartStore, series_key
from tests.alerter.harness import eventually
from tests.processes import stop_process, tied

from .helpers import telemetry_stream
from .test_service import (
    assert_exactly,
    partition_ends,
    partition_of,
    publish_all,
    settings,
    violations,
    wait_checkpoint,
    wait_consumed,
)

T_REBASELINE = datetime(2025, 1, 2, tzinfo=UTC)


class Reference:
    """One engine that never stops, fed the same stream (the sequences as the stream numbers them)."""

    def __init__(self, cfg: SpcSettings) -> None:
        self.engine = Engine(config_for=lambda metric: config_for(cfg, metric))
        self.seq = 0

    async def feed(self, events: Sequence[TelemetryEvent]) -> list[str]:
        out: list[str] = []
        for ev in events:
            self.seq += 1
            out += [v.id for v in await self.engine.on_telemetry(ev, self.seq)]
        return out

    def rebaseline(self, key: str, by: str, reason: str) -> list[str]:
        got = self.engine.rebaseline(key, by, reason, T_REBASELINE)
        assert got is not None
        return [v.id for v in got]


async def run_until(
    js: JetStreamContext, cfg: SpcSettings, events: Sequence[TelemetryEvent], upto: int
) -> None:
    """Serve until the first ``upto`` events are charted and snapshotted, then stop cleanly."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(cfg, stop))
    try:
        await wait_consumed(js, events, upto)
        await wait_checkpoint(js, events, upto)
    finally:
        stop.set()
        assert await task == 0


async def assert_same_charts(js: JetStreamContext, reference: Reference) -> None:
    """Every chart's state as the reference's, and its public record rendered from that state."""
    charts = await js.key_value(subjects.SPC_CHARTS_BUCKET)
    store = ChartStore(charts, await js.key_value(subjects.SPC_STATE_BUCKET))
    for key in sorted(reference.engine.charts):
        want = reference.engine.snapshot(key)
        got = await store.load(key)
        assert got is not None, key
        assert (got.seq, got.config, got.state) == (want.seq, want.config, want.state), key
        public = (await charts.get(key)).value or b""
        assert b'"state"' not in public, key
        record = decode_record(public)
        if isinstance(want, ChartSnapshot):
            assert msgspec.json.encode(record.view) == msgspec.json.encode(want.view), key
        else:
            assert record.availability == want.availability, key


async def write_previous_version(
    js: JetStreamContext, reference: Reference, events: Sequence[TelemetryEvent]
) -> KeyValue:
    """The chart bucket as the engine before the split left it: one full record per chart (its
    configuration and state in it) and the partitions' checkpoints; no state bucket."""
    charts = await open_bucket(js, subjects.SPC_CHARTS_BUCKET, description="test")
    now = datetime.now(UTC)
    for key in reference.engine.charts:
        await charts.put(key, msgspec.json.encode(reference.engine.snapshot(key, now)))
    for partition, seq in partition_ends(events, reference.seq).items():
        await charts.put(checkpoint_key(partition), str(seq).encode())
    return charts


async def finish(
    js: JetStreamContext, cfg: SpcSettings, events: Sequence[TelemetryEvent], tail_from: int
) -> None:
    """Start an engine of this version, publish the rest of the stream, chart it all, stop."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(cfg, stop))
    try:
        await publish_all(js, events[tail_from:])
        await wait_consumed(js, events, len(events))
        await wait_checkpoint(js, events, len(events))
    finally:
        stop.set()
        assert await task == 0


async def test_a_rebaseline_whose_public_write_failed_is_kept_and_shown_after_restart(nats_url: str) -> None:
    """The engine dies between a re-baseline's state write and its public write (the chart
    bucket refuses records of that size from then on). Restarted, the chart continues from the
    re-baselined state and its public record shows it: as an engine that never stopped. Writing
    the public record first, or trusting it over the state, loses the re-baseline."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(1100, models=("m1", "m2"), shift_at=600, seed=9)
    head = 800
    await publish_all(js, events[:head])
    cfg = settings(nats_url)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(cfg, stop))
    await wait_consumed(js, events, head)
    await wait_checkpoint(js, events, head)
    first = await violations(js)
    key = next(
        v.chart_key for v in first if v.state == "open" and v.model == "m1" and v.metric == "latency_ms"
    )
    charts = await js.key_value(subjects.SPC_CHARTS_BUCKET)
    shown = decode_record((await charts.get(key)).value or b"")
    assert shown.view is not None
    assert shown.view.phase == "armed"

    stream = await js.stream_info(f"KV_{subjects.SPC_CHARTS_BUCKET}")
    stream.config.max_msg_size = 256  # leases and checkpoints still fit, a chart's record does not
    await js.update_stream(stream.config)
    body = msgspec.json.encode({"chart_key": key, "by": "ann", "reason": "new GPU"})
    with pytest.raises(nats.errors.TimeoutError):  # the engine stopped before it could answer
        await nc.request(subjects.spc_rebaseline(), body, timeout=5)
    assert await task == 1
    assert decode_record((await charts.get(key)).value or b"") == shown  # the public write failed
    stream.config.max_msg_size = -1
    await js.update_stream(stream.config)

    await finish(js, cfg, events, head)
    reference = Reference(cfg)
    expected = await reference.feed(events[:head])
    expected += reference.rebaseline(key, "ann", "new GPU")
    expected += await reference.feed(events[head:])
    assert_exactly(await violations(js), expected)
    await assert_same_charts(js, reference)
    record = decode_record((await charts.get(key)).value or b"")
    assert record.view is not None
    assert record.view.baseline is not None
    assert record.view.baseline.created_by == "ann"
    await nc.close()


async def test_an_engine_of_this_version_continues_exactly_from_the_previous_versions_records(
    nats_url: str,
) -> None:
    """A chart bucket written by the engine before the split (full records, no state bucket):
    this version loads each chart from its record and continues exactly."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(1400, models=("m1", "m2", "m3"), shift_at=1000, seed=13)
    head = 800
    await publish_all(js, events[:head])
    cfg = settings(nats_url)
    reference = Reference(cfg)
    await reference.feed(events[:head])
    await write_previous_version(js, reference, events)
    names = {stream.config.name for stream in await js.streams_info()}
    assert f"KV_{subjects.SPC_STATE_BUCKET}" not in names

    await finish(js, cfg, events, head)
    expected = await reference.feed(events[head:])
    assert expected, "the shift after the upgrade opens episodes"
    assert_exactly(await violations(js), expected)
    await assert_same_charts(js, reference)
    await nc.close()


async def test_a_stale_state_record_from_an_older_baseline_is_not_used(nats_url: str) -> None:
    """This version ran first (its state records: the first baselines); then an engine of the
    previous version ran on, re-baselined m1 and wrote full records again (a downgrade). Back on
    this version, the full records win: the state records name no record they continued from.
    Using them would chart m1 on its old baseline and skip what the previous version charted."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(1500, models=("m1", "m2"), shift_at=1150, seed=17)
    first, downgraded = 500, 900
    await publish_all(js, events[:first])
    cfg = settings(nats_url)
    await run_until(js, cfg, events, first)
    published = len(await violations(js))

    await publish_all(js, events[first:downgraded])
    reference = Reference(cfg)
    await reference.feed(events[:first])
    rebaselined = [k for k in reference.engine.charts if k.startswith("ollama.m1.")]
    for key in rebaselined:
        reference.rebaseline(key, "ann", "new GPU")
    await reference.feed(events[first:downgraded])
    await write_previous_version(js, reference, events)

    await finish(js, cfg, events, downgraded)
    expected = await reference.feed(events[downgraded:])
    assert expected, "the shift after the upgrade opens episodes"
    assert_exactly((await violations(js))[published:], expected)
    await assert_same_charts(js, reference)
    await nc.close()


async def test_probes_that_change_nothing_readers_see_write_state_but_no_public_record(nats_url: str) -> None:
    """In control and armed, every probe changes a chart's state, not what readers see: its
    state record is written each snapshot, its public record (watched by every API process) not."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(1000, models=("m1",), seed=21)
    head = 600
    await publish_all(js, events[:head])
    cfg = settings(nats_url)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(cfg, stop))
    try:
        await wait_consumed(js, events, head)
        await wait_checkpoint(js, events, head)
        charts = await js.key_value(subjects.SPC_CHARTS_BUCKET)
        state = await js.key_value(subjects.SPC_STATE_BUCKET)
        keys = [
            chart_key("ollama", "m1", "t-m1", prompt, metric)
            for prompt in ("simple", "medium")
            for metric in CHARTED_METRICS
        ]
        series = [series_key("ollama", "m1", "t-m1", prompt) for prompt in ("simple", "medium")]

        async def revisions(kv: KeyValue, names: Sequence[str]) -> list[int]:
            return [(await kv.get(name)).revision or 0 for name in names]

        public_before, state_before = await revisions(charts, keys), await revisions(state, series)
        for i in range(head, len(events), 20):  # several snapshots while they arrive
            await publish_all(js, events[i : i + 20])
            await asyncio.sleep(0.1)
        await wait_consumed(js, events, len(events))
        await wait_checkpoint(js, events, len(events))
        public_after, state_after = await revisions(charts, keys), await revisions(state, series)
    finally:
        stop.set()
        assert await task == 0
    assert all(a > b for a, b in zip(state_after, state_before, strict=True))
    unchanged = [k for k, a, b in zip(keys, public_after, public_before, strict=True) if a == b]
    assert len(unchanged) >= len(keys) // 2, "public records rewritten though nothing shown changed"
    reference = Reference(cfg)
    await reference.feed(events)
    await assert_same_charts(js, reference)
    await nc.close()


async def test_readers_see_each_change_at_once_while_the_state_waits_for_its_interval(nats_url: str) -> None:
    """With a state interval far longer than the snapshot interval, the public records follow the
    charts (an episode opening shows within a snapshot interval) while no state and no checkpoint
    is written; the stop writes both, and the charts are then exactly an uninterrupted engine's."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(700, models=("m1",), shift_at=500, seed=23)
    await publish_all(js, events)
    cfg = dataclasses.replace(settings(nats_url), state_interval_s=600)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(cfg, stop))
    key = chart_key("ollama", "m1", "t-m1", "simple", "latency_ms")
    try:
        await wait_consumed(js, events, len(events))
        charts = await js.key_value(subjects.SPC_CHARTS_BUCKET)

        async def shown_open() -> bool:
            with contextlib.suppress(KeyNotFoundError):
                record = decode_record((await charts.get(key)).value or b"")
                return record.view is not None and bool(record.view.open_episodes)
            return False

        await eventually(shown_open, what="the open episode in the public record")
        state = await js.key_value(subjects.SPC_STATE_BUCKET)
        with pytest.raises(KeyNotFoundError):  # no state written yet
            await state.get(series_key("ollama", "m1", "t-m1", "simple"))
        with pytest.raises(KeyNotFoundError):  # nor a checkpoint: a takeover would replay it all
            await charts.get(checkpoint_key(partition_of(events[0])))
    finally:
        stop.set()
        assert await task == 0
    reference = Reference(cfg)
    await reference.feed(events)
    await assert_same_charts(js, reference)
    await nc.close()


@pytest.mark.fault
async def test_a_previous_versions_record_stays_until_the_state_that_replaces_it_is_written(
    nats_url: str,
) -> None:
    """Upgraded with a long state interval: a chart loaded from a full record of the previous
    version takes points, but its record (the only copy of its past) is not replaced by a public
    record before its state is written. Killed with SIGKILL before that, the next engine starts
    from the full records again and ends exactly as an engine that never stopped."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(1300, models=("m1", "m2"), shift_at=1000, seed=29)
    head = 800
    await publish_all(js, events[:head])
    cfg = settings(nats_url)
    reference = Reference(cfg)
    await reference.feed(events[:head])
    charts = await write_previous_version(js, reference, events)
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "LLMSCOPE_SPC_BASELINE_N": str(cfg.baseline_n),
        "LLMSCOPE_SPC_SNAPSHOT_INTERVAL_S": "0.05",
        "LLMSCOPE_SPC_BATCH_SIZE": "32",
        # The second engine writes its state within 15 s however few events it charted.
        "LLMSCOPE_SPC_STATE_MAX_INTERVAL_S": "15",
    }
    cmd = [sys.executable, "-m", "llmscope.spc_engine"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, env={**env, "LLMSCOPE_SPC_STATE_INTERVAL_S": "600"}, stderr=asyncio.subprocess.DEVNULL, **tied()
    )
    try:
        await publish_all(js, events[head:])
        await wait_consumed(js, events, len(events))
        await asyncio.sleep(0.3)  # a few snapshot intervals: public records would be out by now
        key = chart_key("ollama", "m1", "t-m1", "simple", "latency_ms")
        assert b'"state"' in ((await charts.get(key)).value or b""), "replaced before its state was written"
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.DEVNULL, **tied())
    try:
        await wait_checkpoint(js, events, len(events), within=60)
    finally:
        code = await stop_process(proc, within=20)  # killed if it does not stop: never left running
    assert code == 0
    expected = await reference.feed(events[head:])
    assert expected, "the shift after the upgrade opens episodes"
    assert_exactly(await violations(js), expected)
    await assert_same_charts(js, reference)
    await nc.close()


class _HeldLease:
    def check(self) -> None:
        """Held: nobody else may chart the partition."""


async def test_traffic_charts_are_written_every_snapshot_while_the_checkpoint_waits_for_the_state(
    nats_url: str,
) -> None:
    """A closed traffic minute shows at the next snapshot, not the next state write: the traffic
    records and the aggregator's state go out every snapshot (a replay skips what they cover),
    the checkpoint only with the state."""
    from llmscope.spc_engine.service import SpcService
    from llmscope.spc_engine.service_core import open_state_bucket
    from llmscope.spc_engine.traffic import TrafficPartition, default_configs, traffic_key

    from .test_traffic import run, stream

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    cfg = dataclasses.replace(settings(nats_url), state_interval_s=600)
    charts = await open_bucket(js, cfg.charts_bucket, description="charts")
    service = SpcService(cfg, nc, js, charts, state=await open_state_bucket(js, cfg))
    traffic = service.traffic[0] = TrafficPartition(default_configs(5, 8).__getitem__)
    service._leases[0] = _HeldLease()  # type: ignore[assignment]
    service._last_seq[0] = 99
    run(traffic, stream(12, slow_from=20))
    await service.snapshot(state=False)
    keys = await bucket_keys(js, cfg.charts_bucket)
    shown = [k for k in keys if k.startswith("openai.")]
    assert shown, "the traffic charts' records"
    records = [decode_record((await charts.get(k)).value or b"") for k in shown]
    assert all(r.traffic is not None for r in records)
    assert traffic_key(0) in keys  # the aggregator's clock with them
    assert not traffic.dirty
    assert checkpoint_key(0) not in keys
    await service.snapshot(state=True)
    assert (await charts.get(checkpoint_key(0))).value == b"99"
    await nc.close()
