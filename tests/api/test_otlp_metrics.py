"""The OTLP/HTTP metrics receiver against the real API and nats-server: the GenAI client
histograms become ``traffic_histogram.v1`` events; the stock SDK exporter is answered."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import time
from collections.abc import AsyncIterator

import nats
import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourcePb
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from llmscope.api.runner import run_api
from llmscope.api.settings import ApiSettings
from llmscope.config.env import Secret
from llmscope.proto import codec, subjects
from llmscope.proto.traffic_histogram import TrafficHistogramEvent
from tests.api.conftest import Api, serve
from tests.api.test_otlp_receiver import INGEST_KEY, JSON, PROTOBUF, status

DURATION = "gen_ai.client.operation.duration"
TTFC = "gen_ai.client.operation.time_to_first_chunk"
TOKENS = "gen_ai.client.token.usage"
NOW_NS = int(time.time()) * 1_000_000_000
BOUNDS = (0.5, 1.0, 2.0, 4.0)
GENAI = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "server.address": "api.openai.com",
}


@pytest.fixture
async def otlp_api(settings: ApiSettings) -> AsyncIterator[Api]:
    changed = dataclasses.replace(settings, ingest_key=Secret(INGEST_KEY))
    async with serve(changed) as running:
        yield running


def attrs(values: dict[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in values.items()]


def point(counts: tuple[int, ...], labels: dict[str, str], *, start_s: int = 60) -> HistogramDataPoint:
    return HistogramDataPoint(
        attributes=attrs(labels),
        start_time_unix_nano=NOW_NS - start_s * 1_000_000_000,
        time_unix_nano=NOW_NS,
        count=sum(counts),
        sum=1.5 * sum(counts),
        explicit_bounds=BOUNDS,
        bucket_counts=counts,
    )


def histogram(name: str, *points: HistogramDataPoint, cumulative: bool = False, unit: str = "s") -> Metric:
    temporality = (
        AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
        if cumulative
        else AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    )
    return Metric(
        name=name, unit=unit, histogram=Histogram(data_points=points, aggregation_temporality=temporality)
    )


def request(*metrics: Metric, service: str = "checkout") -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=ResourcePb(attributes=attrs({"service.name": service})),
                scope_metrics=[ScopeMetrics(metrics=metrics)],
            )
        ]
    )


async def histogram_events(nats_url: str) -> list[TrafficHistogramEvent]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        state = (await js.stream_info(subjects.STREAM_TRAFFIC)).state
        out = []
        for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
            msg = await js.get_msg(subjects.STREAM_TRAFFIC, seq)
            assert (msg.subject or "").startswith("llmscope.traffic_histogram.v1.")
            out.append(codec.decode_as(msg.data or b"", TrafficHistogramEvent))
        return out
    finally:
        await nc.close()


def answer(data: bytes) -> ExportMetricsServiceResponse:
    out = ExportMetricsServiceResponse()
    out.ParseFromString(data)
    return out


async def test_genai_histograms_are_published_others_ignored_bad_ones_rejected(
    otlp_api: Api, nats_url: str
) -> None:
    body = request(
        histogram(
            DURATION, point((3, 4, 2, 1, 0), GENAI), point((0, 1, 0, 0, 0), GENAI | {"error.type": "timeout"})
        ),
        histogram(TTFC, point((8, 1, 0, 0, 0), GENAI)),
        histogram(
            TOKENS,
            point((0, 0, 0, 2, 8), GENAI | {"gen_ai.token.type": "output"}),
            cumulative=True,
            unit="{token}",
        ),
        histogram("http.server.request.duration", point((1, 0, 0, 0, 0), {})),  # ignored
        histogram(DURATION, point((1, 0, 0, 0, 0), {"gen_ai.operation.name": "chat"})),  # no model
        Metric(name=TOKENS, gauge=Gauge(data_points=[NumberDataPoint(as_int=3)])),  # not a histogram
    )
    r = await otlp_api.anon.post("/v1/metrics", content=body.SerializeToString(), headers=PROTOBUF)
    assert r.status_code == 200, r.content
    assert r.headers["content-type"] == "application/x-protobuf"
    partial = answer(r.content).partial_success
    assert partial.rejected_data_points == 2
    assert "no gen_ai.request.model" in partial.error_message
    assert "not a histogram" in partial.error_message
    assert "1 data points ignored" in partial.error_message

    events = await histogram_events(nats_url)
    assert [e.metric for e in events] == [DURATION, DURATION, TTFC, TOKENS]
    ok, failed, ttfc, tokens = events
    assert (ok.provider, ok.model, ok.service_name, ok.operation, ok.server_address) == (
        "openai",
        "gpt-4o-mini",
        "checkout",
        "chat",
        "api.openai.com",
    )
    assert (ok.count, ok.bucket_counts, ok.explicit_bounds, ok.temporality, ok.unit) == (
        10,
        (3, 4, 2, 1, 0),
        BOUNDS,
        "delta",
        "s",
    )
    assert ok.sum == 15.0
    assert (ok.ts - ok.start).total_seconds() == 60
    assert (failed.error_type, failed.count) == ("timeout", 1)
    assert ttfc.count == 9
    assert (tokens.token_type, tokens.temporality, tokens.unit) == ("output", "cumulative", "{token}")
    # A retried export (the same windows) is stored once.
    again = await otlp_api.anon.post("/v1/metrics", content=body.SerializeToString(), headers=PROTOBUF)
    assert again.status_code == 200
    assert len(await histogram_events(nats_url)) == 4


async def test_json_and_gzip_with_exemplars_and_bad_bodies(otlp_api: Api, nats_url: str) -> None:
    raw = json_format.MessageToDict(request(histogram(DURATION, point((1, 1, 0, 0, 0), GENAI))))
    dp = raw["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["histogram"]["dataPoints"][0]
    # OTLP/JSON writes exemplar ids in hex, which the protobuf JSON mapping would refuse.
    dp["exemplars"] = [
        {"timeUnixNano": str(NOW_NS), "asDouble": 0.7, "traceId": "ab" * 16, "spanId": "cd" * 8}
    ]
    data = gzip.compress(json.dumps(raw).encode())
    r = await otlp_api.anon.post("/v1/metrics", content=data, headers={**JSON, "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.content
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {}  # nothing rejected, nothing to say: no partial_success
    (event,) = await histogram_events(nats_url)
    assert (event.count, event.bucket_counts) == (2, (1, 1, 0, 0, 0))

    r = await otlp_api.anon.post("/v1/metrics", content=b"\x0a\xff\xff", headers=PROTOBUF)
    assert r.status_code == 400
    assert "ExportMetricsServiceRequest" in status(r.content).message
    r = await otlp_api.anon.post("/v1/metrics", content=b"[]", headers=JSON)
    assert r.status_code == 400
    r = await otlp_api.anon.post("/v1/metrics", content=b"{}", headers={**JSON, "Content-Type": "text/plain"})
    assert r.status_code == 415
    r = await otlp_api.anon.post("/v1/metrics", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 401  # the ingest key is required
    # Counts that do not add up are rejected, with the reason.
    bad = point((1, 1, 0, 0, 0), GENAI)
    bad.count = 5
    r = await otlp_api.anon.post(
        "/v1/metrics", content=request(histogram(DURATION, bad)).SerializeToString(), headers=PROTOBUF
    )
    assert r.status_code == 200
    assert answer(r.content).partial_success.rejected_data_points == 1
    assert "add up" in answer(r.content).partial_success.error_message


def instrumented_app(endpoint: str) -> list[MetricExportResult]:
    """An application's meter provider with the stock OTLP/HTTP metric exporter, recording the
    GenAI client histograms as an instrumentation library does; run in a thread (it blocks)."""
    results: list[MetricExportResult] = []

    class Recording(OTLPMetricExporter):
        def export(self, *args: object, **kwargs: object) -> MetricExportResult:
            result = super().export(*args, **kwargs)  # type: ignore[arg-type]
            results.append(result)
            return result

    exporter = Recording(
        endpoint=f"{endpoint}/v1/metrics",
        headers={"Authorization": f"Bearer {INGEST_KEY}"},
        compression=Compression.Gzip,
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.create({"service.name": "support-bot"})
    )
    meter = provider.get_meter("genai-instrumentation")
    duration = meter.create_histogram(DURATION, unit="s")
    tokens = meter.create_histogram(TOKENS, unit="{token}")
    labels = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "ollama",
        "gen_ai.request.model": "llama3.1:8b",
    }
    for seconds, out in ((1.2, 40), (0.8, 25), (2.5, 90)):
        duration.record(seconds, labels)
        tokens.record(out, labels | {"gen_ai.token.type": "output"})
    meter.create_counter("requests").add(3)  # not a GenAI histogram: ignored
    assert reader.force_flush(10_000)
    provider.shutdown()
    return results


async def test_the_sdk_metric_exporter_is_answered_and_its_histograms_published(
    settings: ApiSettings, nats_url: str
) -> None:
    served = dataclasses.replace(settings, ingest_key=Secret(INGEST_KEY), host="127.0.0.1", port=0)
    async with run_api(served) as url:
        results = await asyncio.to_thread(instrumented_app, url)
    assert results
    assert all(r is MetricExportResult.SUCCESS for r in results)
    events = await histogram_events(nats_url)
    by_metric: dict[str, TrafficHistogramEvent] = {e.metric: e for e in events}
    assert set(by_metric) == {DURATION, TOKENS}
    d = by_metric[DURATION]
    assert (d.count, d.service_name, d.provider, d.model, d.temporality) == (
        3,
        "support-bot",
        "ollama",
        "llama3.1:8b",
        "cumulative",
    )
    assert d.sum == pytest.approx(4.5)
    assert by_metric[TOKENS].token_type == "output"
