"""A model disabled in the switches bucket stops being probed at once; the others go on."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import aiohttp
import msgspec
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from llmscope.bus.kv import open_bucket, watch_bucket
from llmscope.bus.publisher import Publisher
from llmscope.prober.metrics import ProberMetrics
from llmscope.prober.outbox import Outbox
from llmscope.prober.prompts import DEFAULT_PROMPTS
from llmscope.prober.scheduler import ProbeOptions, Scheduler
from llmscope.prober.sysmetrics import SystemSampler
from llmscope.prober.targets import simulator_targets
from llmscope.proto import subjects
from llmscope.proto.switches import ModelSwitch, ModelSwitches, model_key
from tests.prober.test_pipeline import FAST
from tests.simulator.harness import FAST_MODELS, running_sim


async def test_disabled_models_are_skipped_live(js: JetStreamContext) -> None:
    kv = await open_bucket(js, subjects.MODELS_BUCKET, description="test")
    switches = ModelSwitches()
    stop = asyncio.Event()
    async with running_sim() as sim, aiohttp.ClientSession() as session:
        targets = simulator_targets(
            sim.url, defaults=FAST, prompts=DEFAULT_PROMPTS[:1], models=FAST_MODELS[:2]
        )
        off, on = targets[0], targets[1]
        metrics = ProberMetrics(CollectorRegistry())
        outbox = Outbox(Publisher(js), metrics)
        scheduler = Scheduler(
            targets,
            session=session,
            outbox=outbox,
            sampler=SystemSampler(load_nvml=False),
            metrics=metrics,
            options=ProbeOptions(prober_id="t", concurrency=2),
            rng=random.Random(3),
            switches=switches,
        )
        tasks = [
            asyncio.create_task(watch_bucket(kv, switches.apply, stop)),
            asyncio.create_task(scheduler.run(stop)),
            asyncio.create_task(outbox.run(stop)),
        ]

        def probes(kind: str, model: str) -> float:
            sample = metrics.probes.labels(f"{kind}/{model}", kind, model, "ok")._value.get()
            return float(sample)

        async def until(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within
            while not check():
                if loop.time() > deadline:
                    raise AssertionError(f"timed out waiting for {what}")
                await asyncio.sleep(0.02)

        await until(lambda: probes(off.kind, off.model) > 0, "the first probes")
        await kv.put(
            model_key(off.kind, off.model),
            msgspec.json.encode(ModelSwitch(provider=off.kind, model=off.model, enabled=False)),
        )
        await until(lambda: not switches.enabled(off.kind, off.model), "the switch at the watcher")
        await asyncio.sleep(0.5)  # a probe in flight finishes
        frozen, running = probes(off.kind, off.model), probes(on.kind, on.model)
        await asyncio.sleep(0.8)
        assert probes(off.kind, off.model) == frozen
        await until(lambda: probes(on.kind, on.model) > running, "the other model's probes")
        await kv.delete(model_key(off.kind, off.model))
        await until(lambda: probes(off.kind, off.model) > frozen, "probes once enabled again")
        stop.set()
        await asyncio.gather(*tasks)
