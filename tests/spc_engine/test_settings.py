"""Per-model settings in the engine: merge onto the configuration, when and how charts change."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest

from llmscope.proto.chartconfig import (
    ChartSettings,
    CusumSettings,
    ModelOverrides,
    RulesSettings,
    RunTestSettings,
    decode_overrides,
)
from llmscope.proto.charts import chart_key
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine.config import (
    ChartConfig,
    apply_settings,
    default_config,
    describe_changes,
    to_settings,
)
from llmscope.spc_engine.engine import (
    ChartSnapshot,
    Engine,
    SettingsChange,
    SettingsLog,
    Snapshot,
    critical_arl0,
    decode_snapshot,
)
from llmscope.spc_engine.service_core import config_for
from llmscope.spc_engine.settings import SpcSettings

from .helpers import telemetry_stream

BASELINE = 40
CHANGE_AT = 301  # stream sequence the change applies from (the shift starts at event 250)


def small(metric: str) -> ChartConfig:
    return msgspec.structs.replace(default_config(metric), baseline_n=BASELINE)


def overrides(**fields: object) -> ModelOverrides:
    return decode_overrides(msgspec.json.encode({"updated_by": "ann", "reason": "tuning", **fields}))


async def run(
    engine: Engine, events: Sequence[TelemetryEvent], change: ModelOverrides | None = None
) -> list[ViolationEvent]:
    out: list[ViolationEvent] = []
    for seq, ev in enumerate(events, start=1):
        if change is not None and seq == CHANGE_AT:
            assert engine.set_overrides(ev.provider, ev.model, change, seq)
        out += await engine.on_telemetry(ev, seq)
    return out


def snap(engine: Engine, metric: str, prompt: str = "simple") -> ChartSnapshot:
    s = engine.snapshot(chart_key("ollama", "m1", "t-m1", prompt, metric))
    assert isinstance(s, ChartSnapshot)
    return s


def test_settings_round_trip_through_the_configuration() -> None:
    for metric in ("latency_ms", "ttft_ms", "tokens_per_s"):
        cfg = default_config(metric)
        assert apply_settings(cfg, to_settings(cfg)) == cfg
        assert apply_settings(cfg, None) is cfg
        assert apply_settings(cfg, ChartSettings()) == cfg
    # The defaults the service publishes are analyze --defaults (default_config) with its env.
    assert config_for(SpcSettings(), "latency_ms") == default_config()


def test_a_partial_override_changes_only_what_it_names() -> None:
    cfg = default_config()
    new = apply_settings(
        cfg,
        ChartSettings(
            rules=RulesSettings(r2=RunTestSettings(enabled=True, k=7)),
            cusum=CusumSettings(k=(0.5,), h=(5.0,)),
        ),
    )
    assert new.rules.r2.enabled is True  # off by default
    assert new.rules.r2.k == 7.0
    assert new.rules.r2.severity == cfg.rules.r2.severity
    assert new.rules.r3 == cfg.rules.r3
    assert (new.cusum.k, new.cusum.h, new.cusum.cap) == ((0.5,), (5.0,), cfg.cusum.cap)
    assert describe_changes(cfg, new) == [
        "cusum.h (22.318, 11.965, 6.116) -> (5)",
        "cusum.k (0.25, 0.5, 1) -> (0.5)",
        "rules.r2.enabled False -> True",
        "rules.r2.k 9 -> 7",
    ]


async def test_a_rule_switch_applies_from_the_next_point_and_keeps_the_baseline() -> None:
    events = telemetry_stream(500, shift_at=250)
    plain = await run(Engine(config_for=small), events)
    engine = Engine(config_for=small)
    got = await run(
        engine, events, overrides(rules={"r1": {"enabled": False}}, cusum={"k": [0.5], "h": [5.0]})
    )
    before = [v.id for v in plain if v.ts < events[CHANGE_AT - 1].ts]
    assert [v.id for v in got if v.ts < events[CHANGE_AT - 1].ts] == before
    after = [v for v in got if v.ts >= events[CHANGE_AT - 1].ts]
    assert not [v for v in after if v.rule == "R1" and v.state == "open"]
    assert any(v.rule == "R1" and v.state == "open" for v in plain if v.ts >= events[CHANGE_AT - 1].ts)
    s = snap(engine, "latency_ms")
    assert s.view is not None
    assert "R1" not in s.view.rules
    assert s.settings_seq == CHANGE_AT
    assert s.state.baseline is not None
    assert s.state.baseline.number == 0  # no new baseline
    assert s.view.settings is not None
    assert s.view.settings.cusum == CusumSettings(enabled=True, k=(0.5,), h=(5.0,), severity="critical")
    assert s.view.arl0_critical is not None
    assert s.view.arl0_critical < 10_000  # CUSUM k=0.5, h=5 with the 5-sigma spike: about 460
    assert critical_arl0(small("latency_ms")) == pytest.approx(2.8e5, rel=0.1)


async def test_a_transform_change_starts_a_recorded_baseline_and_clears_open_episodes() -> None:
    events = telemetry_stream(500, shift_at=250)
    engine = Engine(config_for=small)
    got = await run(engine, events, overrides(metrics={"latency_ms": {"transform": "none"}}))
    s = snap(engine, "latency_ms")
    assert s.config.transform == "none"
    assert s.state.baseline is not None
    assert s.state.baseline.number == 1
    assert s.state.baseline.created_by == "ann"
    assert s.state.baseline.reason == "configuration changed: transform log -> none (tuning)"
    key = s.key
    change_ts = events[CHANGE_AT - 1].ts
    open_before = {v.episode_id for v in got if v.chart_key == key and v.state == "open" and v.ts < change_ts}
    cleared_at_change = [v for v in got if v.chart_key == key and v.state == "cleared" and v.ts == change_ts]
    assert cleared_at_change, "the shift opened episodes that the new baseline clears"
    assert {v.episode_id for v in cleared_at_change} <= open_before
    # Only the latency charts changed: ttft keeps its first baseline.
    ttft = snap(engine, "ttft_ms")
    assert ttft.state.baseline is not None
    assert ttft.state.baseline.number == 0
    assert ttft.config.transform == "log"


async def test_removing_the_overrides_goes_back_to_the_defaults() -> None:
    events = telemetry_stream(400)
    engine = Engine(config_for=small)
    for seq, ev in enumerate(events, start=1):
        if seq == 101:
            engine.set_overrides("ollama", "m1", overrides(baseline_n=60), seq)
        if seq == 301:
            assert engine.set_overrides("ollama", "m1", None, seq)
            assert not engine.set_overrides("ollama", "m1", None, seq)  # no change: nothing to do
        await engine.on_telemetry(ev, seq)
    s = snap(engine, "latency_ms")
    assert s.config == small("latency_ms")
    assert s.state.baseline is not None
    assert s.state.baseline.created_by == "engine"
    assert s.state.baseline.reason == "configuration changed: overrides removed: baseline_n 60 -> 40"


@pytest.mark.parametrize("cut", [150, 300, 301, 302, 420])
async def test_a_restart_anywhere_gives_the_same_violations(cut: int) -> None:
    """Snapshot, then a fresh engine with the stored settings log replays from its own seq."""
    events = telemetry_stream(500, shift_at=250)
    change = overrides(rules={"r2": {"enabled": False}}, metrics={"ttft_ms": {"transform": "none"}})
    expected = [v.id for v in await run(Engine(config_for=small), events, change)]

    first = Engine(config_for=small)
    out: list[ViolationEvent] = []
    for seq, ev in enumerate(events[:cut], start=1):
        if seq == CHANGE_AT:
            first.set_overrides(ev.provider, ev.model, change, seq)
        out += await first.on_telemetry(ev, seq)
    stored = {k: msgspec.json.encode(first.snapshot(k)) for k in first.charts}
    log = msgspec.json.decode(msgspec.json.encode(first.settings_log("ollama", "m1")), type=SettingsLog)

    async def load(key: str) -> Snapshot | None:
        data = stored.get(key)
        return None if data is None else decode_snapshot(key, data)

    second = Engine(config_for=small, load=load)
    second.load_settings_log(log)
    if cut < CHANGE_AT:  # the change is seen after the restart, at the same point
        assert log.changes == []
    for seq, ev in enumerate(events[cut:], start=cut + 1):
        if seq == CHANGE_AT:
            second.set_overrides(ev.provider, ev.model, change, seq)
        out += await second.on_telemetry(ev, seq)
    assert [v.id for v in out] == expected
    assert any(v.metric == "ttft_ms" and v.state == "cleared" for v in out)


def test_the_log_keeps_the_change_in_force_and_later_ones() -> None:
    engine = Engine(config_for=small)
    for seq in (10, 20, 30, 40):
        engine.set_overrides("p", "m", overrides(baseline_n=10 + seq), seq)
    engine.prune_settings("p", "m", covered_seq=25)
    assert [c.from_seq for c in engine.settings_log("p", "m").changes] == [20, 30, 40]
    # A second change before the same point replaces the first.
    engine.set_overrides("p", "m", overrides(baseline_n=99), 40)
    changes = engine.settings_log("p", "m").changes
    assert [c.from_seq for c in changes] == [20, 30, 40]
    assert changes[-1] == SettingsChange(from_seq=40, overrides=overrides(baseline_n=99))
    assert engine.effective_config("p", "m", "latency_ms", 35).baseline_n == 40
    assert engine.effective_config("p", "m", "latency_ms", 0).baseline_n == 99
