"""What a chart remembers and what it reports.

:class:`ChartState` is the whole state of a :class:`~llmscope.spc_engine.chart.MetricChart`, so a
snapshot is ``msgspec.json.encode(chart.state)``; :class:`Signal` is an episode opening or
clearing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from llmscope.proto.violation import ChartKind, ChartLimits, Direction
from llmscope.spc_engine.charts.cusum import CusumState
from llmscope.spc_engine.charts.ewma import EwmaState
from llmscope.spc_engine.charts.individuals import IndividualsState
from llmscope.spc_engine.rules import Severity

MODEL_VERSION = 2
"""The in-control model's version: a state from an older one is re-baselined at its next point."""


class PointRef(msgspec.Struct, frozen=True, array_like=True):
    """A charted point: its index in the series, telemetry id, value (metric units), time."""

    index: int
    id: str
    value: float
    ts: datetime | None = None


class Baseline(msgspec.Struct, frozen=True, kw_only=True):
    """The frozen Phase I model limits are judged against, in chart units.

    ``center`` and ``sigma`` are the level and marginal sigma (the drawn limits); the detectors
    judge one-step residuals of the AR model ``ar`` in units of ``sigma_e``.
    """

    id: str
    number: int
    center: float
    sigma: float
    n: int
    n_excluded: int = 0
    known: bool = False
    first_index: int = -1
    last_index: int = -1
    started_at: datetime | None = None
    ended_at: datetime | None = None
    created_by: str = "engine"
    reason: str = "initial baseline"
    model: int = 1
    ar: tuple[float, ...] = ()
    sigma_e: float = 0.0
    w_mean: float = 0.0
    w_sd: float = 1.0
    tail_rate: float = 0.0
    spike_rate: float = 0.0
    spike_excess: float = 0.0
    worst: float = 0.0
    lag_corr: tuple[float, ...] = ()


class EpisodeState(msgspec.Struct, kw_only=True):
    open_index: int
    open_point_id: str
    quiet: int = 0
    rule: str = ""
    """The rule that opened it ("" in states from before episodes were keyed by direction)."""
    cusum: bool = False
    """A CUSUM fired in this episode: it clears only when the return test passes."""
    shift_sum: float = 0.0
    shift_n: int = 0
    back: float = 0.0
    """The return test's statistic."""


class ChartState(msgspec.Struct, kw_only=True):
    """Everything a chart remembers; round-trips through JSON unchanged."""

    n_points: int = 0
    n_rejected: int = 0
    baseline_number: int = 0
    pending_by: str = "engine"
    pending_reason: str = "initial baseline"
    collected: list[float] = msgspec.field(default_factory=list)
    collected_first: PointRef | None = None
    baseline: Baseline | None = None
    individuals: IndividualsState | None = None
    ewma: EwmaState | None = None
    cusum: CusumState | None = None
    episodes: dict[str, EpisodeState] = msgspec.field(default_factory=dict)
    recent: list[PointRef] = msgspec.field(default_factory=list)
    prompt_hash: str = ""
    """Hash of the prompt text the chart's points come from ("" before the first point)."""
    model: int = 1
    """MODEL_VERSION the state was built with (1: before the field existed)."""
    hist: list[float] = msgspec.field(default_factory=list)
    """The robust filter's last ``p`` values, oldest first (the AR predictor's inputs)."""
    tail_window: list[bool] = msgspec.field(default_factory=list)
    """Whether each of the last ``tail.window`` points was a tail point (worse direction)."""
    note: str = ""
    """Why the baseline in progress was extended ("" when nothing was refused)."""
    refused: int = 0
    """Baselines refused as unstable since the last armed one."""


class Signal(msgspec.Struct, frozen=True, kw_only=True):
    """An episode opening or clearing, with the statistics frozen at that point."""

    rule: str
    rule_name: str
    chart: ChartKind
    severity: Severity
    state: Literal["open", "cleared"]
    index: int
    point_id: str
    value: float
    statistic: float | None
    deviation_sigma: float
    limits: ChartLimits
    baseline: Baseline
    points: tuple[PointRef, ...]
    episode_index: int
    episode_point_id: str
    direction: Direction = ""
    better: bool = False
    level: float | None = None
    """The process's estimated level (metric units) when the signal fired, where estimated."""


class _Fire(msgspec.Struct, frozen=True, kw_only=True):
    chart: ChartKind
    severity: Severity
    name: str
    statistic: float | None = None
    n_points: int = 1
    direction: Direction = ""
    better: bool = False
    level: float | None = None


_NO_FIRES: dict[str, _Fire] = {}
"""Shared and never written: the per-point path makes a dict only when a detector fires."""
