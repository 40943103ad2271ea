from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from llmscope.proto import codec
from llmscope.proto.base import new_id
from llmscope.proto.deadletter import DeadLetterEvent
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import BaselineRef, ChartLimits, ViolationEvent


def telemetry(**overrides: object) -> TelemetryEvent:
    fields: dict[str, object] = {
        "id": new_id(),
        "ts": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "provider": "ollama",
        "model": "llama3.1:8b",
        "target": "local",
        "prompt_id": "simple-1",
        "prompt_hash": "ab" * 32,
        "latency_ms": 812.5,
        "ttft_ms": 120.0,
        "eval_count": 42,
        "tokens_per_s": 60.2,
    }
    fields.update(overrides)
    return TelemetryEvent(**fields)  # type: ignore[arg-type]


def test_telemetry_round_trips_with_its_type_tag() -> None:
    event = telemetry()
    data = codec.encode(event)
    assert b'"type":"telemetry.v1"' in data
    assert codec.decode(data) == event
    assert codec.decode_as(data, TelemetryEvent) == event


def test_violation_round_trips() -> None:
    limits = ChartLimits(
        transform="log",
        center=800.0,
        sigma=0.3,
        ucl=1960.0,
        lcl=326.0,
        zone_a_upper=1457.0,
        zone_a_lower=439.0,
        zone_b_upper=1080.0,
        zone_b_lower=593.0,
    )
    event = ViolationEvent(
        id="v1",
        ts=datetime(2026, 1, 2, tzinfo=UTC),
        episode_id="v1",
        provider="openai",
        model="gpt-4o-mini",
        metric="latency_ms",
        rule="R1",
        value=2500.0,
        deviation_sigma=3.8,
        limits=limits,
        baseline=BaselineRef(id="b1", n=100),
        point_ids=("p1",),
    )
    assert codec.decode(codec.encode(event)) == event


def test_old_reader_ignores_fields_added_later() -> None:
    raw = msgspec.json.decode(codec.encode(telemetry()))
    raw["field_from_the_future"] = {"nested": [1, 2]}
    decoded = codec.decode(msgspec.json.encode(raw))
    assert isinstance(decoded, TelemetryEvent)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda raw: raw.update(latency_ms=-1), "$.latency_ms"),
        (lambda raw: raw.update(provider="bard"), "$.provider"),
        (lambda raw: raw.pop("model"), "model"),
        (lambda raw: raw.update(cpu_percent=140), "$.cpu_percent"),
        (lambda raw: raw.update(status="exploded"), "$.status"),
        (lambda raw: raw.update(ts="yesterday"), "$.ts"),
    ],
)
def test_invalid_telemetry_is_rejected_naming_the_field(mutate: object, field: str) -> None:
    raw = msgspec.json.decode(codec.encode(telemetry()))
    mutate(raw)  # type: ignore[operator]
    with pytest.raises(codec.DecodeError, match=field.replace("$", r"\$")):
        codec.decode(msgspec.json.encode(raw))


@pytest.mark.parametrize(
    ("overrides", "refusal"),
    [
        ({"host": "gpu\x7f1"}, "`host` must not contain control characters"),
        ({"response_model": "a\x1bb"}, "`response_model` must not contain control characters"),
        ({"error": "x\x00"}, "`error` must not contain NUL characters"),
        ({"model": "\U0001d538" * 86}, "`model` is too long"),
        ({"prompt_id": "traffic:chat"}, "real traffic, and only traffic"),
        ({"ts": "1999-12-31T23:59:59Z"}, "`ts` must be between"),
        # Not printable (str.isprintable), yet no control character: accepted.
        ({"host": "gpu\u20281", "prober": "a\u00a0b", "target": "caf\u00e9"}, None),
    ],
)
def test_a_consumer_decoder_refuses_what_decode_as_refuses(
    overrides: dict[str, object], refusal: str | None
) -> None:
    raw = msgspec.json.decode(codec.encode(telemetry()))
    raw.update(overrides)
    data = msgspec.json.encode(raw)
    decode = codec.decoder(TelemetryEvent)
    if refusal is None:
        assert decode(data) == codec.decode_as(data, TelemetryEvent)
        return
    with pytest.raises(codec.DecodeError, match=refusal) as caught:
        decode(data)
    with pytest.raises(codec.DecodeError) as expected:
        codec.decode_as(data, TelemetryEvent)
    assert str(caught.value) == str(expected.value)


def test_garbage_and_unknown_types_are_decode_errors() -> None:
    with pytest.raises(codec.DecodeError):
        codec.decode(b"\xff\x00 not json")
    with pytest.raises(codec.DecodeError, match="type"):
        codec.decode(b'{"type": "telemetry.v9", "id": "x"}')


def test_dead_letter_is_an_event() -> None:
    event = DeadLetterEvent(
        id="d", ts=datetime(2026, 1, 1, tzinfo=UTC), source="api", subject="s", reason="bad", payload="{}"
    )
    assert codec.decode(codec.encode(event)) == event


def test_numeric_metrics_are_numeric_telemetry_fields() -> None:
    from llmscope.proto.telemetry import NUMERIC_METRICS, PROBE_STATUSES

    fields = {f.name: f for f in msgspec.structs.fields(TelemetryEvent)}
    for name in NUMERIC_METRICS:
        assert name in fields
        assert "float" in str(fields[name].type) or "int" in str(fields[name].type)
    assert PROBE_STATUSES[0] == "ok"
    assert len(PROBE_STATUSES) == 11  # "error" (failed traffic), then "overloaded", added last
    assert PROBE_STATUSES[-2:] == ("error", "overloaded")  # added values go last, nothing moves


def test_an_overloaded_probe_decodes_and_is_a_failure() -> None:
    """``overloaded`` (Anthropic's 529) is a status of its own, apart from ``rate_limited`` (429)."""
    wire = (
        b'{"type":"telemetry.v1","id":"e1","ts":"2026-01-01T00:00:00Z","provider":"anthropic",'
        b'"model":"claude","target":"t","prompt_id":"p","prompt_hash":"h","status":"overloaded",'
        b'"http_status":529}'
    )
    event = codec.decode_as(wire, TelemetryEvent)
    assert (event.status, event.ok) == ("overloaded", False)
    assert codec.decode(codec.encode(event)) == event


def test_a_telemetry_v1_message_from_before_the_traffic_fields_still_decodes() -> None:
    """Fields added to telemetry.v1 have defaults: an older probe message is a probe."""
    old = (
        b'{"type":"telemetry.v1","id":"e1","ts":"2025-01-01T00:00:00Z","provider":"ollama",'
        b'"model":"m","target":"t","prompt_id":"p","prompt_hash":"h","latency_ms":12.5}'
    )
    event = codec.decode_as(old, TelemetryEvent)
    assert (event.source, event.service_name, event.error_type, event.trace_id) == ("probe", "", None, "")
