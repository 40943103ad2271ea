"""One metric's chart: transform, Phase I model, the detectors, and violation episodes.

The same object runs in the service (one per provider/model/target/prompt/metric) and in the
offline ``analyze`` command. Its whole state is a msgspec Struct (:class:`ChartState`), so a
snapshot is ``msgspec.json.encode(chart.state)`` and ``MetricChart(config, state=decoded)``
continues exactly where the snapshot left off.

Phase I collects ``baseline_n`` points and fits the in-control model (:func:`baseline.fit`): a
baseline that is not stable is not frozen, its older part is dropped and collection goes on,
and ``ChartState.note`` says why. Phase II judges each point by its one-step residual from the
model's robust filter (``r``, innovation sigmas), clipped at ``clip`` for the CUSUM and EWMA.

Episodes (what is published): the critical detectors of one direction (``CUSUM``, ``TAIL``,
``SPIKE``) share one episode per direction, keyed ``PAGE:up`` / ``PAGE:down``: it opens once, at
the first point any of them fires (named after that rule), and clears after ``clear_after``
points on which none fired and, once a CUSUM fired in it, after the return test says the level
is back: ``B = max(0, B + a - d)`` over the episode's signed residuals ``d`` with ``a`` half the
shift measured so far (at most MAX_RETURN_SHIFT), clearing when B passes the h that a shift
still present would take ``clear_arl`` points to reach. So a sustained shift of any size is one
episode, however its CUSUM wanders near h or the shift eases off, and a shift up and a later
shift down are two. The other rules (EWMA, Nelson tests) keep one episode per rule and direction
and clear after ``clear_after`` quiet points. When an episode clears, its CUSUM side (or the
EWMA) restarts from zero. Phase I points are never judged; Phase II starts with the point after
the baseline's last.

The chart is built in layers, one concern a module, each using only those below it:
:mod:`.chart_state` (the state and the signals), :mod:`.chart_view` (the read-only views),
:mod:`.chart_episodes` (episodes and their signals), :mod:`.chart_judging` (Phase II: the
detectors), :mod:`.chart_baselining` (Phase I: the baseline) and this module's
:class:`MetricChart` (construction and ``update``).
"""

from __future__ import annotations

from datetime import datetime

from llmscope.spc_engine import transforms
from llmscope.spc_engine.chart_baselining import (
    ChartBaselining,
    _baseline_id,
    _clipped_normal_sd,
    _normal_tail,
    fit_baseline,
    settle_baseline,
    stability_spread,
)
from llmscope.spc_engine.chart_episodes import (
    MAX_RETURN_SHIFT,
    MIN_RETURN_SHIFT,
    PAGING_RULES,
    SHIFT_PRIOR_POINTS,
    return_h,
)
from llmscope.spc_engine.chart_judging import _INF, LEVEL_POINTS, SIDED_TESTS, _isfinite, _log
from llmscope.spc_engine.chart_state import (
    MODEL_VERSION,
    Baseline,
    ChartState,
    EpisodeState,
    PointRef,
    Signal,
)
from llmscope.spc_engine.chart_view import RULE_ORDER, limits_of, spike_limit_of, tail_threshold_of
from llmscope.spc_engine.config import ChartConfig

__all__ = [
    "LEVEL_POINTS",
    "MAX_RETURN_SHIFT",
    "MIN_RETURN_SHIFT",
    "MODEL_VERSION",
    "PAGING_RULES",
    "RECENT",
    "RULE_ORDER",
    "SHIFT_PRIOR_POINTS",
    "SIDED_TESTS",
    "UPGRADE_REASON",
    "Baseline",
    "ChartState",
    "EpisodeState",
    "MetricChart",
    "PointRef",
    "Signal",
    "fit_baseline",
    "limits_of",
    "return_h",
    "settle_baseline",
    "spike_limit_of",
    "stability_spread",
    "tail_threshold_of",
]

RECENT = 64
"""Points kept for reporting the points that formed a pattern (longest default run: 15)."""
UPGRADE_REASON = (
    "new in-control model (serial dependence, robust baseline, tail rate, stability check):"
    " the limits are estimated again"
)


class MetricChart(ChartBaselining):
    """Streaming chart of one metric; ``update`` returns the episode signals of that point."""

    def __init__(self, config: ChartConfig, key: str = "", state: ChartState | None = None) -> None:
        self.config = config
        self.key = key
        if state is None:
            state = ChartState(model=MODEL_VERSION)
        self.state = state
        if state.baseline is None and config.center is not None and config.sigma is not None:
            center = transforms.forward(config.transform, config.center)
            if center is None:
                raise ValueError(
                    f"center {config.center} cannot be charted with transform {config.transform}"
                )
            state.model = MODEL_VERSION
            self._arm(
                Baseline(
                    id=f"known-{_baseline_id(key, 0, -1, -1)}",
                    number=0,
                    center=center,
                    sigma=config.sigma,
                    n=0,
                    known=True,
                    created_by="config",
                    reason="known parameters",
                    model=MODEL_VERSION,
                    sigma_e=config.sigma,
                    w_sd=_clipped_normal_sd(config.clip),
                    tail_rate=_normal_tail(config.tail.k),
                )
            )
        else:
            self._build()

    def update(self, x: float, point_id: str = "", ts: datetime | None = None) -> list[Signal]:
        # transforms.forward, inlined: this runs for every point of every chart.
        y: float | None
        if self.config.transform == "log":
            y = _log(x) if x > 0.0 and x != _INF else None  # x > 0 is False for NaN
        else:
            y = x if _isfinite(x) else None
        st = self.state
        if y is None:
            st.n_rejected += 1
            return []
        out: list[Signal] | None = None
        if st.model < MODEL_VERSION:
            out = self.rebaseline("engine", UPGRADE_REASON)
            st.model = MODEL_VERSION
        ref = PointRef(st.n_points, point_id, x, ts)
        st.n_points += 1
        recent = st.recent
        recent.append(ref)
        if len(recent) > RECENT:
            del recent[0]
        baseline = st.baseline
        if baseline is None:
            self._collect(y, ref)
            return out if out is not None else []
        judged = self._judge(y, ref, baseline)
        return out + judged if out else judged
