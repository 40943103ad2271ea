"""GenAI client metrics (OpenTelemetry semantic conventions) -> ``traffic_histogram.v1`` events.

Of an ``ExportMetricsServiceRequest`` only the histograms :data:`METRICS` are taken; each data
point becomes one :class:`TrafficHistogramEvent` (the window, the attributes that say which
traffic it is, the counts as sent). Every other metric is ignored and counted. A data point of a
GenAI metric is rejected, with the reason, when it cannot be one: no model, not an explicit-bucket
histogram (an exponential histogram is valid OTLP that LLMscope does not read yet), no
temporality, a time out of range, or counts that do not add up.

The event id is derived from the data point's whole identity, so a retried export is stored once and
two data points of one export are never taken for each other: the metric's name and unit, the
resource's and the scope's every attribute, the scope's name and version, the data point's every
attribute (not only those the event keeps: two local servers told apart by ``server.port`` alone,
or two meters recording the same instrument, are two series) and its window to the nanosecond.
An SDK stamps every data point of one collection with the same window, so the window alone tells
nothing apart; the same series and window sent twice is the same data point.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    DataPointFlags,
    HistogramDataPoint,
    ScopeMetrics,
)

from llmscope.api.otlp.genai import PROVIDER_KINDS, _clean, _text, _value, partial_message
from llmscope.proto.base import EARLIEST, LATEST
from llmscope.proto.traffic_histogram import TrafficHistogramEvent

METRICS = frozenset(
    {
        "gen_ai.client.operation.duration",
        "gen_ai.client.operation.time_to_first_chunk",
        "gen_ai.client.token.usage",
    }
)
MAX_AHEAD = timedelta(days=1)
_ATTRIBUTES = (
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.system",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.token.type",
    "server.address",
    "error.type",
)
_TEMPORALITY = {
    AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA: "delta",
    AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE: "cumulative",
}


@dataclass(slots=True)
class MappedMetrics:
    """What one export request became: events, reasons for rejected GenAI data points, and the
    number of other data points ignored."""

    events: list[TrafficHistogramEvent] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    ignored: int = 0

    def message(self) -> str:
        """The ``partial_success.error_message``: empty when every data point was taken."""
        why = f"not one of {', '.join(sorted(METRICS))}"
        return partial_message("GenAI data points", self.rejected, "data points", self.ignored, why)


def map_metrics(request: ExportMetricsServiceRequest, *, now: datetime) -> MappedMetrics:
    """Map every data point of an export request (pure: ``now`` only bounds timestamps)."""
    out = MappedMetrics()
    latest = min(now + MAX_AHEAD, LATEST)
    for rm in request.resource_metrics:
        service = _clean(_service_name(rm.resource.attributes), 256)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                points = getattr(metric, kind).data_points if kind is not None else ()
                if metric.name not in METRICS:
                    out.ignored += len(points)
                    continue
                if kind != "histogram":
                    out.rejected += [
                        f"{metric.name}: a {kind or 'metric without data'}, not a histogram"
                    ] * max(len(points), 1)
                    continue
                temporality = _TEMPORALITY.get(metric.histogram.aggregation_temporality)
                series = _series_identity(rm.resource.attributes, sm, metric.name, metric.unit)
                for point in metric.histogram.data_points:
                    if point.flags & DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK:
                        out.ignored += 1  # a gap the SDK marks: nothing was measured
                        continue
                    result = map_point(
                        metric.name, metric.unit, temporality, point, service, latest=latest, series=series
                    )
                    if isinstance(result, str):
                        out.rejected.append(result)
                    else:
                        out.events.append(result)
    return out


def map_point(
    name: str,
    unit: str,
    temporality: str | None,
    point: HistogramDataPoint,
    service: str,
    *,
    latest: datetime,
    series: bytes = b"",
) -> TrafficHistogramEvent | str:
    """The data point's event, or the reason it cannot be one. ``series``: what identifies the
    data point's series beyond its own attributes (:func:`_series_identity`), part of its id."""
    attrs = {kv.key: _value(kv.value) for kv in point.attributes if kv.key in _ATTRIBUTES}
    model = _text(attrs.get("gen_ai.request.model")) or _text(attrs.get("gen_ai.response.model"))
    where = f"{name} data point"
    if not model:
        return f"{where}: no gen_ai.request.model or gen_ai.response.model"
    if temporality is None:
        return f"{where}: aggregation temporality unspecified"
    end = datetime.fromtimestamp(point.time_unix_nano / 1e9, UTC) if point.time_unix_nano else None
    if end is None or not EARLIEST <= end < latest:
        return f"{where}: time {end or 'unset'} is not between {EARLIEST:%Y-%m-%d} and a day from now"
    start = (
        datetime.fromtimestamp(point.start_time_unix_nano / 1e9, UTC) if point.start_time_unix_nano else end
    )
    provider_name = _text(attrs.get("gen_ai.provider.name")) or _text(attrs.get("gen_ai.system"))
    parts = {k: _clean(_text(attrs.get(k)), 256) for k in _ATTRIBUTES}
    identity = [
        series.hex(),
        _attributes_identity(point.attributes),
        point.start_time_unix_nano,
        point.time_unix_nano,
    ]
    digest = hashlib.sha256(msgspec.json.encode(identity)).hexdigest()[:32]
    event: dict[str, Any] = {
        "type": "traffic_histogram.v1",
        "id": f"otlpm-{digest}",
        "ts": end,
        "start": start,
        "metric": name,
        "unit": _clean(unit, 64),
        "temporality": temporality,
        "provider": PROVIDER_KINDS.get(provider_name.lower(), "other"),
        "provider_name": _clean(provider_name, 256),
        "model": model,
        "response_model": parts["gen_ai.response.model"],
        "service_name": service,
        "operation": parts["gen_ai.operation.name"],
        "server_address": parts["server.address"],
        "error_type": parts["error.type"],
        "token_type": parts["gen_ai.token.type"],
        "count": point.count,
        "sum": point.sum if point.HasField("sum") else None,
        "min": point.min if point.HasField("min") else None,
        "max": point.max if point.HasField("max") else None,
        "explicit_bounds": tuple(point.explicit_bounds),
        "bucket_counts": tuple(point.bucket_counts),
    }
    try:
        return msgspec.convert(event, TrafficHistogramEvent)
    except (msgspec.ValidationError, ValueError) as exc:
        return f"{where}: {exc}"


def _attributes_identity(attributes: Iterable[KeyValue]) -> list[tuple[str, str]]:
    """Every attribute, in key order, its value as deterministic protobuf bytes (hex): the same
    whether the export came as protobuf or JSON, and whatever the order the SDK wrote them in."""
    return sorted((kv.key, kv.value.SerializeToString(deterministic=True).hex()) for kv in attributes)


def _series_identity(resource: Iterable[KeyValue], scope: ScopeMetrics, name: str, unit: str) -> bytes:
    """What tells a data point's series apart besides its own attributes: the resource's every
    attribute (``service.instance.id``, ``host.name``), the scope (the meter that recorded it) and
    the metric's name and unit."""
    return hashlib.sha256(
        msgspec.json.encode(
            [
                _attributes_identity(resource),
                scope.scope.name,
                scope.scope.version,
                _attributes_identity(scope.scope.attributes),
                name,
                unit,
            ]
        )
    ).digest()


def _service_name(attributes: Iterable[KeyValue]) -> str:
    for kv in attributes:
        if kv.key == "service.name":
            return _text(_value(kv.value))
    return ""
