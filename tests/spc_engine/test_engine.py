"""The pure handler: routing to rational subgroups, ids, duplicates, partitions, snapshots."""

from __future__ import annotations

import functools

import msgspec

from llmscope.bus.streams import telemetry_partition
from llmscope.proto.charts import ChartMeta, chart_key, parse_chart_key
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine.chart import ChartState, MetricChart
from llmscope.spc_engine.config import ChartConfig, default_config
from llmscope.spc_engine.engine import ChartSnapshot, Engine, Snapshot, decode_snapshot, render_view

from .helpers import T0, telemetry_stream


def small(metric: str) -> ChartConfig:
    return msgspec.structs.replace(default_config(metric), baseline_n=40)


async def run(engine: Engine, events: list[TelemetryEvent], start_seq: int = 1) -> list[ViolationEvent]:
    out: list[ViolationEvent] = []
    for i, ev in enumerate(events):
        out += await engine.on_telemetry(ev, start_seq + i)
    return out


def test_chart_keys_are_reversible_and_kv_safe() -> None:
    key = chart_key("ollama", "llama3.1:8b", "org/host a", "p*1", "latency_ms")
    assert set(key) <= set("-/_=.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    assert parse_chart_key(key) == ("ollama", "llama3.1:8b", "org/host a", "p*1", "latency_ms")


async def test_charts_per_prompt_and_metric_failed_probes_only_in_availability() -> None:
    engine = Engine(config_for=small)
    events = telemetry_stream(400, shift_at=300)
    out = await run(engine, events)
    keys = set(engine.charts)
    assert {parse_chart_key(k)[3:] for k in keys} == {
        (p, m) for p in ("simple", "medium") for m in ("latency_ms", "ttft_ms", "tokens_per_s")
    } | {("*", "availability")}
    for key, entry in engine.charts.items():
        if isinstance(entry.chart, MetricChart):
            prompt = parse_chart_key(key)[3]
            n_ok = sum(1 for e in events if e.ok and e.prompt_id == prompt)
            assert entry.chart.state.n_points == n_ok
    critical = [v for v in out if v.severity == "critical" and v.metric == "latency_ms" and v.state == "open"]
    assert critical
    assert all(v.ts >= events[300].ts for v in critical)
    v = critical[0]
    assert v.episode_id == v.id
    assert v.point_ids[-1] in {e.id for e in events}
    assert v.limits.ucl > v.limits.center > v.limits.lcl > 0
    assert v.baseline.n > 0
    assert v.chart_key in keys


async def test_replay_is_deterministic_and_duplicates_are_skipped() -> None:
    events = telemetry_stream(300, shift_at=200)
    first = await run(Engine(config_for=small), events)
    engine = Engine(config_for=small)
    again = await run(engine, events)
    assert [v.id for v in first] == [v.id for v in again]
    assert [msgspec.json.encode(v) for v in first] == [msgspec.json.encode(v) for v in again]
    # Redelivered stream sequences and re-published event ids change nothing.
    assert await run(engine, events[-50:], start_seq=251) == []
    assert await run(engine, events[-5:], start_seq=1000) == []
    assert len({v.id for v in first}) == len(first)


async def test_a_republished_id_is_skipped_while_among_the_last_64_points_of_its_chart() -> None:
    events = [ev for ev in telemetry_stream(400) if ev.ok and ev.prompt_id == "simple"]
    engine = Engine(config_for=small)
    seq = await _feed(engine, events, 1)
    key = chart_key("ollama", "m1", "t-m1", "simple", "latency_ms")
    state = engine.charts[key].chart.state
    assert isinstance(state, ChartState)
    charted = state.n_points
    assert charted == len(events) > 64 + 10

    # Ids of the last 64 points come back under new stream sequences: none is charted again.
    seq = await _feed(engine, events[-64:], seq)
    assert state.n_points == charted
    # An id that has left the window is new to the chart, and charted; then it is remembered.
    seq = await _feed(engine, [events[-65]], seq)
    assert state.n_points == charted + 1
    seq = await _feed(engine, [events[-65]], seq)
    assert state.n_points == charted + 1
    # The check holds for a chart restored from its snapshot, and across a re-baseline.
    store = {k: msgspec.json.encode(engine.snapshot(k)) for k in engine.charts}

    async def load(k: str) -> Snapshot | None:
        return decode_snapshot(k, store[k]) if k in store else None

    resumed = Engine(config_for=small, load=load)
    await _feed(resumed, events[-10:], seq)
    restored = resumed.charts[key].chart.state
    assert isinstance(restored, ChartState)
    assert restored.n_points == charted + 1
    assert resumed.rebaseline(key, "test", "why", T0) is not None
    await _feed(resumed, events[-3:], seq + 10)
    assert restored.n_points == charted + 1


async def _feed(engine: Engine, events: list[TelemetryEvent], seq: int) -> int:
    for ev in events:
        await engine.on_telemetry(ev, seq)
        seq += 1
    return seq


async def test_snapshot_restore_continues_identically() -> None:
    events = telemetry_stream(300, shift_at=150)
    expected = await run(Engine(config_for=small), events)
    engine = Engine(config_for=small)
    got = await run(engine, events[:120])
    store: dict[str, bytes] = {k: msgspec.json.encode(engine.snapshot(k)) for k in engine.charts}

    async def load(key: str) -> Snapshot | None:
        return decode_snapshot(key, store[key]) if key in store else None

    resumed = Engine(config_for=small, load=load)
    got += await run(resumed, events[100:], start_seq=101)  # overlap: 100..119 are skipped
    assert [v.id for v in got] == [v.id for v in expected]


async def test_partitions_are_disjoint_and_complete() -> None:
    events = telemetry_stream(400, models=("a", "b", "c", "d", "e"), shift_at=250)
    expected = await run(Engine(config_for=small), events)
    parts = [Engine(config_for=small, owns=functools.partial(owned_by, i)) for i in range(2)]
    got = [await run(e, events) for e in parts]
    assert not set(parts[0].charts) & set(parts[1].charts)
    assert sorted(v.id for v in got[0] + got[1]) == sorted(v.id for v in expected)


def owned_by(replica: int, provider: str, model: str) -> bool:
    return telemetry_partition(provider, model, 16) % 2 == replica


def test_view_reports_progress_limits_and_arl() -> None:
    cfg = default_config()
    chart = MetricChart(cfg)
    view = render_view(cfg, chart.state)
    assert view.phase == "collecting"
    assert view.progress == 0
    assert view.baseline_n == 1000
    assert view.arl0_critical is not None
    assert 2.5e5 < view.arl0_critical < 3.5e5
    meta = ChartMeta(provider="ollama", model="m", target="t", prompt_id="p", metric="latency_ms")
    snap = ChartSnapshot(key="k", meta=meta, seq=3, config=cfg, state=chart.state, view=view)
    assert decode_snapshot("k", msgspec.json.encode(snap)) == snap


def test_a_chart_on_known_parameters_has_a_view_and_arl() -> None:
    # No baseline was fitted, so no tail was learned: the spike's rate comes from normal residuals
    # (it divided by the unlearned mean excess, 0, and every snapshot of such a chart failed).
    cfg = msgspec.structs.replace(default_config(), center=500.0, sigma=0.2)
    chart = MetricChart(cfg)
    chart.update(510.0, point_id="p0")
    assert chart.armed
    view = render_view(cfg, chart.state)
    assert view.phase == "armed"
    assert view.arl0_critical is not None
    assert 1e5 < view.arl0_critical < 1e6


async def test_a_new_prompt_text_under_the_same_id_starts_a_new_baseline() -> None:
    """Editing a prompt changes the process: its chart re-baselines instead of paging."""
    simple = [ev for ev in telemetry_stream(300, shift_at=150) if ev.prompt_id == "simple"]
    # The same prompt id, but from the 'shift' on (its 75th probe) a longer text: latency doubles.
    events = [msgspec.structs.replace(ev, prompt_hash="h2") if i >= 75 else ev for i, ev in enumerate(simple)]
    engine = Engine(config_for=small)
    out = await _feed_collect(engine, events)
    key = chart_key("ollama", "m1", "t-m1", "simple", "latency_ms")
    state = engine.charts[key].chart.state
    assert isinstance(state, ChartState)
    assert state.prompt_hash == "h2"
    assert state.baseline_number == 1
    assert "prompt text changed" in state.pending_reason
    assert not [v for v in out if v.state == "open" and v.severity == "critical"]
    # Without the new hash the same data pages: the doubling is a real shift.
    same = [msgspec.structs.replace(ev, prompt_hash="h") for ev in events]
    assert [v for v in await _feed_collect(Engine(config_for=small), same) if v.severity == "critical"]


async def _feed_collect(engine: Engine, events: list[TelemetryEvent]) -> list[ViolationEvent]:
    out: list[ViolationEvent] = []
    for seq, ev in enumerate(events, start=1):
        out += await engine.on_telemetry(ev, seq)
    return out


async def test_an_availability_chart_re_baselines_with_its_open_episode_cleared() -> None:
    ok = [ev for ev in telemetry_stream(400) if ev.ok][:250]
    down = [msgspec.structs.replace(ev, id=f"down-{i}", status="refused") for i, ev in enumerate(ok[:5])]
    down = [msgspec.structs.replace(ev, latency_ms=None, ttft_ms=None, tokens_per_s=None) for ev in down]
    engine = Engine(config_for=small)
    out = await run(engine, ok + down)
    opened = [v for v in out if v.rule == "AVAILABILITY"]
    assert [v.state for v in opened] == ["open"]
    assert opened[0].baseline.id.startswith("availability-")
    key = opened[0].chart_key

    cleared = engine.rebaseline(key, "ann", "proxy fixed", T0)
    assert cleared is not None
    assert [(v.rule, v.state, v.episode_id, v.ts) for v in cleared] == [
        ("AVAILABILITY", "cleared", opened[0].id, T0)
    ]
    assert cleared[0].point_ids == ("down-4",)
    assert (cleared[0].baseline.created_by, cleared[0].baseline.id) == ("ann", f"availability-{key}#1")
    assert cleared[0].baseline.reason == "proxy fixed"  # why, as a metric chart's says it
    # The chart collects again; the outage still going on signals at once, judged by the new baseline.
    more = [msgspec.structs.replace(down[0], id="down-5")]
    again = await engine.on_telemetry(more[0], 10_000)
    assert [(v.rule, v.state, v.baseline.n) for v in again] == [("AVAILABILITY", "open", 1)]
    assert engine.snapshot(key).availability.baseline_by == "ann"  # type: ignore[union-attr]
