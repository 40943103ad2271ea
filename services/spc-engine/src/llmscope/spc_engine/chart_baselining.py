"""Phase I: a chart collects its baseline, fits it and arms it (or refuses it as unstable and
collects on), and starts a new one when asked to or when a setting the model depends on changes."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import msgspec

from llmscope.spc_engine import transforms
from llmscope.spc_engine.baseline import Fit, Unstable, fit
from llmscope.spc_engine.chart_episodes import _direction_of, _episode_order, _rule_of
from llmscope.spc_engine.chart_judging import ChartJudging
from llmscope.spc_engine.chart_state import MODEL_VERSION, Baseline, PointRef, Signal
from llmscope.spc_engine.charts.cusum import CusumChart
from llmscope.spc_engine.charts.ewma import EwmaState
from llmscope.spc_engine.charts.individuals import IndividualsState
from llmscope.spc_engine.config import BASELINE_SETTINGS, ChartConfig


class ChartBaselining(ChartJudging):
    """Phase I of a chart: collecting, fitting and arming its baseline, and starting again."""

    def _collect(self, y: float, ref: PointRef) -> None:
        st = self.state
        if not st.collected:
            st.collected_first = ref
        st.collected.append(y)
        if len(st.collected) < self.config.baseline_n:
            return
        cfg = self.config
        result = settle_baseline(cfg, st.collected, st.refused, self._format_level)
        if not isinstance(result, Fit):
            kept = st.collected[result.keep_from :]
            start = ref.index - len(kept) + 1
            st.collected = kept
            st.collected_first = next(
                (p for p in st.recent if p.index == start),
                PointRef(start, "", transforms.inverse(cfg.transform, kept[0])),
            )
            st.note = result.reason
            st.refused += 1
            return
        first = st.collected_first if st.collected_first is not None else ref
        sigma_e = max(result.sigma_e, cfg.min_sigma) if math.isfinite(result.sigma_e) else cfg.min_sigma
        baseline = Baseline(
            id=_baseline_id(self.key, st.baseline_number, first.index, ref.index),
            number=st.baseline_number,
            center=result.center,
            sigma=max(result.sigma, sigma_e),
            n=result.n,
            n_excluded=result.n_excluded,
            first_index=first.index,
            last_index=ref.index,
            started_at=first.ts,
            ended_at=ref.ts,
            created_by=st.pending_by,
            reason=st.pending_reason + _refusals_note(st.refused, cfg.max_refusals, result.n),
            model=MODEL_VERSION,
            ar=result.ar,
            sigma_e=sigma_e,
            w_mean=result.w_mean,
            w_sd=result.w_sd if result.w_sd > 0 else 1.0,
            tail_rate=result.tail_rate,
            spike_rate=result.spike_rate,
            spike_excess=result.spike_excess,
            worst=result.max_residual,
            lag_corr=result.lag_corr,
        )
        st.collected = []
        st.collected_first = None
        st.note = ""
        st.refused = 0
        self._arm(baseline)

    def _format_level(self, y: float) -> str:
        return f"{transforms.inverse(self.config.transform, y):.4g}"

    def _arm(self, baseline: Baseline) -> None:
        st = self.state
        st.baseline = baseline
        st.individuals = IndividualsState()
        st.ewma = EwmaState()
        cfg = self.config.cusum
        st.cusum = CusumChart(cfg.k, cfg.h, cfg.cap).state
        st.hist = [baseline.center] * len(baseline.ar)
        st.tail_window = []
        self._build()

    def rebaseline(self, by: str, reason: str) -> list[Signal]:
        """Forget the limits and collect a new baseline; open episodes clear now."""
        st = self.state
        out: list[Signal] = []
        if st.baseline is not None and st.recent:
            last = st.recent[-1]
            y = transforms.forward(self.config.transform, last.value)
            z = 0.0 if y is None or not st.baseline.sigma else (y - st.baseline.center) / st.baseline.sigma
            for key in sorted(st.episodes, key=_episode_order):
                ep = st.episodes.pop(key)
                rule = _rule_of(key, ep)
                fire = self._describe(rule, _direction_of(key))
                out.append(self._signal(rule, fire, "cleared", last, z, st.baseline, ep))
        st.baseline = None
        st.individuals = st.ewma = st.cusum = None
        st.episodes = {}
        st.collected = []
        st.collected_first = None
        st.hist = []
        st.tail_window = []
        st.note = ""
        st.refused = 0
        st.baseline_number += 1
        st.pending_by = by
        st.pending_reason = reason
        self._build()
        return out

    def reconfigure(self, config: ChartConfig, by: str, reason: str) -> list[Signal]:
        """Run with ``config`` from the next point on.

        A change of a setting the in-control model depends on (:data:`BASELINE_SETTINGS`, the
        tail rule's k) starts a new baseline (recorded with ``by`` and ``reason``; open episodes
        clear now, as in :meth:`rebaseline`). Any other change keeps the baseline and the run
        counters; a CUSUM whose k, h or cap changed restarts from zero.
        """
        old = self.config
        if (
            any(getattr(old, f) != getattr(config, f) for f in BASELINE_SETTINGS)
            or old.tail.k != config.tail.k
        ):
            out = self.rebaseline(by, reason)  # judged with the old transform
            self.config = config
            self._build()
            return out
        self.config = config
        st = self.state
        if st.cusum is not None and (old.cusum.k, old.cusum.h, old.cusum.cap) != (
            config.cusum.k,
            config.cusum.h,
            config.cusum.cap,
        ):
            st.cusum = CusumChart(config.cusum.k, config.cusum.h, config.cusum.cap).state
        self._build()
        return []


def _baseline_id(key: str, number: int, first: int, last: int) -> str:
    digest = hashlib.sha256(f"{key}|{number}|{first}|{last}".encode()).hexdigest()[:16]
    return f"b{number}-{digest}"


def settle_baseline(
    config: ChartConfig,
    values: Sequence[float],
    refused: int,
    level: Callable[[float], str] = "{:.4g}".format,
) -> Fit | Unstable:
    """:func:`fit_baseline`, except that after ``config.max_refusals`` unstable baselines in a row
    (``refused``) the next one is fitted without the stability test.

    Measured on AR(1) latency whose level wanders slowly (``performance.Process.wander``): charts
    armed this way raise no more false alarms than those whose baseline passed the test.
    """
    result = fit_baseline(config, values, level)
    if isinstance(result, Unstable) and config.max_refusals and refused >= config.max_refusals:
        return fit_baseline(msgspec.structs.replace(config, stability=False), values, level)
    return result


def _refusals_note(refused: int, max_refusals: int, n: int) -> str:
    if not refused:
        return ""
    plural = "s" * (refused > 1)
    if max_refusals and refused >= max_refusals:
        return (
            f" (after {refused} unstable baseline{plural}: armed on the latest {n} points although"
            " the level still moved; re-baseline once the endpoint is steady)"
        )
    return f" (after {refused} unstable baseline{plural})"


def fit_baseline(
    config: ChartConfig, values: Sequence[float], level: Callable[[float], str] = "{:.4g}".format
) -> Fit | Unstable:
    """:func:`baseline.fit` with a chart configuration's settings."""
    return fit(
        values,
        estimator=config.sigma_estimator,
        clip=config.clip,
        tail_k=config.tail.k,
        worse=1.0 if config.worse == "up" else -1.0,
        max_order=config.max_ar_order,
        serial=config.serial,
        stability=config.stability,
        winsor=config.clean_limit,
        level=level,
        min_spread=stability_spread(config),
        inverse=lambda y: transforms.inverse(config.transform, y),
    )


def stability_spread(config: ChartConfig) -> float:
    """The factor a baseline's block levels must be apart, besides beyond its noise, to be refused:
    ``1 + min_change / 2``. A step smaller than that cannot by itself take the level to the page
    floor from the baseline's median, and on a real server the level wanders by a few per cent
    with nothing wrong: measured, the test in sigma units alone refused three baselines in a row
    for block spreads of 3.5-8 % (README, "Measured against a real inference server"). With no
    floor (``min_change`` 0) the test is the statistical one alone."""
    return 1.0 + config.min_change / 2.0


def _normal_tail(k: float) -> float:
    return 0.5 * math.erfc(k / math.sqrt(2.0))


def _clipped_normal_sd(c: float) -> float:
    """Standard deviation of a standard normal clipped to +-c."""
    pdf = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    tail = _normal_tail(c)
    return math.sqrt((1 - 2 * tail) - 2 * c * pdf + 2 * c * c * tail)
