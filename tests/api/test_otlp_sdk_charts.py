"""Issue 12's acceptance, in one test: a small application instrumented with the OpenTelemetry SDK
and the stock OTLP/HTTP exporter sends GenAI spans to LLMscope, which charts them per minute; a
slowdown of its traffic pages once: one critical violation, and one message from the alerter.

A "minute" is one second here (``LLMSCOPE_SPC_TRAFFIC_WINDOW_S``); the application gives its
spans their start and end times, as an instrumentation does when it records a call."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time

import nats
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from llmscope.api.runner import run_api
from llmscope.api.settings import ApiSettings
from llmscope.config.env import Secret
from llmscope.proto import codec, subjects
from llmscope.proto.alert import NotificationEvent
from llmscope.proto.charts import chart_key
from llmscope.proto.traffic import TrafficMinuteEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine import service as spc
from llmscope.spc_engine.traffic import LPT_P50
from tests.alerter.factories import HttpSink
from tests.alerter.harness import eventually, start_alerter
from tests.api.test_otlp_receiver import INGEST_KEY
from tests.api.test_otlp_traffic_charts import stored
from tests.api.traffic_harness import fast_traffic_settings

WINDOWS, SLOW_FROM, PER_WINDOW = 14, 8, 8


def application(endpoint: str, first: int) -> None:
    """The instrumented application: one chat span per call, 3x slower per token from window
    ``SLOW_FROM`` on; run in a thread, as the exporter blocks."""
    exporter = OTLPSpanExporter(
        endpoint=f"{endpoint}/v1/traces",
        headers={"Authorization": f"Bearer {INGEST_KEY}"},
        compression=Compression.Gzip,
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    processor = BatchSpanProcessor(exporter)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("checkout")
    rng = random.Random(12)
    for w in range(WINDOWS):
        for j in range(PER_WINDOW):
            tokens = rng.randint(20, 200)
            per_token = 10.0 * math.exp(rng.gauss(0, 0.1)) * (3.0 if w >= SLOW_FROM else 1.0)
            start_ns = (first + w) * 1_000_000_000 + j * 100_000_000
            span = tracer.start_span("chat gpt-4o-mini", kind=SpanKind.CLIENT, start_time=start_ns)
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.usage.input_tokens": 300,
                    "gen_ai.usage.output_tokens": tokens,
                    "server.address": "api.openai.com",
                }
            )
            span.end(end_time=start_ns + int(tokens * per_token * 1e6))
    assert processor.force_flush(10_000)
    provider.shutdown()


async def test_an_sdk_instrumented_application_is_charted_and_its_slowdown_pages_once(
    settings: ApiSettings, nats_url: str, database_url: str
) -> None:
    engine_settings = fast_traffic_settings(nats_url)
    stop = asyncio.Event()
    engine = asyncio.create_task(spc.serve(engine_settings, stop))
    served = dataclasses.replace(settings, ingest_key=Secret(INGEST_KEY), host="127.0.0.1", port=0)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    hook = HttpSink()
    hook_url = await hook.start()
    alerter = None
    try:
        async with run_api(served) as url:
            first = math.ceil(time.time()) + 2  # the first window starts after the spans are sent
            await asyncio.to_thread(application, url, first)

            async def all_windows() -> bool:
                return len(await stored(js, subjects.STREAM_TRAFFIC)) >= WINDOWS

            async def paged() -> bool:
                return any(
                    codec.decode_as(d, ViolationEvent).state == "open"
                    for d in await stored(js, subjects.STREAM_VIOLATIONS)
                )

            await eventually(all_windows, within=90, what="every window closed and published")
            await eventually(paged, within=30, what="the slowdown paged")
        # The alerter reads the violations as it would any (from the start of the stream).
        alerter = await start_alerter(database_url, js, {"LLMSCOPE_WEBHOOK_URL": f"{hook_url}/hook"})
        await eventually(lambda: len(hook.requests) >= 1, within=30, what="the page delivered")
        minutes = [codec.decode_as(d, TrafficMinuteEvent) for d in await stored(js, subjects.STREAM_TRAFFIC)]
        assert [m.ts.timestamp() for m in minutes] == [first + w for w in range(WINDOWS)]
        assert all((m.n, m.service_name, m.model) == (PER_WINDOW, "checkout", "gpt-4o-mini") for m in minutes)
        violations = [
            codec.decode_as(d, ViolationEvent) for d in await stored(js, subjects.STREAM_VIOLATIONS)
        ]
        # Once: one open page for the slow minutes, on the latency-per-token chart of this traffic.
        (page,) = [v for v in violations if v.state == "open"]
        assert page.chart_key == chart_key("openai", "gpt-4o-mini", "checkout", "traffic:chat", LPT_P50)
        assert (page.chart, page.severity, page.direction) == ("subgroup", "critical", "up")
        assert page.ts.timestamp() >= first + SLOW_FROM
        kv = await js.key_value(subjects.SPC_CHARTS_BUCKET)
        assert page.chart_key in await kv.keys()  # its chart record, as the dashboard reads it
        # One message, naming that violation: every minute had closed before the alerter read the
        # stream, so no later violation can join its group.
        assert alerter is not None
        await alerter.close()
        (message,) = [codec.decode_as(body, NotificationEvent) for _, body, _ in hook.requests]
        assert [v.id for v in message.firing] == [page.id]
        assert message.status == "firing"
    finally:
        stop.set()
        assert await asyncio.wait_for(engine, 30) == 0
        if alerter is not None:
            await alerter.close()
        await hook.stop()
        await nc.close()
