"""Detection on crafted series: one page per real change, direction, tails, dependence, Phase I."""

from __future__ import annotations

import asyncio
import math

import msgspec
import numpy as np
import pytest

from llmscope.proto.telemetry import TelemetryEvent
from llmscope.spc_engine.availability import AvailabilityChart
from llmscope.spc_engine.chart import Baseline, ChartState, EpisodeState, MetricChart, Signal
from llmscope.spc_engine.config import ChartConfig, default_config
from llmscope.spc_engine.engine import Engine

from .helpers import T0

BASE = 200
# The detectors alone: min_change (a page needs the level 1.5x worse by default) is tested below.
LATENCY = msgspec.structs.replace(
    default_config("latency_ms"), baseline_n=BASE, min_change=0.0, min_spike_change=0.0
)
DEFAULTS = msgspec.structs.replace(default_config("latency_ms"), baseline_n=BASE)


def ar1(rng: np.random.Generator, n: int, phi: float = 0.0) -> np.ndarray:
    """An AR(1) series with unit marginal variance."""
    out = np.empty(n)
    prev = rng.standard_normal()
    for t in range(n):
        prev = phi * prev + math.sqrt(1 - phi * phi) * rng.standard_normal()
        out[t] = prev
    return out


def feed(chart: MetricChart, log_values: np.ndarray, start: int = 0) -> list[Signal]:
    out: list[Signal] = []
    for i, y in enumerate(log_values, start=start):
        out += chart.update(float(math.exp(6.5 + y)), point_id=f"p{i}")
    return out


def armed(config: ChartConfig = LATENCY, seed: int = 1, phi: float = 0.0, sigma: float = 0.3) -> MetricChart:
    chart = MetricChart(config, key="k")
    assert feed(chart, sigma * ar1(np.random.default_rng(seed), config.baseline_n, phi)) == []
    assert chart.armed, chart.state.note
    return chart


def frozen(chart: MetricChart) -> Baseline | None:
    return chart.state.baseline


def critical(signals: list[Signal], state: str = "open") -> list[Signal]:
    return [s for s in signals if s.severity == "critical" and s.state == state]


@pytest.mark.parametrize("shift", [0.5, 1.0, 2.0, 5.0])
def test_a_sustained_shift_is_one_critical_episode_that_clears_after_it_ends(shift: float) -> None:
    chart = armed()
    rng = np.random.default_rng(2)
    during = feed(chart, 0.3 * (ar1(rng, 800) + shift), start=BASE)
    after = feed(chart, 0.3 * ar1(rng, 600), start=BASE + 800)
    opens = critical(during)
    assert len(opens) == 1, [(s.rule, s.index) for s in opens]
    assert critical(during, "cleared") == []  # not cleared while the shift lasts
    (cleared,) = critical(after, "cleared")
    assert critical(after) == []
    assert cleared.rule == opens[0].rule
    assert cleared.episode_point_id == opens[0].point_id
    op = opens[0]
    assert op.direction == "up"
    assert not op.better
    assert op.level is not None
    assert op.level > op.limits.center


def test_a_jump_that_is_both_a_spike_and_a_cusum_signal_is_one_page() -> None:
    chart = armed()
    rng = np.random.default_rng(3)
    signals = feed(chart, 0.3 * (ar1(rng, 50) + 8.0), start=BASE)
    assert len(critical(signals)) == 1
    assert critical(signals)[0].index == BASE  # at the first point of the jump


def test_faster_is_recorded_as_info_and_never_pages() -> None:
    chart = armed()
    signals = feed(chart, 0.3 * (ar1(np.random.default_rng(4), 600) - 2.0), start=BASE)
    assert critical(signals) == []
    faster = [s for s in signals if s.rule == "CUSUM" and s.state == "open"]
    assert len(faster) == 1
    assert faster[0].better
    assert faster[0].direction == "down"
    assert faster[0].severity == "info"
    assert "faster" in faster[0].rule_name


def test_page_better_makes_an_improvement_page() -> None:
    chart = armed(msgspec.structs.replace(LATENCY, page_better=True))
    signals = feed(chart, 0.3 * (ar1(np.random.default_rng(4), 600) - 2.0), start=BASE)
    assert [s.direction for s in critical(signals)] == ["down"]


def test_for_tokens_per_second_a_drop_is_the_degradation() -> None:
    config = msgspec.structs.replace(default_config("tokens_per_s"), baseline_n=BASE)
    chart = armed(config)
    signals = feed(chart, 0.3 * (ar1(np.random.default_rng(5), 300) - 2.0), start=BASE)
    opens = [s for s in signals if s.rule == "CUSUM" and s.state == "open"]
    assert len(opens) == 1
    assert opens[0].direction == "down"
    assert not opens[0].better
    assert opens[0].severity == "warning"  # tokens/s is not the paging metric
    assert "slower" in opens[0].rule_name


def test_a_shift_up_then_down_are_two_episodes_with_their_own_ids() -> None:
    engine = Engine(config_for=lambda m: msgspec.structs.replace(default_config(m), baseline_n=BASE))
    rng = np.random.default_rng(6)
    series = np.concatenate([ar1(rng, BASE), ar1(rng, 400) + 3.0, ar1(rng, 600) - 3.0])
    events = []
    for i, y in enumerate(series):
        ev = TelemetryEvent(
            id=f"e{i}",
            ts=T0,
            provider="ollama",
            model="m",
            target="t",
            prompt_hash="h",
            prompt_id="p",
            status="ok",
            latency_ms=math.exp(6.5 + 0.3 * y),
        )
        events.append(ev)

    async def run() -> list[tuple[str, str, str, str, str]]:
        out: list[tuple[str, str, str, str, str]] = []
        for seq, ev in enumerate(events, start=1):
            for v in await engine.on_telemetry(ev, seq):
                if v.rule == "CUSUM" and v.metric == "latency_ms":
                    out.append((v.state, v.direction, v.severity, v.id, v.episode_id))
        return out

    cusum = asyncio.run(run())
    ups = [c for c in cusum if c[1] == "up"]
    downs = [c for c in cusum if c[1] == "down"]
    assert [c[0] for c in ups] == ["open", "cleared"]
    assert downs[0][0] == "open"
    assert downs[0][2] == "info"
    assert ups[0][3] != downs[0][3]
    assert ups[1][4] == ups[0][3]  # the clear names its own open


def test_isolated_slow_answers_do_not_page_but_an_excess_of_them_does() -> None:
    rng = np.random.default_rng(7)
    base = 0.3 * ar1(rng, 1000)
    base[rng.random(1000) < 0.02] += math.log(4.0)  # 2 % of answers 4x slower, in the baseline too
    chart = MetricChart(default_config("latency_ms"), key="tail")
    assert feed(chart, base) == []
    assert chart.armed
    b = chart.state.baseline
    assert b is not None
    assert b.tail_rate > 0.005
    normal = 0.3 * ar1(rng, 3000)
    normal[rng.random(3000) < 0.02] += math.log(4.0)
    assert critical(feed(chart, normal, start=1000)) == []
    burst = 0.3 * ar1(rng, 200)
    burst[rng.random(200) < 0.3] += math.log(4.0)  # 30 % slow: the tail itself got worse
    opens = critical(feed(chart, burst, start=4000))
    assert len(opens) == 1
    assert opens[0].rule in ("TAIL", "CUSUM")


def test_a_handful_of_extreme_outliers_cannot_drive_a_cusum_over_h() -> None:
    chart = armed()
    values = 0.3 * ar1(np.random.default_rng(8), 300)
    values[[10, 40, 70, 100]] += math.log(50.0)  # four answers 50x slower, far apart
    signals = feed(chart, values, start=BASE)
    assert not [s for s in critical(signals) if s.rule == "CUSUM"]
    # On a clean baseline a 50x answer is news: a SPIKE (slow answers that keep coming keep its
    # episode open), never a shift.
    assert {s.rule for s in critical(signals)} == {"SPIKE"}


def test_autocorrelated_latency_is_modelled_and_does_not_page() -> None:
    chart = armed(msgspec.structs.replace(LATENCY, baseline_n=1000), seed=9, phi=0.5)
    b = chart.state.baseline
    assert b is not None
    assert len(b.ar) >= 1
    assert 0.35 < b.ar[0] < 0.65
    assert b.lag_corr[0] > 0.35
    signals = feed(chart, 0.3 * ar1(np.random.default_rng(10), 5000, phi=0.5), start=1000)
    assert critical(signals) == []


def test_the_same_data_judged_as_independent_does_page() -> None:
    # The reason for the serial model: the textbook chart pages on the same kind of data.
    plain = msgspec.structs.replace(LATENCY, baseline_n=1000, serial=False)
    chart = armed(plain, seed=9, phi=0.5)
    signals = feed(chart, 0.3 * ar1(np.random.default_rng(10), 5000, phi=0.5), start=1000)
    assert critical(signals)


def test_an_unstable_baseline_is_not_frozen_and_the_chart_says_why() -> None:
    chart = MetricChart(LATENCY, key="start-up")
    rng = np.random.default_rng(11)
    warming = 0.3 * ar1(rng, BASE)
    warming[: BASE // 2] += 1.5  # the host was still starting up: slower first half
    assert feed(chart, warming) == []
    assert chart.state.baseline is None
    assert "not stable" in chart.state.note
    got, need = chart.progress
    assert 0 < got < need  # the older part was dropped, collection goes on
    feed(chart, 0.3 * ar1(rng, BASE), start=BASE)
    b = frozen(chart)
    assert b is not None
    assert "unstable" in b.reason
    assert chart.state.note == ""
    assert abs(b.center - 6.5) < 0.2  # the limits describe the settled process


def test_with_the_page_floor_a_small_step_arms_and_a_large_one_is_refused() -> None:
    # A real server's level moves by a few per cent with nothing wrong; on a tight process
    # (sigma_log 0.02) a 5 % step is many sigmas, which the test in sigma units alone refuses.
    rng = np.random.default_rng(12)
    small = 0.02 * ar1(rng, BASE, 0.3)
    small[: BASE // 2] += math.log(1.05)
    strict = MetricChart(LATENCY, key="strict")  # no floor: the statistical test alone
    assert feed(strict, small) == []
    assert strict.state.baseline is None
    assert "not stable" in strict.state.note
    practical = MetricChart(DEFAULTS, key="practical")  # floor 1.5x: refuses 1.25x apart or more
    assert feed(practical, small) == []
    assert practical.armed, practical.state.note
    assert practical.state.baseline is not None
    assert practical.state.baseline.reason == "initial baseline"
    # A host still starting up (first half 1.4x slower) is refused with the defaults too.
    large = 0.02 * ar1(rng, BASE, 0.3)
    large[: BASE // 2] += math.log(1.4)
    starting = MetricChart(DEFAULTS, key="starting")
    assert feed(starting, large) == []
    assert starting.state.baseline is None
    assert "not stable" in starting.state.note
    assert "1.25x refuses" in starting.state.note


def _stepping(rng: np.random.Generator, n: int, every: int) -> np.ndarray:
    """AR(1) whose level moves by 1.5 sigma every ``every`` points: never stable for long."""
    y = 0.3 * ar1(rng, n, 0.3)
    for start in range(0, n, every):
        y[start : start + every] += 0.45 * ((start // every) % 2)
    return y


@pytest.mark.parametrize("max_refusals", [1, 3])
def test_a_level_that_keeps_moving_arms_after_max_refusals_and_says_so(max_refusals: int) -> None:
    config = msgspec.structs.replace(LATENCY, max_refusals=max_refusals)
    chart = MetricChart(config, key="busy-host")
    y = _stepping(np.random.default_rng(21), 20 * BASE, every=BASE // 2)
    fed = 0
    while chart.state.baseline is None and fed < y.size:
        feed(chart, y[fed : fed + 1], start=fed)
        fed += 1
    b = frozen(chart)
    assert b is not None, chart.state.note
    assert f"after {max_refusals} unstable baseline" in b.reason
    assert "armed on the latest" in b.reason
    # Each refusal keeps the newest 40 % of the points: the chart armed on its fourth try.
    assert fed == BASE + max_refusals * (BASE - 2 * (BASE // 5))


def test_without_a_cap_a_level_that_keeps_moving_is_refused_for_ever() -> None:
    config = msgspec.structs.replace(LATENCY, max_refusals=0)
    chart = MetricChart(config, key="busy-host")
    feed(chart, _stepping(np.random.default_rng(21), 10 * BASE, every=BASE // 2))
    assert chart.state.baseline is None
    assert "not stable" in chart.state.note


def test_a_state_from_the_previous_model_clears_its_episodes_and_rebaselines() -> None:
    chart = armed()
    old = msgspec.structs.replace(chart.state.baseline, model=1)  # type: ignore[type-var]
    state = ChartState(
        n_points=chart.state.n_points,
        baseline=old,
        episodes={"CUSUM": EpisodeState(open_index=150, open_point_id="p150")},
        recent=chart.state.recent,
        individuals=chart.state.individuals,
        ewma=chart.state.ewma,
        cusum=chart.state.cusum,
    )
    restored = MetricChart(
        LATENCY, key="k", state=msgspec.json.decode(msgspec.json.encode(state), type=ChartState)
    )
    signals = restored.update(700.0, point_id="next")
    assert [(s.rule, s.state, s.episode_point_id) for s in signals] == [("CUSUM", "cleared", "p150")]
    assert not restored.armed
    assert "new in-control model" in restored.state.pending_reason


def test_a_cold_start_is_counted_and_kept_off_the_charts() -> None:
    engine = Engine()
    warm = TelemetryEvent(
        id="w",
        ts=T0,
        provider="ollama",
        model="m",
        target="t",
        prompt_id="p",
        prompt_hash="h",
        status="ok",
        latency_ms=500.0,
    )
    cold = msgspec.structs.replace(warm, id="c", latency_ms=9000.0, cold_start=True)

    async def run() -> None:
        await engine.on_telemetry(warm, 1)
        await engine.on_telemetry(cold, 2)

    asyncio.run(run())
    charts = engine.charts
    latency = next(e for k, e in charts.items() if k.endswith("latency_ms"))
    assert isinstance(latency.chart, MetricChart)
    assert [p.id for p in latency.chart.state.recent] == ["w"]
    avail = next(e for k, e in charts.items() if k.endswith("availability"))
    assert isinstance(avail.chart, AvailabilityChart)
    assert avail.chart.state.n == 2
    assert avail.chart.state.cold_starts == 1


def test_an_ewma_on_tokens_per_second_names_the_way_the_metric_moved() -> None:
    config = msgspec.structs.replace(
        default_config("tokens_per_s"),
        baseline_n=BASE,
        cusum=msgspec.structs.replace(default_config().cusum, enabled=False),
    )
    chart = armed(config)
    signals = feed(chart, 0.3 * (ar1(np.random.default_rng(12), 300) - 1.0), start=BASE)
    ewma = [s for s in signals if s.rule == "EWMA" and s.state == "open"]
    assert ewma
    assert ewma[0].direction == "down"  # generation got slower: the metric went down
    assert not ewma[0].better
    assert "slower" in ewma[0].rule_name


def test_the_reported_level_is_the_level_of_the_points_not_a_model_extrapolation() -> None:
    chart = armed(msgspec.structs.replace(LATENCY, baseline_n=1000), seed=9, phi=0.8)
    signals = feed(chart, 0.3 * (ar1(np.random.default_rng(13), 400, phi=0.8) + 1.5), start=1000)
    (opened,) = critical(signals)
    assert opened.level is not None
    true_level = math.exp(6.5 + 0.3 * 1.5)
    assert opened.level == pytest.approx(true_level, rel=0.35)


def test_a_shift_that_eases_off_but_stays_above_the_baseline_is_still_one_episode() -> None:
    # Seen on a real server under contention: +55 % falling back to +35 % cleared and re-paged.
    chart = armed()
    rng = np.random.default_rng(14)
    signals = feed(chart, 0.3 * (ar1(rng, 200) + 4.0), start=BASE)
    signals += feed(chart, 0.3 * (ar1(rng, 400) + 1.5), start=BASE + 200)
    assert len(critical(signals)) == 1
    assert critical(signals, "cleared") == []
    back = feed(chart, 0.3 * ar1(rng, 300), start=BASE + 600)
    assert len(critical(back, "cleared")) == 1


def test_a_real_drift_below_min_change_is_a_warning_and_a_larger_shift_then_pages_at_once() -> None:
    chart = armed(DEFAULTS, seed=31, phi=0.3)
    center = math.exp(frozen(chart).center)  # type: ignore[union-attr]
    rng = np.random.default_rng(32)
    drift = feed(chart, 0.3 * ar1(rng, 400, 0.3) + math.log(1.25), start=BASE)
    assert critical(drift) == []  # 1.25x for 400 probes: real, but not a page
    assert [s.rule for s in drift if s.state == "open" and s.severity == "warning"]
    big = feed(chart, 0.3 * ar1(rng, 300, 0.3) + math.log(2.0), start=BASE + 400)
    (page,) = critical(big)
    # Judged by the level now (the newest 50 points), not by the mean since the drift began
    # (which needs 400 more probes to reach 1.5x): found once 2x makes up a third of those 50.
    assert int(page.point_id[1:]) - (BASE + 400) <= 25
    assert page.level is not None
    assert page.level >= 1.5 * center


def test_one_slow_answer_pages_only_from_min_spike_change() -> None:
    chart = armed(DEFAULTS, seed=33, sigma=0.05)
    b = frozen(chart)
    assert b is not None
    center = math.exp(b.center)
    spike = 9 * b.sigma
    assert math.exp(spike) < 2.0  # 9 sigma out (far past the SPIKE limit), yet less than 2x
    assert critical(feed(chart, np.array([spike]), start=BASE)) == []
    feed(chart, 0.05 * ar1(np.random.default_rng(34), 30), start=BASE + 1)
    (page,) = critical(chart.update(2.5 * center, point_id="big"))
    assert page.rule == "SPIKE"
    assert page.level == 2.5 * center


def test_min_change_applies_to_tokens_per_s_as_a_factor_slower() -> None:
    config = msgspec.structs.replace(default_config("tokens_per_s"), baseline_n=BASE, min_change=0.5)
    chart = armed(config, seed=35, sigma=0.1)
    rng = np.random.default_rng(36)

    def pages(signals: list[Signal]) -> list[Signal]:
        return [s for s in signals if s.rule in ("CUSUM", "TAIL", "SPIKE") and s.state == "open"]

    # 1.3x fewer tokens/s is a warning drift only; 2x fewer opens the chart's page (symmetric on
    # the log scale; tokens/s pages at warning by default).
    assert pages(feed(chart, 0.1 * ar1(rng, 300) - math.log(1.3), start=BASE)) == []
    (opened,) = pages(feed(chart, 0.1 * ar1(rng, 100) - math.log(2.0), start=BASE + 300))
    assert opened.direction == "down"
