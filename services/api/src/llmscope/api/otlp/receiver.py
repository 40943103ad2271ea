"""The OTLP/HTTP receivers: ``POST /v1/traces`` -> traffic telemetry on the bus, and
``POST /v1/metrics`` -> GenAI metric data points (``traffic_histogram.v1``) on the bus.

Answers as the OTLP specification asks of a server:

- 200 once JetStream has acknowledged every event: an ``ExportTraceServiceResponse`` whose
  ``partial_success`` counts the rejected GenAI spans and says why, and says how many other spans
  were ignored (with ``rejected_spans`` 0 that is a warning, not a failure);
- 400 with a ``google.rpc.Status`` for a body that cannot be decoded (not retryable);
- 413 for a body over ``LLMSCOPE_MAX_BODY_BYTES``, before or after gzip; 415 for another
  content type or encoding;
- 503 with ``Retry-After`` when NATS is away or did not confirm in time (the exporter retries;
  event ids derived from the span ids make the retry store nothing twice), 429 with
  ``Retry-After`` when too many spans are already waiting for NATS.

Answers are encoded like the request: protobuf for ``application/x-protobuf``, JSON otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from fastapi import APIRouter, Request, Response
from prometheus_client import Counter

from llmscope.api.metrics import ApiMetrics
from llmscope.api.otlp import wire
from llmscope.api.otlp.genai import Mapped, map_traces
from llmscope.api.otlp.genai_metrics import MappedMetrics, map_metrics
from llmscope.bus.publisher import Publisher, PublishFailed
from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.proto.base import Event, utcnow
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.traffic_histogram import TrafficHistogramEvent

log = get_logger("llmscope.api.otlp")

# google.rpc.Code values for the Status bodies of failed requests.
INVALID_ARGUMENT = 3
RESOURCE_EXHAUSTED = 8
UNAVAILABLE = 14

RETRY_AFTER_S = 5
PUBLISH_BATCH = 1024  # messages sent before their acks are awaited together, per request


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer, before FastAPI makes a response of it."""

    status: int
    body: bytes
    encoding: wire.Encoding = "json"
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        return Response(
            self.body, self.status, headers=self.headers, media_type=wire.CONTENT_TYPES[self.encoding]
        )


class TraceReceiver:
    """Decodes, maps and publishes one trace export request; knows nothing of HTTP frameworks."""

    what = "spans"

    def __init__(
        self,
        publisher: Callable[[], Publisher | None],
        metrics: ApiMetrics,
        *,
        max_body_bytes: int,
        max_in_flight: int = 50_000,
        publish_deadline_s: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._publisher = publisher
        self._metrics = metrics
        self._limit = max_body_bytes
        self._max_in_flight = max_in_flight
        self._deadline = publish_deadline_s
        self._clock = clock
        self._in_flight = 0

    @property
    def waiting(self) -> int:
        """Events of requests in progress that JetStream has not acknowledged yet."""
        return self._in_flight

    async def export(self, content_type: str, content_encoding: str, data: bytes) -> Answer:
        try:
            encoding = wire.encoding_of(content_type)
        except wire.UnsupportedMediaType as exc:
            return _failed("json", 415, INVALID_ARGUMENT, str(exc))
        try:
            body = wire.Body(wire.decompress(content_encoding, data, limit=self._limit), encoding)
        except wire.UnsupportedMediaType as exc:
            return _failed(encoding, 415, INVALID_ARGUMENT, str(exc))
        except wire.TooLarge as exc:
            return _failed(encoding, 413, INVALID_ARGUMENT, str(exc))
        except wire.BadBody as exc:
            return _failed(encoding, 400, INVALID_ARGUMENT, str(exc))
        try:
            # Decoding and mapping a few MB of spans is CPU work: off the event loop.
            mapped = await asyncio.to_thread(self._map, body)
        except wire.BadBody as exc:
            return _failed(body.encoding, 400, INVALID_ARGUMENT, str(exc))
        m = self._counter()
        m.labels("rejected").inc(len(mapped.rejected))
        m.labels("ignored").inc(mapped.ignored)
        if mapped.rejected:
            log.info(
                f"GenAI {self.what} rejected", count=len(mapped.rejected), first=mapped.rejected[0][:300]
            )
        refused = await self._publish(mapped.events, body.encoding)
        if refused is not None:
            return refused
        m.labels("accepted").inc(len(mapped.events))
        return Answer(
            200, self._response(body.encoding, len(mapped.rejected), mapped.message()), body.encoding
        )

    def _counter(self) -> Counter:
        return self._metrics.otlp_spans

    def _map(self, body: wire.Body) -> Mapped | MappedMetrics:
        return map_traces(wire.decode_traces(body), now=self._clock())

    def _response(self, encoding: wire.Encoding, rejected: int, message: str) -> bytes:
        return wire.traces_response(encoding, rejected, message)

    def _subject(self, ev: Event) -> str:
        assert isinstance(ev, TelemetryEvent)
        return subjects.telemetry(ev.provider, ev.model)

    async def _publish(self, events: Sequence[Event], encoding: wire.Encoding) -> Answer | None:
        """None once every event is acknowledged; the refusal (429/503) otherwise.

        One JetStream message per event (a retried export then deduplicates span by span), sent
        pipelined: every message of the request goes out before any ack is awaited, and the acks
        are awaited together (:meth:`Publisher.publish_many`), a few times the rate of awaiting
        each in turn."""
        if not events:
            return None
        publisher = self._publisher()
        if publisher is None:
            return _failed(encoding, 503, UNAVAILABLE, "not connected to NATS yet", retry=True)
        if self._in_flight + len(events) > self._max_in_flight and self._in_flight:
            return _failed(
                encoding, 429, RESOURCE_EXHAUSTED, f"too many {self.what} waiting for NATS", retry=True
            )
        self._in_flight += len(events)
        try:
            # Chunks bound the ack wait of one publish_many (its timeout is per call, not per event).
            for start in range(0, len(events), PUBLISH_BATCH):
                chunk = [(self._subject(ev), ev) for ev in events[start : start + PUBLISH_BATCH]]
                await publisher.publish_many(chunk, deadline=self._deadline)
        except PublishFailed as exc:
            log.warning("traffic not confirmed stored", what=self.what, n=len(events), error=str(exc)[:300])
            return _failed(encoding, 503, UNAVAILABLE, f"not confirmed stored, retry: {exc}", retry=True)
        finally:
            self._in_flight -= len(events)
        return None


class MetricsReceiver(TraceReceiver):
    """Decodes, maps and publishes one metrics export request (the GenAI client histograms)."""

    what = "data points"

    def _counter(self) -> Counter:
        return self._metrics.otlp_data_points

    def _map(self, body: wire.Body) -> Mapped | MappedMetrics:
        return map_metrics(wire.decode_metrics(body), now=self._clock())

    def _response(self, encoding: wire.Encoding, rejected: int, message: str) -> bytes:
        return wire.metrics_response(encoding, rejected, message)

    def _subject(self, ev: Event) -> str:
        assert isinstance(ev, TrafficHistogramEvent)
        return subjects.traffic_histogram(ev.provider, ev.model)


def _failed(encoding: wire.Encoding, status: int, code: int, message: str, *, retry: bool = False) -> Answer:
    headers = {"Retry-After": str(RETRY_AFTER_S if status == 503 else 1)} if retry else {}
    return Answer(status, wire.status(encoding, code, message), encoding, headers)


def router(receiver: TraceReceiver, metrics: MetricsReceiver | None = None) -> APIRouter:
    """``POST /v1/traces`` and ``/v1/metrics``; the front door has checked the ingest key and the
    body's size."""
    api = APIRouter(tags=["otlp"])

    @api.post(
        "/v1/traces",
        response_class=Response,
        responses={
            200: {"description": "ExportTraceServiceResponse (partial_success when spans were rejected)"},
            400: {"description": "undecodable body (google.rpc.Status)"},
            401: {"description": "missing or invalid ingest key (LLMSCOPE_INGEST_KEY)"},
            413: {"description": "body over LLMSCOPE_MAX_BODY_BYTES, before or after gzip"},
            415: {"description": "neither application/x-protobuf nor application/json"},
            429: {"description": "too many spans waiting for NATS: retry after Retry-After"},
            503: {"description": "NATS away or not confirmed: retry after Retry-After (deduplicated)"},
        },
    )
    async def export_traces(request: Request) -> Response:
        """OTLP/HTTP trace export (protobuf or JSON, gzip or not): GenAI spans become traffic
        telemetry; authenticate with ``Authorization: Bearer <LLMSCOPE_INGEST_KEY>``."""
        answer = await receiver.export(
            request.headers.get("content-type", ""),
            request.headers.get("content-encoding", ""),
            await request.body(),
        )
        return answer.response()

    if metrics is None:
        return api

    @api.post(
        "/v1/metrics",
        response_class=Response,
        responses={
            200: {
                "description": "ExportMetricsServiceResponse (partial_success when data points were rejected)"
            },
            400: {"description": "undecodable body (google.rpc.Status)"},
            401: {"description": "missing or invalid ingest key (LLMSCOPE_INGEST_KEY)"},
            413: {"description": "body over LLMSCOPE_MAX_BODY_BYTES, before or after gzip"},
            415: {"description": "neither application/x-protobuf nor application/json"},
            429: {"description": "too many data points waiting for NATS: retry after Retry-After"},
            503: {"description": "NATS away or not confirmed: retry after Retry-After (deduplicated)"},
        },
    )
    async def export_metrics(request: Request) -> Response:
        """OTLP/HTTP metrics export (protobuf or JSON, gzip or not): the GenAI client histograms
        (``gen_ai.client.operation.duration``, ``...time_to_first_chunk``, ``gen_ai.client.token.usage``)
        become ``traffic_histogram.v1`` events; other metrics are ignored."""
        answer = await metrics.export(
            request.headers.get("content-type", ""),
            request.headers.get("content-encoding", ""),
            await request.body(),
        )
        return answer.response()

    return api
