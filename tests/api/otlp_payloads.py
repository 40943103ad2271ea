"""OTLP trace payloads built with the official ``opentelemetry-proto`` types, as exporters send them."""

from __future__ import annotations

import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

Value = str | int | float | bool


def kv(key: str, value: Value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def ids(n: int) -> tuple[bytes, bytes]:
    """A trace id and a span id, distinct per ``n``."""
    return (0xABC0000000000000_0000000000000000 + n).to_bytes(16, "big"), (0x5000 + n).to_bytes(8, "big")


def span(
    n: int,
    attributes: dict[str, Value],
    *,
    start_ns: int | None = None,
    duration_ms: float = 800.0,
    error: bool = False,
    name: str = "",
) -> Span:
    trace_id, span_id = ids(n)
    start = start_ns if start_ns is not None else time.time_ns() - 60_000_000_000
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        name=name
        or f"{attributes.get('gen_ai.operation.name', 'GET')} {attributes.get('gen_ai.request.model', '')}",
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=start,
        end_time_unix_nano=start + int(duration_ms * 1e6),
        attributes=[kv(k, v) for k, v in attributes.items()],
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
    )


def chat(n: int, **extra: Value) -> dict[str, Value]:
    """Attributes of an OpenAI chat call as the GenAI conventions describe it."""
    attrs: dict[str, Value] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 100 + n,
        "gen_ai.usage.output_tokens": 40,
        "server.address": "api.openai.com",
        "server.port": 443,
    }
    attrs.update(extra)
    return attrs


def export(*spans: Span, service: str = "checkout") -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv("service.name", service)]),
                scope_spans=[ScopeSpans(spans=list(spans))],
            )
        ]
    )
