"""The mapping of GenAI spans to traffic telemetry (pure: no bus, no HTTP)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from llmscope.api.otlp.genai import classify, map_traces
from llmscope.proto import codec
from llmscope.proto.telemetry import TelemetryEvent
from tests.api.otlp_payloads import Value, chat, export, ids, span

NOW = datetime.now(UTC)


def one(*spans: Span, service: str = "checkout") -> TelemetryEvent:
    mapped = map_traces(export(*spans, service=service), now=NOW)
    assert not mapped.rejected, mapped.rejected
    assert len(mapped.events) == 1
    return mapped.events[0]


def test_a_chat_span_becomes_a_traffic_event() -> None:
    start = 1_760_000_000_000_000_000
    ev = one(
        span(1, chat(1, **{"gen_ai.response.time_to_first_chunk": 0.25}), start_ns=start, duration_ms=1250)
    )
    trace_id, span_id = ids(1)
    assert ev.id == f"otlp-{trace_id.hex()}{span_id.hex()}"
    assert ev.trace_id == trace_id.hex()
    assert ev.ts == datetime.fromtimestamp(start / 1e9, UTC)
    assert (ev.source, ev.service_name, ev.provider, ev.provider_name) == (
        "traffic",
        "checkout",
        "openai",
        "openai",
    )
    assert (ev.model, ev.response_model) == ("gpt-4o-mini", "gpt-4o-mini-2024-07-18")
    assert (ev.target, ev.host, ev.prompt_id, ev.prompt_hash) == (
        "api.openai.com",
        "api.openai.com",
        "traffic:chat",
        "",
    )
    assert ev.status == "ok"
    assert ev.error_type is None
    assert ev.latency_ms == pytest.approx(1250)
    assert ev.ttft_ms == pytest.approx(250)
    assert ev.streaming
    assert (ev.prompt_eval_count, ev.eval_count) == (101, 40)
    assert ev.tokens_per_s == pytest.approx(40 / 1.0)
    # What the consumers decode is what was mapped.
    assert codec.decode_as(codec.encode(ev), TelemetryEvent) == ev


def test_older_attribute_names_and_other_providers() -> None:
    older: dict[str, Value] = {
        "gen_ai.operation.name": "text_completion",
        "gen_ai.system": "az.ai.openai",
        "gen_ai.response.model": "davinci",
        "gen_ai.usage.prompt_tokens": 7,
        "gen_ai.usage.completion_tokens": 9,
    }
    ev = one(span(2, older))
    assert (ev.provider, ev.provider_name, ev.model, ev.prompt_id) == (
        "openai",
        "az.ai.openai",
        "davinci",
        "traffic:text_completion",
    )
    assert (ev.prompt_eval_count, ev.eval_count) == (7, 9)
    assert ev.target == "az.ai.openai"  # no server.address: the provider names the endpoint
    assert not ev.streaming
    assert ev.ttft_ms is None
    gemini = one(span(3, chat(3, **{"gen_ai.provider.name": "gcp.gemini", "server.address": "g.example"})))
    assert (gemini.provider, gemini.provider_name, gemini.target) == ("other", "gcp.gemini", "g.example")
    assert one(span(4, chat(4, **{"gen_ai.provider.name": "Anthropic"}))).provider == "anthropic"


@pytest.mark.parametrize(
    ("error_type", "http_status", "status"),
    [
        ("RateLimitError", None, "rate_limited"),
        ("429", None, "rate_limited"),
        ("503", None, "http_5xx"),
        ("404", None, "http_4xx"),
        ("APITimeoutError", None, "timeout"),
        ("timeout", None, "timeout"),
        ("APIConnectionError", None, "refused"),
        ("InternalServerError", None, "http_5xx"),
        ("OverloadedError", None, "overloaded"),
        ("overloaded_error", None, "overloaded"),
        ("529", None, "overloaded"),
        ("APIStatusError", 529, "overloaded"),
        ("AuthenticationError", None, "http_4xx"),
        ("java.lang.IllegalStateException", None, "error"),
        ("_OTHER", None, "error"),
        ("APIError", 502, "http_5xx"),
    ],
)
def test_error_types_are_classified(error_type: str, http_status: int | None, status: str) -> None:
    assert classify(error_type, http_status) == status


def test_failed_spans_are_failed_events_with_their_error_type() -> None:
    typed = one(span(5, chat(5, **{"error.type": "RateLimitError"})))
    assert (typed.status, typed.error_type, typed.error) == (
        "rate_limited",
        "RateLimitError",
        "RateLimitError",
    )
    assert typed.latency_ms is not None
    assert typed.eval_count is None
    errored = one(span(6, chat(6), error=True))  # status ERROR, no error.type
    assert (errored.status, errored.error_type) == ("error", "_OTHER")
    assert not errored.ok


def test_other_spans_are_ignored_and_broken_genai_spans_rejected() -> None:
    now_ns = int(NOW.timestamp() * 1e9)
    mapped = map_traces(
        export(
            span(10, {"http.request.method": "GET"}),  # an HTTP span of the same application
            span(11, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}),
            span(12, chat(12)),
            span(13, {k: v for k, v in chat(13).items() if "model" not in k}),  # no model
            span(14, chat(14), start_ns=now_ns + 3 * 86_400 * 10**9),  # days ahead
            span(15, chat(15, **{"gen_ai.request.model": "a\nb"})),  # a newline in a name
            span(16, chat(16), duration_ms=2 * 86_400_000),  # longer than a day
        ),
        now=NOW,
    )
    assert [e.id[-4:] for e in mapped.events] == ["500c"]
    assert mapped.ignored == 2
    assert len(mapped.rejected) == 4
    assert "no gen_ai.request.model" in mapped.rejected[0]
    assert "start time" in mapped.rejected[1]
    assert "control characters" in mapped.rejected[2]
    assert "latency_ms" in mapped.rejected[3]
    message = mapped.message()
    assert message.startswith("4 GenAI spans rejected: span 000000000000500d: no gen_ai.request.model")
    assert "2 spans ignored: not a GenAI inference" in message


def test_zero_ids_are_rejected() -> None:
    bad = span(20, chat(20))
    bad.trace_id = bytes(16)
    mapped = map_traces(export(bad), now=NOW)
    assert not mapped.events
    assert "trace_id and span_id" in mapped.rejected[0]
