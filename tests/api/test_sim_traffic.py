"""The simulator's traffic generator against a real simulator, API (OTLP receiver) and nats-server:
its calls become traffic telemetry with the lengths, streams and failures a real application has;
an outage injected into the simulator reaches its traffic as failed requests, a shift as slower ones."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import time

from llmscope.api.runner import run_api
from llmscope.api.settings import ApiSettings
from llmscope.config.env import Secret
from llmscope.simulator.anomalies import InjectRequest
from llmscope.simulator.client import SimClient
from llmscope.simulator.traffic import TrafficGenerator, TrafficSettings
from tests.alerter.harness import eventually
from tests.api.test_otlp_receiver import INGEST_KEY, stream_events
from tests.simulator.harness import FAST_MODELS, running_sim


async def test_simulated_traffic_is_traced_to_llmscope_and_feels_injected_outages(
    settings: ApiSettings, nats_url: str
) -> None:
    served = dataclasses.replace(settings, ingest_key=Secret(INGEST_KEY), host="127.0.0.1", port=0)
    async with run_api(served) as api_url, running_sim() as sim:
        traffic = TrafficSettings(
            rps=40.0, otlp_url=f"{api_url}/v1/traces", key=Secret(INGEST_KEY), services=("shop", "search")
        )
        generator = TrafficGenerator(traffic, sim.url, FAST_MODELS, rng=random.Random(5))
        stop = asyncio.Event()
        running = asyncio.create_task(generator.run(stop))
        try:

            async def exported(n: int) -> bool:
                return generator.stats.exported >= n

            await eventually(lambda: exported(60), within=60, what="60 spans exported")
            injected = time.time()
            client = SimClient(sim.url)
            await client.inject(InjectRequest(kind="outage", model="fast-c", status=503))
            await client.inject(InjectRequest(kind="shift", model="fast-a:1b", factor=3.0, ramp_s=0.01))
            before = generator.stats.exported
            await eventually(lambda: exported(before + 120), within=60, what="120 more spans exported")
        finally:
            stop.set()
            await running
    assert generator.stats.export_failures == 0
    events = await stream_events(nats_url)
    assert len(events) == generator.stats.exported == generator.stats.requests
    assert {e.source for e in events} == {"traffic"}
    assert {e.service_name for e in events} == {"shop", "search"}
    assert {(e.model, e.provider, e.target) for e in events} == {
        (m.name, m.flavour, m.host) for m in FAST_MODELS
    }
    ok = [e for e in events if e.status == "ok"]
    # Realistic lengths: output tokens spread over more than a decade; 70 % streamed (with a TTFT).
    outputs = sorted(e.eval_count or 0 for e in ok)
    assert outputs[len(outputs) // 10] * 3 < outputs[9 * len(outputs) // 10]
    streamed = [e for e in ok if e.ttft_ms is not None]
    assert 0.5 < len(streamed) / len(ok) < 0.9
    assert all(e.latency_ms is not None and e.ttft_ms <= e.latency_ms for e in streamed)  # type: ignore[operator]
    # The outage: fast-c's requests fail with the simulator's 503, the others go on.
    failed = [e for e in events if e.status != "ok"]
    assert failed
    assert {(e.model, e.status, e.error_type) for e in failed} == {("fast-c", "http_5xx", "503")}
    # The shift: fast-a's time per output token triples for the requests started after it.

    def per_token(after: bool) -> float:
        return statistics.median(
            (e.latency_ms or 0) / e.eval_count
            for e in ok
            if e.model == "fast-a:1b" and e.eval_count and (e.ts.timestamp() > injected + 0.5) == after
        )

    assert per_token(after=True) > 2 * per_token(after=False)
