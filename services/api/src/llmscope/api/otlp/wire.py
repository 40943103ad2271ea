"""OTLP/HTTP bodies: protobuf or JSON, plain or gzip, in; the answer in the request's encoding out.

The wire types are the official ``opentelemetry-proto`` ones. OTLP/JSON is the protobuf JSON
mapping with two differences that ``json_format`` does not know: trace and span ids are hex, not
base64, and field names may only be lowerCamelCase (``json_format`` also accepts the proto names,
which is harmless). Unknown fields are ignored, as the specification asks of receivers.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

Encoding = Literal["protobuf", "json"]
CONTENT_TYPES: dict[Encoding, str] = {"protobuf": "application/x-protobuf", "json": "application/json"}


class BadBody(ValueError):
    """A body that cannot be decoded: 400 (the message says why)."""


class UnsupportedMediaType(ValueError):
    """A content type or content encoding other than OTLP's: 415."""


class TooLarge(ValueError):
    """A body over the limit once decompressed: 413."""


@dataclass(frozen=True, slots=True)
class Body:
    """A request body with how it was encoded (the answer is encoded the same way)."""

    data: bytes
    encoding: Encoding


def encoding_of(content_type: str) -> Encoding:
    """The body's encoding from its ``Content-Type``, or :class:`UnsupportedMediaType`."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/x-protobuf":
        return "protobuf"
    if media == "application/json":
        return "json"
    raise UnsupportedMediaType(
        f"content type {media or '(none)'!r}: send application/x-protobuf or application/json"
    )


def decompress(content_encoding: str, data: bytes, *, limit: int) -> bytes:
    """The body as sent, gunzipped when ``Content-Encoding`` says gzip."""
    coding = content_encoding.strip().lower()
    if coding == "gzip":
        return gunzip(data, limit)
    if coding not in ("", "identity"):
        raise UnsupportedMediaType(f"content encoding {coding!r}: send gzip or none")
    return data


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress without ever holding more than ``limit`` bytes (a gzip bomb stops at the limit)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BadBody(f"body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"body over {limit} bytes once decompressed (LLMSCOPE_MAX_BODY_BYTES)")
    if not inflater.eof:
        raise BadBody("body is not valid gzip: truncated")
    return out


def decode_traces(b: Body) -> ExportTraceServiceRequest:
    """An ``ExportTraceServiceRequest``, or :class:`BadBody`."""
    request = ExportTraceServiceRequest()
    _decode(b, request, _hex_ids_to_base64)
    return request


def decode_metrics(b: Body) -> ExportMetricsServiceRequest:
    """An ``ExportMetricsServiceRequest``, or :class:`BadBody`."""
    request = ExportMetricsServiceRequest()
    _decode(b, request, _drop_exemplars)
    return request


def _decode(b: Body, request: Message, fix_json: Callable[[dict[str, Any]], None]) -> None:
    name = type(request).__name__
    if b.encoding == "protobuf":
        try:
            request.ParseFromString(b.data)
        except DecodeError as exc:
            raise BadBody(f"body is not an OTLP protobuf {name}: {exc}") from None
        return
    try:
        raw = msgspec.json.decode(b.data)
    except msgspec.DecodeError as exc:
        raise BadBody(f"body is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BadBody(f"body is not an OTLP/JSON {name}: expected an object")
    fix_json(raw)
    try:
        json_format.ParseDict(raw, request, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise BadBody(f"body is not an OTLP/JSON {name}: {exc}") from None


def _drop_exemplars(raw: dict[str, Any]) -> None:
    """Remove exemplars (unused here) in place: their trace and span ids are hex in OTLP/JSON."""
    for rm in _dicts(raw.get("resourceMetrics", raw.get("resource_metrics"))):
        for sm in _dicts(rm.get("scopeMetrics", rm.get("scope_metrics"))):
            for metric in _dicts(sm.get("metrics")):
                for kind in metric.values():
                    if isinstance(kind, dict):
                        for point in _dicts(kind.get("dataPoints", kind.get("data_points"))):
                            point.pop("exemplars", None)


_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(raw: dict[str, Any]) -> None:
    """Rewrite OTLP/JSON's hex ids in place into the base64 that the protobuf JSON mapping reads."""
    for rs in _dicts(raw.get("resourceSpans", raw.get("resource_spans"))):
        for ss in _dicts(rs.get("scopeSpans", rs.get("scope_spans"))):
            for span in _dicts(ss.get("spans")):
                _rewrite(span)
                for link in _dicts(span.get("links")):
                    _rewrite(link)


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _rewrite(obj: dict[str, Any]) -> None:
    for name in _ID_FIELDS:
        value = obj.get(name)
        if isinstance(value, str) and value:
            try:
                obj[name] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                raise BadBody(f"`{name}` {value[:40]!r} is not hex (OTLP/JSON ids are hex)") from None


def traces_response(encoding: Encoding, rejected: int = 0, message: str = "") -> bytes:
    """``ExportTraceServiceResponse``; ``partial_success`` only when something was rejected or said."""
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    return encode(response, encoding)


def metrics_response(encoding: Encoding, rejected: int = 0, message: str = "") -> bytes:
    """``ExportMetricsServiceResponse``; ``partial_success`` only when something was rejected or said."""
    response = ExportMetricsServiceResponse()
    if rejected or message:
        response.partial_success.rejected_data_points = rejected
        response.partial_success.error_message = message
    return encode(response, encoding)


def status(encoding: Encoding, code: int, message: str) -> bytes:
    """A ``google.rpc.Status``: the body OTLP/HTTP gives every failed request."""
    return encode(status_pb2.Status(code=code, message=message), encoding)


def encode(message: Message, encoding: Encoding) -> bytes:
    if encoding == "protobuf":
        return bytes(message.SerializeToString())
    return str(json_format.MessageToJson(message, indent=None)).encode()


def hex_id(raw: bytes) -> str:
    """A trace or span id as OTLP/JSON and W3C trace context write it."""
    return binascii.hexlify(raw).decode()
