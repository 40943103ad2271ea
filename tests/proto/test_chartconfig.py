"""Per-model chart settings: validation with the field's path, overlay, effective settings."""

from __future__ import annotations

import msgspec
import pytest

from llmscope.proto import subjects
from llmscope.proto.chartconfig import (
    ChartSettings,
    CusumSettings,
    EwmaSettings,
    ModelOverrides,
    RulesSettings,
    RunTestSettings,
    SigmaTestSettings,
    decode_overrides,
    effective,
    error_path,
    overlay,
)
from llmscope.proto.charts import chart_key, parse_chart_key

FULL = ChartSettings(
    transform="log",
    baseline_n=1000,
    sigma_estimator="mr",
    clear_after=10,
    rules=RulesSettings(
        r1=SigmaTestSettings(enabled=True, k=3.0, severity="warning"),
        r2=RunTestSettings(enabled=True, k=9, severity="info"),
    ),
    ewma=EwmaSettings(enabled=True, lam=0.1, L=3.9, severity="warning"),
    cusum=CusumSettings(enabled=True, k=(0.25, 0.5), h=(20.0, 12.0), severity="critical"),
)


def body(**fields: object) -> bytes:
    return msgspec.json.encode({"updated_by": "ann", **fields})


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"cusum": {"k": [0.5], "h": [-1]}}, "$.cusum.h[0]", "Expected `float` > 0.0"),
        ({"cusum": {"k": [0.5]}}, "$.cusum", "give cusum k and h together"),
        ({"cusum": {"k": [0.5, 1.0], "h": [5]}}, "$.cusum", "cusum needs one h per k"),
        ({"cusum": {"k": [], "h": []}}, "$.cusum.k", "length >= 1"),
        ({"ewma": {"lam": 1.5}}, "$.ewma.lam", "<= 1.0"),
        ({"ewma": {"L": 0}}, "$.ewma.L", "> 0"),
        ({"rules": {"r3": {"k": 2.5}}}, "$.rules.r3.k", "Expected `int | null`"),
        ({"rules": {"r2": {"k": 0}}}, "$.rules.r2.k", ">= 1"),
        ({"rules": {"r1": {"k": -3}}}, "$.rules.r1.k", "> 0"),
        ({"rules": {"r9": {}}}, "$.rules", "unknown field `r9`"),
        ({"rules": {"r2": {"severity": "fatal"}}}, "$.rules.r2.severity", "Invalid enum value 'fatal'"),
        ({"transform": "sqrt"}, "$.transform", "Invalid enum value 'sqrt'"),
        ({"baseline_n": 5}, "$.baseline_n", ">= 10"),
        ({"sigma_estimator": "iqr"}, "$.sigma_estimator", "Invalid enum value"),
        ({"metrics": {"cpu": {}}}, "$.metrics", "unknown field `cpu`"),
        ({"metrics": {"ttft_ms": {"ewma": {"lam": 0}}}}, "$.metrics.ttft_ms.ewma.lam", "> 0"),
        ({"tranform": "log"}, "$", "unknown field `tranform`"),
        ({"updated_by": ""}, "$.updated_by", "length >= 1"),
    ],
)
def test_bad_values_are_refused_with_the_path_of_the_field(
    fields: dict[str, object], path: str, message: str
) -> None:
    with pytest.raises(msgspec.ValidationError) as err:
        decode_overrides(body(**fields), strict=True)
    got_path, got_message = error_path(err.value)
    assert got_path == path
    assert message in got_message


def test_stored_overrides_from_a_newer_version_are_read_ignoring_unknown_fields() -> None:
    newer = body(transform="none", future_knob=3, ewma={"lam": 0.2, "shape": "x"}, metrics={"cpu": {}})
    got = decode_overrides(newer)
    assert got.transform == "none"
    assert got.ewma is not None
    assert got.ewma.lam == 0.2
    with pytest.raises(msgspec.ValidationError, match="unknown field `future_knob`"):
        decode_overrides(newer, strict=True)


def test_updated_by_is_required() -> None:
    with pytest.raises(msgspec.ValidationError) as err:
        decode_overrides(b'{"transform": "none"}')
    assert "updated_by" in str(err.value)


def test_overlay_replaces_only_what_the_top_sets_field_by_field() -> None:
    top = ChartSettings(
        transform="none",
        rules=RulesSettings(r2=RunTestSettings(enabled=False)),
        cusum=CusumSettings(k=(0.5,), h=(5.0,)),
    )
    out = overlay(FULL, top)
    assert out.transform == "none"
    assert out.baseline_n == 1000
    assert out.rules is not None
    assert out.rules.r2 == RunTestSettings(enabled=False, k=9, severity="info")
    assert FULL.rules is not None
    assert out.rules.r1 == FULL.rules.r1
    assert out.cusum == CusumSettings(enabled=True, k=(0.5,), h=(5.0,), severity="critical")
    assert out.ewma == FULL.ewma
    assert overlay(FULL, None) is FULL
    assert overlay(FULL, ChartSettings()) is FULL


def test_effective_settings_are_the_defaults_then_the_model_then_the_metric() -> None:
    ov = decode_overrides(
        body(
            transform="none",
            ewma={"lam": 0.2},
            metrics={"ttft_ms": {"transform": "log", "baseline_n": 200}},
            reason="new GPU",
        )
    )
    assert ov.updated_by == "ann"
    assert ov.reason == "new GPU"
    latency = effective(FULL, ov, "latency_ms")
    ttft = effective(FULL, ov, "ttft_ms")
    assert (latency.transform, latency.baseline_n) == ("none", 1000)
    assert (ttft.transform, ttft.baseline_n) == ("log", 200)
    assert latency.ewma is not None
    assert ttft.ewma is not None
    assert latency.ewma.lam == ttft.ewma.lam == 0.2
    assert latency.ewma.L == 3.9
    assert effective(FULL, None, "latency_ms") == FULL
    # The model-level part leaves the model's extras out.
    assert not isinstance(ov.settings(), ModelOverrides)
    assert ov.settings().transform == "none"


def test_overrides_round_trip_and_leave_unset_fields_out() -> None:
    ov = decode_overrides(body(rules={"r2": {"enabled": False}}))
    encoded = msgspec.json.encode(ov)
    assert decode_overrides(encoded) == ov
    assert b"null" not in encoded
    assert msgspec.json.decode(encoded) == {"rules": {"r2": {"enabled": False}}, "updated_by": "ann"}


def test_chart_keys_are_kv_keys() -> None:
    parts = ("ollama", "llama3.1:8b", "local", "simple-1", "latency_ms")
    key = chart_key(*parts)
    assert key == subjects.kv_key(*parts) == "ollama.llama3=2E1=3A8b.local.simple-1.latency_ms"
    assert parse_chart_key(key) == parts
    with pytest.raises(ValueError, match="not a chart key"):
        parse_chart_key("_settings.ollama.m")
