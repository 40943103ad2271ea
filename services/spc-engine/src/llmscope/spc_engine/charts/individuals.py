"""Individuals (Shewhart) chart: frozen centre and sigma, the Nelson tests on every point."""

from __future__ import annotations

import msgspec

from llmscope.spc_engine.rules import NelsonRules, NelsonState, RulesConfig


class IndividualsState(msgspec.Struct, kw_only=True):
    n: int = 0
    rules: NelsonState = msgspec.field(default_factory=NelsonState)


class IndividualsChart:
    """``update(y)`` standardises a chart-scale value and returns (z, Nelson tests fired)."""

    def __init__(
        self, center: float, sigma: float, rules: RulesConfig, state: IndividualsState | None = None
    ) -> None:
        if not sigma > 0:
            raise ValueError("an individuals chart needs sigma > 0")
        self.center = center
        self.sigma = sigma
        self.state = state if state is not None else IndividualsState()
        self.nelson = NelsonRules(rules, self.state.rules)

    def update(self, y: float) -> tuple[float, list[int]]:
        z = (y - self.center) / self.sigma
        self.state.n += 1
        return z, self.nelson.update(y, z)
