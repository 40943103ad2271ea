"""Availability: runs of failed probes and an error rate far above baseline."""

from __future__ import annotations

import msgspec
import pytest

from llmscope.proto import codec
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.spc_engine.availability import (
    AvailabilityChart,
    AvailabilityConfig,
    AvailabilityState,
    binomial_threshold,
    run_needed,
    run_wait,
)
from llmscope.spc_engine.engine import Engine

from .helpers import telemetry_stream


def test_binomial_threshold() -> None:
    assert binomial_threshold(50, 0.01, 1e-6) == 7  # P(X >= 6) = 1.1e-5, P(X >= 7) = 6.9e-7
    assert binomial_threshold(10, 0.5, 1.0) == 0


def test_failure_run_opens_once_and_clears() -> None:
    chart = AvailabilityChart(AvailabilityConfig(baseline_n=200, clear_after=2))
    outcomes = [False] * 200 + [True] * 6 + [False] * 3
    got = [(i, s.rule, s.state) for i, f in enumerate(outcomes) for s in chart.update(f)]
    assert got == [(202, "AVAILABILITY", "open"), (207, "AVAILABILITY", "cleared")]


def test_error_rate_above_baseline() -> None:
    cfg = AvailabilityConfig(baseline_n=100, window=50, fail_run=100)
    chart = AvailabilityChart(cfg)
    signals = []
    for i in range(400):
        failed = (i % 20 == 0) if i < 300 else (i % 3 == 0)  # 5% then 33%
        signals += [(i, s.rule, s.state) for s in chart.update(failed)]
    assert signals
    assert signals[0][1:] == ("ERROR_RATE", "open")
    assert signals[0][0] > 300
    state = msgspec.json.decode(msgspec.json.encode(chart.state), type=AvailabilityState)
    assert state == chart.state


def test_the_failure_run_that_pages_grows_with_a_flaky_baseline() -> None:
    # Expected probes until r failures in a row at failure rate p: (1 - p^r) / ((1 - p) p^r).
    assert run_wait(0.01, 3) == pytest.approx((1 - 1e-6) / (0.99 * 1e-6))
    assert [run_needed(p, 1e6, 3) for p in (0.001, 0.01, 0.02, 0.05, 0.2)] == [3, 3, 4, 5, 9]
    for p in (0.01, 0.02, 0.05, 0.2):
        r = run_needed(p, 1e6, 3)
        assert run_wait(p, r) >= 1e6
        assert r == 3 or run_wait(p, r - 1) < 1e6

    # 5 % of the baseline probes fail: three in a row no longer pages, five do.
    chart = AvailabilityChart(AvailabilityConfig(baseline_n=100, clear_after=2))
    baseline = [i % 20 == 0 for i in range(100)]
    assert [s for f in baseline for s in chart.update(f)] == []
    assert chart.state.rate == pytest.approx(6 / 102)  # estimated as (failures + 1) / (n + 2)
    assert chart.fail_run == run_needed(6 / 102, 1e6, 3) == 5
    got = [(i, s.rule, s.rule_name) for i, f in enumerate([True] * 6) for s in chart.update(f)]
    assert got == [(4, "AVAILABILITY", "5 failed probes in a row")]


def test_rebaseline_after_a_flaky_endpoint_is_fixed() -> None:
    chart = AvailabilityChart(AvailabilityConfig(baseline_n=100, clear_after=2))
    ids = (f"p{i}" for i in range(10_000))
    for i in range(100):
        chart.update(i % 20 == 0, next(ids))
    assert chart.fail_run == 5
    # An outage opens an episode; the endpoint is fixed and the rate re-estimated.
    opened = [s.state for _ in range(5) for s in chart.update(True, next(ids))]
    assert opened == ["open"]
    cleared = chart.rebaseline("ann", "load balancer fixed")
    assert [(s.rule, s.state, s.episode_point_id) for s in cleared] == [("AVAILABILITY", "cleared", "p104")]
    st = chart.state
    assert (st.rate, st.threshold, st.episodes) == (None, None, {})
    assert (st.baseline_number, st.baseline_by, st.baseline_reason) == (1, "ann", "load balancer fixed")
    assert chart.fail_run == 3  # collecting: the configured run
    assert st.run == 5  # a fact about the endpoint, kept: the outage goes on and signals again
    assert [(s.rule, s.state) for s in chart.update(True, next(ids))] == [("AVAILABILITY", "open")]
    assert chart.rebaseline("ann", "again")[0].state == "cleared"
    # The new baseline counts only its own probes: one failure in 100 gives the floor rate.
    for i in range(99):
        assert chart.update(i == 50, next(ids)) == []
    assert st.rate is None  # 99 of 100
    chart.update(False, next(ids))
    assert st.rate == pytest.approx(max(0.01, 2 / 102))
    assert chart.fail_run == run_needed(2 / 102, 1e6, 3) == 4


def test_a_probe_counted_once_and_old_state_still_reads() -> None:
    chart = AvailabilityChart(AvailabilityConfig(baseline_n=100, clear_after=2))
    for _ in range(3):
        chart.update(True, "same")
    assert (chart.state.n, chart.state.run) == (1, 1)
    for i in range(100):
        chart.update(False, f"p{i}")
    assert len(chart.state.recent_ids) == 64
    chart.update(True, "same")  # forgotten after 64 probes: counted again
    assert (chart.state.n, chart.state.run) == (102, 1)

    old = b'{"n":250,"baseline_failures":2,"threshold":7,"rate":0.01,"run":0,"outcomes":[],"episodes":{}}'
    state = msgspec.json.decode(old, type=AvailabilityState)
    assert (state.baseline_start, state.baseline_number, state.recent_ids) == (0, 0, [])


def test_an_episode_clears_under_the_id_of_the_probe_that_opened_it() -> None:
    # The clear names the opening probe, so the cleared event's episode id (derived from it by
    # the engine) is the open event's id: AVAILABILITY and ERROR_RATE episodes end downstream.
    cfg = AvailabilityConfig(baseline_n=100, window=50, clear_after=5)
    chart = AvailabilityChart(cfg)
    ids = iter(f"p{i}" for i in range(10_000))
    assert [s for _ in range(100) for s in chart.update(False, next(ids))] == []
    assert chart.state.threshold == 7  # at the 1 % floor rate
    outage = [(pid, s) for pid in (next(ids) for _ in range(8)) for s in chart.update(True, pid)]
    assert [(pid, s.rule, s.state, s.episode_point_id) for pid, s in outage] == [
        ("p102", "AVAILABILITY", "open", "p102"),
        ("p106", "ERROR_RATE", "open", "p106"),
    ]
    recovery = [(pid, s) for pid in (next(ids) for _ in range(60)) for s in chart.update(False, pid)]
    # AVAILABILITY clears after 5 successes; ERROR_RATE once the failures left the window.
    assert [(pid, s.rule, s.state, s.episode_point_id) for pid, s in recovery] == [
        ("p112", "AVAILABILITY", "cleared", "p102"),
        ("p155", "ERROR_RATE", "cleared", "p106"),
    ]
    assert chart.state.episodes == {}

    # The same after a restart from a snapshot taken while the episode was open.
    chart = AvailabilityChart(cfg)
    for i in range(4):
        chart.update(True, f"q{i}")
    restored = msgspec.json.decode(msgspec.json.encode(chart.state), type=AvailabilityState)
    chart = AvailabilityChart(cfg, restored)
    signals = [s for i in range(5) for s in chart.update(False, f"r{i}")]
    assert [(s.rule, s.state, s.episode_point_id) for s in signals] == [("AVAILABILITY", "cleared", "q2")]


async def test_the_engine_clears_an_outage_under_the_open_events_episode_id() -> None:
    ok = [ev for ev in telemetry_stream(200) if ev.ok]
    down = [
        msgspec.structs.replace(ev, id=f"down-{i}", status="refused", latency_ms=None, ttft_ms=None)
        for i, ev in enumerate(ok[:4])
    ]
    back = [msgspec.structs.replace(ev, id=f"back-{i}") for i, ev in enumerate(ok[4:10])]
    engine = Engine()
    out = []
    for seq, ev in enumerate(ok[10:50] + down + back, start=1):
        out += [v for v in await engine.on_telemetry(ev, seq) if v.metric == "availability"]
    assert [(v.rule, v.state, v.point_ids) for v in out] == [
        ("AVAILABILITY", "open", ("down-2",)),
        ("AVAILABILITY", "cleared", ("back-4",)),
    ]
    opened, cleared = out
    assert opened.episode_id == opened.id
    assert cleared.episode_id == opened.id


async def test_overloaded_probes_off_the_wire_are_failures_of_the_availability_chart() -> None:
    # Anthropic's 529 is ``overloaded`` (added later in telemetry.v1): decoded as the consumer
    # decodes it, a run of them is an outage like any failed probes, not a dead letter.
    ok = [ev for ev in telemetry_stream(200) if ev.ok]
    down = [
        msgspec.structs.replace(
            ev, id=f"down-{i}", status="overloaded", http_status=529, latency_ms=None, ttft_ms=None
        )
        for i, ev in enumerate(ok[:4])
    ]
    engine = Engine()
    out = []
    for seq, ev in enumerate(ok[10:50] + down, start=1):
        wire = codec.decode_as(codec.encode(ev), TelemetryEvent)
        out += [v for v in await engine.on_telemetry(wire, seq) if v.metric == "availability"]
    assert [(v.rule, v.state, v.point_ids) for v in out] == [("AVAILABILITY", "open", ("down-2",))]
