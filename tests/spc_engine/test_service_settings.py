"""Per-model settings through the service on a real nats-server: adopted at a recorded point."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence

import msgspec
import nats
import pytest
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from llmscope.bus.kv import open_bucket
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.proto import subjects
from llmscope.proto.chartconfig import DEFAULTS_KEY, decode_defaults
from llmscope.proto.charts import ChartRecord, chart_key, decode_record
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.spc_engine.config import to_settings
from llmscope.spc_engine.engine import Engine, SettingsLog
from llmscope.spc_engine.partition_consumer import partition_durable
from llmscope.spc_engine.service import SpcService
from llmscope.spc_engine.service_core import config_for
from llmscope.spc_engine.settings import SpcSettings
from llmscope.spc_engine.settings_watch import settings_key
from tests.processes import stop_process, tied

from .helpers import telemetry_stream
from .test_service import (
    BASELINE,
    Trickle,
    assert_exactly,
    partition_of,
    publish_all,
    settings,
    unfinished,
    violations,
    wait_checkpoint,
    wait_consumed,
    wait_started,
)


async def expected_ids(
    events: Sequence[TelemetryEvent], cfg: SpcSettings, logs: Sequence[SettingsLog]
) -> list[str]:
    engine = Engine(config_for=lambda m: config_for(cfg, m))
    for log in logs:
        engine.load_settings_log(log)
    out: list[str] = []
    for seq, ev in enumerate(events, start=1):
        out += [v.id for v in await engine.on_telemetry(ev, seq)]
    return out


async def settings_log(js: JetStreamContext, provider: str, model: str) -> SettingsLog:
    kv = await js.key_value(subjects.SPC_CHARTS_BUCKET)
    return msgspec.json.decode((await kv.get(settings_key(provider, model))).value or b"", type=SettingsLog)


async def seen(service: SpcService, provider: str, model: str) -> None:
    """Wait until the service has seen a change of the model's overrides (not adopted yet)."""
    for _ in range(500):
        if (provider, model) in service.pending_overrides:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the engine did not see the overrides")


async def record(charts: KeyValue, metric: str) -> ChartRecord:
    entry = await charts.get(chart_key("ollama", "m1", "t-m1", "simple", metric))
    return decode_record(entry.value or b"")


def overrides(**fields: object) -> bytes:
    return msgspec.json.encode({"updated_by": "ann", "reason": "tuning", **fields})


async def test_a_rule_switch_applies_at_once_and_a_transform_change_rebaselines(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(300)
    cfg = settings(nats_url)
    charts = await open_bucket(js, cfg.charts_bucket, description="test")
    service = SpcService(cfg, nc, js, charts)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await publish_all(js, events[:150])
        await wait_consumed(js, events, 150)
        defaults = decode_defaults((await charts.get(DEFAULTS_KEY)).value or b"")
        assert defaults.metrics["latency_ms"] == to_settings(config_for(cfg, "latency_ms"))
        assert defaults.metrics["latency_ms"].baseline_n == BASELINE

        config = await js.key_value(subjects.SPC_CONFIG_BUCKET)  # the engine created it
        body = overrides(rules={"r1": {"enabled": False}}, metrics={"ttft_ms": {"transform": "none"}})
        await config.put(subjects.kv_key("ollama", "m1"), body)
        await seen(service, "ollama", "m1")
        await publish_all(js, events[150:])
        await wait_consumed(js, events, 300)
        await wait_checkpoint(js, events, 300)  # the next snapshot

        log = await settings_log(js, "ollama", "m1")
        assert [c.from_seq for c in log.changes] == [151]
        latency = await record(charts, "latency_ms")
        assert latency.view is not None
        assert "R1" not in latency.view.rules
        assert latency.view.settings is not None
        assert latency.view.settings.rules is not None
        assert latency.view.settings.rules.r1 is not None
        assert latency.view.settings.rules.r1.enabled is False
        assert latency.view.baseline is not None
        assert latency.view.baseline.number == 0
        ttft = await record(charts, "ttft_ms")
        assert ttft.view is not None
        assert ttft.view.settings is not None
        assert ttft.view.settings.transform == "none"
        assert ttft.view.baseline is not None
        assert ttft.view.baseline.number == 1
        assert ttft.view.baseline.created_by == "ann"
        assert ttft.view.baseline.reason == "configuration changed: transform log -> none (tuning)"
        assert ttft.view.limits is not None
        assert ttft.view.limits.transform == "none"
        got = [v.id for v in await violations(js)]
        assert got == await expected_ids(events, cfg, [log])

        # Removing the overrides brings the defaults back from the next batch.
        await config.delete(subjects.kv_key("ollama", "m1"))
        await seen(service, "ollama", "m1")
        more = telemetry_stream(302, seed=1)[300:]
        await publish_all(js, more)
        await wait_consumed(js, [*events, *more], 302)
        log = await settings_log(js, "ollama", "m1")
        assert [(c.from_seq, c.overrides is None) for c in log.changes][-1] == (301, True)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    await nc.close()


@pytest.mark.fault
async def test_kill_9_around_a_settings_change_publishes_exactly_the_uninterrupted_violations(
    nats_url: str,
) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    events = telemetry_stream(3000, models=("a", "b"), shift_at=1500, seed=7)
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "LLMSCOPE_SPC_BASELINE_N": str(BASELINE),
        "LLMSCOPE_SPC_SNAPSHOT_INTERVAL_S": "0.3",
        "LLMSCOPE_SPC_BATCH_SIZE": "32",
    }
    cmd = [sys.executable, "-m", "llmscope.spc_engine"]
    created = None
    durable = partition_durable(partition_of(events[0]))

    async def start() -> asyncio.subprocess.Process:
        nonlocal created
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stderr=asyncio.subprocess.DEVNULL, **tied()
        )
        try:
            created = await wait_started(js, durable, created)
        except BaseException:  # the caller never gets it to stop
            await stop_process(proc, signal.SIGKILL)
            raise
        return proc

    async def kill(proc: asyncio.subprocess.Process) -> None:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    await publish_all(js, events[:1200])
    proc = await start()
    try:
        await wait_consumed(js, events, 1200)
        config = await js.key_value(subjects.SPC_CONFIG_BUCKET)
        await config.put(
            subjects.kv_key("ollama", "a"),
            overrides(transform="none", rules={"r2": {"enabled": False}}),
        )
        await config.put(subjects.kv_key("ollama", "b"), overrides(cusum={"k": [0.5], "h": [5.0]}))
        await asyncio.sleep(1.0)  # seen while idle: adopted from the next batch on
        publishing = Trickle(js, events[1200:])
        await wait_consumed(js, events, 1260)  # soon after the change: before its snapshot, likely
    finally:
        await kill(proc)
    assert await unfinished(js, events, len(events)), "killed too late to test anything"
    proc = await start()
    try:
        await wait_consumed(js, events, 2000)
    finally:
        await kill(proc)
    await publishing.finish()
    proc = await start()
    try:
        await wait_consumed(js, events, len(events), within=120)
    finally:
        code = await stop_process(proc, within=20)  # killed if it does not stop: never left running
    assert code == 0
    logs = [await settings_log(js, "ollama", m) for m in ("a", "b")]
    for log in logs:
        assert len(log.changes) == 1
        assert 1200 < log.changes[0].from_seq < 1300
    got = await violations(js)
    assert_exactly(got, await expected_ids(events, settings(nats_url), logs))
    rebaselined = [v for v in got if v.model == "a" and v.baseline.created_by == "ann"]
    assert rebaselined, "violations after the change name the baseline the change started"
    await nc.close()
