"""A chart's violation episodes: the shared page of the critical detectors in each direction and
its return test, the other rules' episodes, and the signal an opening or clearing reports."""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from llmscope.proto.violation import ChartKind, Direction
from llmscope.spc_engine.chart_state import Baseline, EpisodeState, PointRef, Signal, _Fire
from llmscope.spc_engine.chart_view import RULE_ORDER, ChartView, limits_of
from llmscope.spc_engine.charts.cusum import CusumChart, CusumSide
from llmscope.spc_engine.rules import Severity

PAGING_RULES = ("CUSUM", "TAIL", "SPIKE")
"""The rules that share one episode per direction, in the order that names an episode."""
SHIFT_PRIOR_POINTS = 20
MIN_RETURN_SHIFT = 0.1
"""Smallest ``a`` of the return test (residual sigmas): even a tiny shift clears one day."""
MAX_RETURN_SHIFT = 0.5
"""Largest ``a`` of the return test: a large shift that eases off but stays well above the
baseline (+55 % falling to +35 %, seen on a real server) is still one episode; the chart clears
only when the level is back within about half a residual sigma of the baseline."""


class ChartEpisodes(ChartView):
    """A chart's episodes and the signals they report."""

    _cusum: CusumChart | None
    _tail_open: int

    def _describe(self, rule: str, direction: Direction = "") -> _Fire:
        cfg = self.config
        better = direction != "" and direction != cfg.worse
        way = "faster" if better else "slower"
        severity: Severity
        if rule == "SPIKE":
            name = f"one answer {way} than anything the baseline made plausible"
            chart: ChartKind = "individuals"
            severity = cfg.spike.severity
        elif rule == "CUSUM":
            name, chart, severity = f"sustained shift: {way} than the baseline", "cusum", cfg.cusum.severity
        elif rule == "TAIL":
            t = cfg.tail
            name = f"more unusually slow answers than the baseline has (>= {self._tail_open} in {t.window})"
            chart, severity = "individuals", t.severity
        elif rule == "EWMA":
            name, chart, severity = f"gradual drift: {way} than the baseline", "ewma", cfg.ewma.severity
        else:
            n = int(rule[1:])
            name, chart, severity = cfg.rules.name(n), "individuals", cfg.rules.test(n).severity
        if better and not cfg.page_better:
            severity = "info"
        return _Fire(chart=chart, severity=severity, name=name, direction=direction, better=better)

    def _family(
        self,
        direction: Direction,
        fires: dict[str, _Fire],
        side: CusumSide | None,
        d: float,
        ref: PointRef,
        z: float,
        b: Baseline,
    ) -> list[Signal]:
        """The shared episode of the critical detectors in one direction (``d``: that way +)."""
        st = self.state
        key = f"PAGE:{direction}"
        ep = st.episodes.get(key)
        if ep is None:
            if not fires:
                return []
            rule = next(r for r in PAGING_RULES if r in fires)
            ep = st.episodes[key] = EpisodeState(open_index=ref.index, open_point_id=ref.id, rule=rule)
            if "CUSUM" in fires and side is not None:
                _start_return_test(ep, side)
            return [self._signal(rule, fires[rule], "open", ref, z, b, ep)]
        ep.quiet = 0 if fires else ep.quiet + 1
        a = 0.0
        if "CUSUM" in fires and not ep.cusum and side is not None:
            _start_return_test(ep, side)
        elif ep.cusum:
            ep.shift_sum += d
            ep.shift_n += 1
            a = min(MAX_RETURN_SHIFT, max(MIN_RETURN_SHIFT, ep.shift_sum / ep.shift_n / 2.0))
            ep.back = max(0.0, ep.back + a - d)
        cfg = self.config
        if ep.quiet < cfg.clear_after or (ep.cusum and ep.back <= return_h(a, cfg.clear_arl)):
            return []
        del st.episodes[key]
        assert self._cusum is not None
        self._cusum.reset("up" if direction == cfg.worse else "down")
        fire = msgspec.structs.replace(self._describe(ep.rule, direction), level=ref.value)
        return [self._signal(ep.rule, fire, "cleared", ref, z, b, ep)]

    def _signal(
        self,
        rule: str,
        fire: _Fire,
        state: Literal["open", "cleared"],
        ref: PointRef,
        z: float,
        baseline: Baseline,
        ep: EpisodeState,
    ) -> Signal:
        first_judged = baseline.last_index + 1
        n_points = fire.n_points if state == "open" else 1
        points = tuple(p for p in self.state.recent[-n_points:] if p.index >= first_judged)
        return Signal(
            rule=rule,
            rule_name=fire.name,
            chart=fire.chart,
            severity=fire.severity,
            state=state,
            index=ref.index,
            point_id=ref.id,
            value=ref.value,
            statistic=fire.statistic,
            deviation_sigma=z,
            limits=limits_of(self.config, baseline),
            baseline=baseline,
            points=points,
            episode_index=ep.open_index,
            episode_point_id=ep.open_point_id,
            direction=fire.direction,
            better=fire.better,
            level=fire.level,
        )


def _start_return_test(ep: EpisodeState, side: CusumSide) -> None:
    """Start the shift estimate from what the CUSUM measured over its run (``k + C / run``),
    worth at most SHIFT_PRIOR_POINTS points: at the moment it signals, a CUSUM overestimates a
    small shift (it signals when the noise helped), and a return test sized to that estimate
    would clear a small shift that is still there."""
    ep.cusum = True
    weight = min(max(1, side.run), SHIFT_PRIOR_POINTS)
    ep.shift_sum = side.shift * weight
    ep.shift_n = weight
    ep.back = 0.0


def return_h(a: float, arl: float) -> float:
    """h of the return test ``B = max(0, B + a - d)`` for a false-clear ARL of ``arl`` points
    when the shift ``2a`` is still there (drift ``-a``, unit variance; Siegmund's approximation
    ``(exp(2ab) - 2ab - 1) / (2a^2)`` with ``b = h + 1.166``)."""
    if a <= 0.0:
        return math.inf
    b = math.log(arl * 2 * a * a + 1) / (2 * a)
    for _ in range(3):
        b = math.log(arl * 2 * a * a + 2 * a * b + 1) / (2 * a)
    return b - 1.166


def _rule_of(key: str, ep: EpisodeState) -> str:
    return ep.rule or key.split(":")[0]


def _direction_of(key: str) -> Direction:
    part = key.partition(":")[2]
    return "up" if part == "up" else ("down" if part == "down" else "")


def _episode_order(key: str) -> tuple[int, str]:
    rule = key.split(":")[0]
    return (RULE_ORDER.index(rule) if rule in RULE_ORDER else len(RULE_ORDER), key)
