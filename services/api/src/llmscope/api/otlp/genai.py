"""GenAI spans (OpenTelemetry semantic conventions) -> ``telemetry.v1`` events of real traffic.

A span is a GenAI inference when ``gen_ai.operation.name`` is one of :data:`OPERATIONS`; every
other span (HTTP server spans, database calls, agent and tool spans) is ignored and counted. An
inference span becomes one :class:`TelemetryEvent` with ``source="traffic"``:

- ``prompt_id`` ``traffic:<operation>`` (``traffic:chat``): never the id of a probe prompt, so the
  SPC engine keeps traffic on charts of its own, apart from the like-for-like probe charts;
- ``model``: ``gen_ai.request.model`` (what the application asked for, present on failures too),
  else ``gen_ai.response.model``; the latter is kept as ``response_model``;
- ``provider``: the API flavour of ``gen_ai.provider.name`` (older instrumentations:
  ``gen_ai.system``), see :data:`PROVIDER_KINDS`; any other provider is ``other``, and the name
  as sent is kept as ``provider_name``;
- ``target`` and ``host``: ``server.address`` (else the provider's name);
- ``latency_ms``: end minus start time; ``ts``: the start time;
- ``ttft_ms``: ``gen_ai.response.time_to_first_chunk`` (seconds; also the names two popular
  instrumentations use), only on streamed responses; the first *chunk* may carry no content yet;
- ``prompt_eval_count`` / ``eval_count``: ``gen_ai.usage.input_tokens`` / ``output_tokens``
  (older: ``prompt_tokens`` / ``completion_tokens``);
- failed when ``error.type`` is set or the span's status is ERROR: ``error_type`` keeps the type
  and ``status`` classifies it (:func:`classify`).

The event id is derived from the trace and span ids, so an exporter that retries an export has its
spans deduplicated by JetStream (``Nats-Msg-Id``) instead of charted twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from llmscope.proto.base import EARLIEST, LATEST
from llmscope.proto.telemetry import ProbeStatus, ProviderKind, TelemetryEvent, traffic_prompt_id

OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
"""``gen_ai.operation.name`` values that are one request to a model (``generate_content`` is
Gemini's name for chat). Agent, tool and retrieval operations are not: they are ignored."""

PROVIDER_KINDS: dict[str, ProviderKind] = {
    "openai": "openai",
    "azure.ai.openai": "openai",
    "az.ai.openai": "openai",  # gen_ai.system before semantic conventions 1.37
    "azure_openai": "openai",
    "anthropic": "anthropic",
    "ollama": "ollama",
}
"""Providers whose API flavour LLMscope knows; every other one is ``other``."""

MAX_AHEAD = timedelta(days=1)
TTFT_ATTRIBUTES = (
    "gen_ai.response.time_to_first_chunk",  # semantic conventions (seconds)
    "gen_ai.response.time_to_first_token",  # Sentry's name (seconds)
    "gen_ai.server.time_to_first_token",  # OpenLIT's name (seconds)
)
_WANTED = frozenset(
    {
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.system",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.request.max_tokens",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.usage.completion_tokens",
        "server.address",
        "error.type",
        "http.response.status_code",
        *TTFT_ATTRIBUTES,
    }
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MIN_GENERATION_MS = 10.0  # below this a speed is noise (a response that arrived in one burst)


@dataclass(slots=True)
class Mapped:
    """What one export request became: events to publish, reasons for rejected GenAI spans, and
    the number of other spans ignored."""

    events: list[TelemetryEvent] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    ignored: int = 0

    def message(self) -> str:
        """The ``partial_success.error_message``: empty when every span was taken."""
        why = f"not a GenAI inference (gen_ai.operation.name not one of {', '.join(sorted(OPERATIONS))})"
        return partial_message("GenAI spans", self.rejected, "spans", self.ignored, why)


def partial_message(kind: str, rejected: list[str], other: str, ignored: int, why_ignored: str) -> str:
    """An OTLP ``partial_success.error_message``: how many items were rejected and why, how many
    were ignored; empty when every item was taken."""
    parts = []
    if rejected:
        # The first few reasons: a batch of one broken instrumentation repeats the same one.
        reasons = "; ".join(list(dict.fromkeys(rejected))[:3])
        parts.append(f"{len(rejected)} {kind} rejected: {reasons}")
    if ignored:
        parts.append(f"{ignored} {other} ignored: {why_ignored}")
    return "; ".join(parts)


def map_traces(request: ExportTraceServiceRequest, *, now: datetime) -> Mapped:
    """Map every span of an export request (pure: ``now`` only bounds timestamps)."""
    out = Mapped()
    latest = min(now + MAX_AHEAD, LATEST)
    for rs in request.resource_spans:
        service = _service_name(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                result = map_span(span, service, latest=latest)
                if result is None:
                    out.ignored += 1
                elif isinstance(result, str):
                    out.rejected.append(result)
                else:
                    out.events.append(result)
    return out


def map_span(span: Span, service: str, *, latest: datetime) -> TelemetryEvent | str | None:
    """The span's event; a reason (str) when it is a GenAI span that cannot be one; None when it
    is no GenAI inference."""
    attrs = _attributes(span.attributes)
    operation = attrs.get("gen_ai.operation.name")
    if operation not in OPERATIONS:
        return None
    if len(span.trace_id) != 16 or len(span.span_id) != 8 or not any(span.trace_id) or not any(span.span_id):
        return f"span {span.name!r}: trace_id and span_id must be 16 and 8 bytes, not all zero"
    trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
    where = f"span {span_id}"
    model = _text(attrs.get("gen_ai.request.model")) or _text(attrs.get("gen_ai.response.model"))
    if not model:
        return f"{where}: no gen_ai.request.model or gen_ai.response.model"
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    ts = datetime.fromtimestamp(start / 1e9, UTC) if start else None
    if ts is None or not EARLIEST <= ts < latest:
        return f"{where}: start time {ts or 'unset'} is not between {EARLIEST:%Y-%m-%d} and a day from now"
    if end < start:
        return f"{where}: ends before it starts"
    latency_ms = (end - start) / 1e6
    provider_name = _text(attrs.get("gen_ai.provider.name")) or _text(attrs.get("gen_ai.system"))
    provider = PROVIDER_KINDS.get(provider_name.lower(), "other")
    address = _text(attrs.get("server.address"))
    error_type = _clean(_text(attrs.get("error.type")), 256)
    failed = bool(error_type) or span.status.code == Status.STATUS_CODE_ERROR
    http_status = _int(attrs.get("http.response.status_code"))
    if http_status is not None and not 100 <= http_status <= 599:
        http_status = None
    ttft_ms = _ttft_ms(attrs, latency_ms)
    output_tokens = _int(attrs.get("gen_ai.usage.output_tokens"), attrs.get("gen_ai.usage.completion_tokens"))
    event: dict[str, Any] = {
        "type": "telemetry.v1",
        "id": f"otlp-{trace_id}{span_id}",
        "ts": ts,
        "source": "traffic",
        "provider": provider,
        "provider_name": _clean(provider_name, 256),
        "model": model,
        "response_model": _clean(_text(attrs.get("gen_ai.response.model")), 256),
        "target": address or provider_name or provider,
        "host": address,
        "service_name": _clean(service, 256),
        "prompt_id": traffic_prompt_id(operation),
        "prompt_hash": "",
        "streaming": ttft_ms is not None,
        "max_tokens": _int(attrs.get("gen_ai.request.max_tokens")),
        "latency_ms": latency_ms,
        "trace_id": trace_id,
        "http_status": http_status,
    }
    if failed:
        error_type = error_type or "_OTHER"  # the conventions' value for an unknown error
        event |= {
            "status": classify(error_type, http_status),
            "error_type": error_type,
            "error": _clean(span.status.message, 2000) or error_type,
        }
    else:
        event |= {
            "ttft_ms": ttft_ms,
            "prompt_eval_count": _int(
                attrs.get("gen_ai.usage.input_tokens"), attrs.get("gen_ai.usage.prompt_tokens")
            ),
            "eval_count": output_tokens,
            "tokens_per_s": _tokens_per_s(output_tokens, latency_ms, ttft_ms),
        }
    try:
        # convert, not the constructor: it checks every limit the consumers' decoders check.
        return msgspec.convert(event, TelemetryEvent)
    except (msgspec.ValidationError, ValueError) as exc:
        return f"{where}: {exc}"


def classify(error_type: str, http_status: int | None = None) -> ProbeStatus:
    """The probe status closest to an ``error.type`` (an HTTP status, an exception's class name)."""
    code = http_status if http_status is not None else _status_code(error_type)
    if code is not None:
        if code == 429:
            return "rate_limited"
        if code == 529:  # Anthropic's "overloaded": the provider short of capacity, not our quota
            return "overloaded"
        if code == 408:
            return "timeout"
        if 400 <= code < 500:
            return "http_4xx"
        if code >= 500:
            return "http_5xx"
    name = error_type.lower().replace("_", "")
    if "timeout" in name or "timedout" in name or "deadline" in name:
        return "timeout"
    if "ratelimit" in name or "toomanyrequests" in name or "quota" in name:
        return "rate_limited"
    if "connect" in name or "refused" in name:
        return "refused"
    if "overloaded" in name:  # Anthropic SDKs' OverloadedError, overloaded_error: HTTP 529
        return "overloaded"
    if any(k in name for k in ("internalserver", "unavailable", "badgateway", "servererror")):
        return "http_5xx"
    if any(k in name for k in ("badrequest", "authentication", "permission", "notfound", "unprocessable")):
        return "http_4xx"
    return "error"


def _status_code(error_type: str) -> int | None:
    return int(error_type) if error_type.isdigit() and len(error_type) == 3 else None


def _service_name(attributes: Iterable[KeyValue]) -> str:
    for kv in attributes:
        if kv.key == "service.name":
            return _text(_value(kv.value))
    return ""


def _attributes(attributes: Iterable[KeyValue]) -> dict[str, object]:
    return {kv.key: _value(kv.value) for kv in attributes if kv.key in _WANTED}


def _value(v: AnyValue) -> object:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _clean(text: str, limit: int) -> str:
    """Free text fit for an event: control characters become spaces, at most ``limit`` characters."""
    return _CONTROL.sub(" ", text).strip()[:limit]


def _int(*values: object) -> int | None:
    """The first value that is a whole number (instrumentations send ints, some doubles)."""
    for value in values:
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    return None


def _ttft_ms(attrs: dict[str, object], latency_ms: float) -> float | None:
    for name in TTFT_ATTRIBUTES:
        value = attrs.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return min(float(value) * 1000.0, latency_ms)
    return None


def _tokens_per_s(tokens: int | None, latency_ms: float, ttft_ms: float | None) -> float | None:
    """Output tokens over generation time (after the first chunk when streamed), as probes have it."""
    if not tokens or (ttft_ms is not None and tokens < 2):
        return None
    generation_ms = latency_ms - (ttft_ms or 0.0)
    if generation_ms < _MIN_GENERATION_MS:
        return None
    return tokens / (generation_ms / 1000.0)
