"""A small application instrumented with the OpenTelemetry SDK exports its GenAI spans to LLMscope
through the stock OTLP/HTTP exporter: the receiver speaks what exporters send."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from llmscope.api.runner import run_api
from llmscope.api.settings import ApiSettings
from llmscope.config.env import Secret
from tests.api.test_otlp_receiver import INGEST_KEY, stream_events


class Recording(OTLPSpanExporter):
    """The stock exporter, remembering what each export returned."""

    results: list[SpanExportResult]

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        self.results.append(result)
        return result


def instrumented_app(endpoint: str, key: str) -> list[SpanExportResult]:
    """What an application does: a tracer provider with the OTLP exporter, two LLM calls (one
    fails), one unrelated span; run in a thread, as the exporter blocks."""
    exporter = Recording(
        endpoint=f"{endpoint}/v1/traces",
        headers={"Authorization": f"Bearer {key}"},
        compression=Compression.Gzip,
    )
    exporter.results = []
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    processor = BatchSpanProcessor(exporter)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("support-bot")
    with tracer.start_as_current_span("POST /ask", kind=SpanKind.SERVER):
        with tracer.start_as_current_span("chat llama3.1:8b", kind=SpanKind.CLIENT) as llm:
            llm.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "ollama",
                    "gen_ai.request.model": "llama3.1:8b",
                    "gen_ai.usage.input_tokens": 120,
                    "gen_ai.usage.output_tokens": 48,
                    "server.address": "gpu-box",
                }
            )
            time.sleep(0.02)
        with tracer.start_as_current_span("chat llama3.1:8b", kind=SpanKind.CLIENT) as failed:
            failed.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "ollama",
                    "gen_ai.request.model": "llama3.1:8b",
                    "server.address": "gpu-box",
                    "error.type": "APITimeoutError",
                }
            )
            failed.set_status(StatusCode.ERROR, "request timed out")
    assert processor.force_flush(10_000)
    provider.shutdown()
    return exporter.results


async def test_the_sdk_exporter_is_answered_and_its_spans_become_traffic(
    settings: ApiSettings, nats_url: str
) -> None:
    served = dataclasses.replace(settings, ingest_key=Secret(INGEST_KEY), host="127.0.0.1", port=0)
    async with run_api(served) as url:
        results = await asyncio.to_thread(instrumented_app, url, INGEST_KEY)
        assert results
        assert all(r is SpanExportResult.SUCCESS for r in results)
        wrong = await asyncio.to_thread(instrumented_app, url, "not-the-ingest-key-0000")
        assert wrong
        assert all(r is SpanExportResult.FAILURE for r in wrong)
    events = await stream_events(nats_url)
    assert len(events) == 2  # the server span is no GenAI inference; the wrong key stored nothing
    ok, failed = sorted(events, key=lambda e: e.status != "ok")
    assert (ok.source, ok.service_name, ok.provider, ok.model, ok.target) == (
        "traffic",
        "support-bot",
        "ollama",
        "llama3.1:8b",
        "gpu-box",
    )
    assert ok.latency_ms is not None
    assert ok.latency_ms >= 20
    assert ok.eval_count == 48
    assert (failed.status, failed.error_type, failed.error) == (
        "timeout",
        "APITimeoutError",
        "request timed out",
    )
