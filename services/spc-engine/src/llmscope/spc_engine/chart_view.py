"""What a chart shows its readers: its limits, the rules it runs and their thresholds."""

from __future__ import annotations

import math

from llmscope.proto.violation import ChartLimits
from llmscope.spc_engine import transforms
from llmscope.spc_engine.availability import binomial_threshold
from llmscope.spc_engine.baseline import spike_limit
from llmscope.spc_engine.chart_state import Baseline, ChartState
from llmscope.spc_engine.config import ChartConfig

RULE_ORDER = ("CUSUM", "TAIL", "SPIKE", "EWMA", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8")


def limits_of(config: ChartConfig, baseline: Baseline) -> ChartLimits:
    """Centre, control limits and zone bounds in metric units (asymmetric on the log scale)."""
    c, s, t = baseline.center, baseline.sigma, config.transform
    k = config.rules.r1.k

    def inv(y: float) -> float:
        return transforms.inverse(t, y)

    return ChartLimits(
        transform=t,
        center=inv(c),
        sigma=s,
        ucl=inv(c + k * s),
        lcl=inv(c - k * s),
        zone_a_upper=inv(c + 2 * s),
        zone_a_lower=inv(c - 2 * s),
        zone_b_upper=inv(c + s),
        zone_b_lower=inv(c - s),
    )


class ChartView:
    """The read-only views of a chart's configuration and state."""

    config: ChartConfig
    key: str
    state: ChartState

    @property
    def armed(self) -> bool:
        return self.state.baseline is not None

    @property
    def progress(self) -> tuple[int, int]:
        """(points collected, points needed) of the baseline in progress."""
        if self.state.baseline is not None:
            return (self.config.baseline_n, self.config.baseline_n)
        return (len(self.state.collected), self.config.baseline_n)

    def limits(self) -> ChartLimits | None:
        return None if self.state.baseline is None else limits_of(self.config, self.state.baseline)

    def rules(self) -> list[str]:
        """The rules this configuration evaluates, in evaluation order."""
        cfg = self.config
        enabled = {
            "SPIKE": cfg.spike.enabled,
            "CUSUM": cfg.cusum.enabled,
            "TAIL": cfg.tail.enabled,
            "EWMA": cfg.ewma.enabled,
            **{f"R{n}": cfg.individuals and cfg.rules.test(n).enabled for n in range(1, 9)},
        }
        return [r for r in RULE_ORDER if enabled[r]]

    @property
    def spike_limit(self) -> float:
        """Residual sigmas (worse direction) beyond which one point is a SPIKE."""
        b = self.state.baseline
        return math.inf if b is None else spike_limit_of(self.config, b)

    @property
    def tail_threshold(self) -> int:
        """Tail points among the last ``tail.window`` that open a TAIL episode."""
        b = self.state.baseline
        return 0 if b is None else tail_threshold_of(self.config, b)

    @property
    def tail_clear(self) -> int:
        """Tail points among the last ``tail.window`` that keep an open episode going."""
        b, t = self.state.baseline, self.config.tail
        rate = max(t.min_rate, b.tail_rate if b is not None else 0.0)
        return max(1, math.ceil(2 * t.window * rate))


def spike_limit_of(config: ChartConfig, b: Baseline) -> float:
    """The SPIKE limit of baseline ``b`` under ``config`` (residual sigmas, worse direction)."""
    return spike_limit(config.spike.k, b.spike_rate, b.spike_excess, b.worst, config.spike.arl0)


def tail_threshold_of(config: ChartConfig, b: Baseline) -> int:
    """Tail points among the last ``tail.window`` that open a TAIL episode on baseline ``b``."""
    t = config.tail
    return binomial_threshold(t.window, max(t.min_rate, b.tail_rate), t.alpha)
