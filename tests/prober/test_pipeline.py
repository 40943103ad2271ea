"""The prober into a real JetStream: decodable telemetry on the right subjects, NATS outages survived."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import nats
import pytest
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from llmscope.bus.publisher import Publisher
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import DEFAULT_TELEMETRY_PARTITIONS, ensure_streams, telemetry_partition
from llmscope.prober.metrics import ProberMetrics
from llmscope.prober.outbox import Outbox
from llmscope.prober.prompts import DEFAULT_PROMPTS
from llmscope.prober.scheduler import ProbeOptions, Scheduler
from llmscope.prober.sysmetrics import SystemSampler
from llmscope.prober.targets import Target, TargetDefaults, simulator_targets
from llmscope.proto import codec, subjects
from llmscope.proto.base import new_id, utcnow
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.simulator.server import SimServer
from llmscope.stack.embedded import EmbeddedNats
from llmscope.stack.ports import free_port
from tests.simulator.harness import FAST_MODELS, running_sim

FAST = TargetDefaults(interval_s=0.05, jitter=0.1, timeout_s=2.0, streaming=True)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with running_sim() as server:
        yield server


async def _stream_events(
    js: JetStreamContext, want: int, within_s: float = 10.0
) -> list[tuple[str, TelemetryEvent]]:
    sub = await js.subscribe(subjects.TELEMETRY_ALL, ordered_consumer=True)
    out: list[tuple[str, TelemetryEvent]] = []
    try:
        async with asyncio.timeout(within_s):
            while len(out) < want:
                msg = await sub.next_msg(timeout=within_s)
                out.append((msg.subject, codec.decode_as(msg.data, TelemetryEvent)))
    finally:
        await sub.unsubscribe()
    return out


async def _run_for(scheduler: Scheduler, outbox: Outbox, seconds: float) -> None:
    stop = asyncio.Event()
    publishing = asyncio.create_task(outbox.run(stop))
    probing = asyncio.create_task(scheduler.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(probing, publishing)
    await outbox.flush(5.0)


async def test_telemetry_lands_on_the_right_subjects(sim: SimServer, js: JetStreamContext) -> None:
    targets = simulator_targets(sim.url, defaults=FAST, prompts=DEFAULT_PROMPTS[:2], models=FAST_MODELS)
    refused = Target(
        name="down",
        kind="ollama",
        base_url=f"http://127.0.0.1:{free_port()}",
        model="gone",
        prompts=DEFAULT_PROMPTS,
    )
    targets.append(refused)
    metrics = ProberMetrics(CollectorRegistry())
    outbox = Outbox(Publisher(js), metrics)
    async with aiohttp.ClientSession() as session:
        scheduler = Scheduler(
            targets,
            session=session,
            outbox=outbox,
            sampler=SystemSampler(load_nvml=False),
            metrics=metrics,
            options=ProbeOptions(prober_id="test-prober", concurrency=2),
            rng=random.Random(1),
        )
        await _run_for(scheduler, outbox, 1.0)
    assert outbox.published == scheduler.probes >= 12
    events = await _stream_events(js, outbox.published)
    by_target: dict[str, list[TelemetryEvent]] = {}
    for subject, event in events:
        # Published on the public subject, stored with the model's partition appended.
        k = telemetry_partition(event.provider, event.model, DEFAULT_TELEMETRY_PARTITIONS)
        assert subject == f"{subjects.telemetry(event.provider, event.model)}.{k}"
        assert event.prober == "test-prober"
        assert event.prompt_text is None
        assert event.gpu_percent is None
        by_target.setdefault(event.target, []).append(event)
    assert set(by_target) == {t.name for t in targets}
    for name, evs in by_target.items():
        # Prompts rotate: consecutive probes of one target use alternating prompts.
        ids = [e.prompt_id for e in sorted(evs, key=lambda e: e.ts)]
        assert ids[:2] == ["simple-capital", "medium-sky"] or name == "down"
        assert all(e.prompt_hash == next(p.hash for p in DEFAULT_PROMPTS if p.id == e.prompt_id) for e in evs)
        if name == "down":
            assert {e.status for e in evs} == {"refused"}
        else:
            assert {e.status for e in evs} == {"ok"}
            assert all(e.ttft_ms is not None and e.streaming for e in evs)
    ok = metrics.probes.labels("openai/fast-c", "openai", "fast-c", "ok")._value.get()
    assert ok == len(by_target["openai/fast-c"])


async def test_prompt_text_only_when_asked(sim: SimServer, js: JetStreamContext) -> None:
    target = simulator_targets(sim.url, defaults=FAST, prompts=DEFAULT_PROMPTS, models=FAST_MODELS[:1])[0]
    metrics = ProberMetrics(CollectorRegistry())
    outbox = Outbox(Publisher(js), metrics)
    async with aiohttp.ClientSession() as session:
        scheduler = Scheduler(
            [target],
            session=session,
            outbox=outbox,
            sampler=SystemSampler(load_nvml=False),
            metrics=metrics,
            options=ProbeOptions(include_prompt_text=True),
        )
        event = await scheduler.probe_once(target, DEFAULT_PROMPTS[2])
    assert event.prompt_text == DEFAULT_PROMPTS[2].text
    assert event.prompt_class == "complex"
    assert event.max_tokens == DEFAULT_PROMPTS[2].max_tokens
    await outbox.flush(5.0)
    [(_, stored)] = await _stream_events(js, 1)
    assert stored == event


def _event(n: int) -> TelemetryEvent:
    return TelemetryEvent(
        id=new_id(), ts=utcnow(), provider="ollama", model="m", target="t", prompt_id=f"p{n}", prompt_hash="h"
    )


@pytest.mark.fault
async def test_outbox_keeps_probing_while_nats_is_away_and_delivers_after(
    embedded_nats: EmbeddedNats, sim: SimServer
) -> None:
    nc = await nats.connect(embedded_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        js = nc.jetstream()
        await ensure_streams(js, BusSettings())
        metrics = ProberMetrics(CollectorRegistry())
        outbox = Outbox(Publisher(js, timeout=0.3), metrics, maxsize=5, publish_deadline=0.5, retry_delay=0.1)
        stop = asyncio.Event()
        publishing = asyncio.create_task(outbox.run(stop))
        embedded_nats.stop()
        for n in range(8):
            outbox.put(subjects.telemetry("ollama", "m"), _event(n))
        # Probing goes on meanwhile; only the 5 newest events are kept.
        target = simulator_targets(
            sim.url, defaults=FAST, prompts=DEFAULT_PROMPTS[:1], models=FAST_MODELS[:1]
        )[0]
        async with aiohttp.ClientSession() as session:
            scheduler = Scheduler(
                [target],
                session=session,
                outbox=outbox,
                sampler=SystemSampler(load_nvml=False),
                metrics=metrics,
                options=ProbeOptions(),
            )
            probed = await asyncio.wait_for(scheduler.probe_once(target, DEFAULT_PROMPTS[0]), 3)
        # 9 events for 5 places: the 4 oldest go (one maybe only after its publish attempt failed).
        async with asyncio.timeout(5):
            while outbox.dropped < 4:  # noqa: ASYNC110 - polling a counter of the code under test
                await asyncio.sleep(0.05)
        assert outbox.dropped == 4
        assert outbox.published == 0
        embedded_nats.start()
        async with asyncio.timeout(15):
            while len(outbox):  # noqa: ASYNC110 - polling a counter of the code under test
                await asyncio.sleep(0.1)
        stop.set()
        await publishing
        assert outbox.published == 5
        info = await js.stream_info(subjects.STREAM_TELEMETRY)
        # A publish that timed out while NATS went down may still have reached it from the
        # client's reconnect buffer: at least the 5 kept events are there, the probe's last.
        assert 5 <= info.state.messages <= 6
        events = await _stream_events(js, info.state.messages)
        assert events[-1][1].id == probed.id
        assert metrics.dropped._value.get() == outbox.dropped
    finally:
        await nc.close()


async def test_a_crashing_probe_does_not_stop_the_loop(sim: SimServer, js: JetStreamContext) -> None:
    target = simulator_targets(sim.url, defaults=FAST, prompts=DEFAULT_PROMPTS[:1], models=FAST_MODELS[:1])[0]
    metrics = ProberMetrics(CollectorRegistry())
    outbox = Outbox(Publisher(js), metrics)

    class FlakySampler(SystemSampler):
        calls = 0

        async def sample(self):  # type: ignore[no-untyped-def]
            FlakySampler.calls += 1
            if FlakySampler.calls % 2:
                raise RuntimeError("sampler broke")
            return await super().sample()

    async with aiohttp.ClientSession() as session:
        scheduler = Scheduler(
            [replace(target, jitter=0.0)],
            session=session,
            outbox=outbox,
            sampler=FlakySampler(load_nvml=False),
            metrics=metrics,
            options=ProbeOptions(),
        )
        await _run_for(scheduler, outbox, 0.6)
    assert FlakySampler.calls >= 4
    assert outbox.published >= 2
