"""What the dashboard reads and changes, as plain data and one Protocol the API implements.

The web package knows nothing of Postgres or NATS: ``llmscope.api`` builds a :class:`DashboardData`
over its store and an :class:`~llmscope.web.auth.Authenticator` over its keys, and mounts the web
router with them.
The same dataclasses are the API's JSON response models, so the dashboard and the API never drift.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from llmscope.proto.charts import AVAILABILITY, AvailabilityView, RebaselinedChart, parse_chart_key
from llmscope.web.userinfo import without_password

if TYPE_CHECKING:
    pass

Metric = Literal["latency_ms", "ttft_ms", "tokens_per_s"]
METRICS: tuple[Metric, ...] = ("latency_ms", "ttft_ms", "tokens_per_s")
# What a reader sees for each metric: its name and unit, once (axis labels, table headers).
METRIC_LABELS: dict[str, str] = {
    "latency_ms": "latency (ms)",
    "ttft_ms": "TTFT (ms)",
    "tokens_per_s": "tokens/s",
    "availability": "failed probes",
}
# The unit after a value in a table ("1,895.2 ms"): an availability violation's value is a count
# of failed probes, a traffic error rate a fraction.
METRIC_UNITS: dict[str, str] = {
    "latency_ms": "ms",
    "ttft_ms": "ms",
    "tokens_per_s": "tokens/s",
    "availability": "failed probes",
    "traffic_latency_per_token_p50": "ms",
    "traffic_latency_per_token_p90": "ms",
    "traffic_ttft_p50": "ms",
}

_WINDOW = re.compile(r"in the last (\d+) probes")


def failed_probes_text(count: float, rule: str, rule_name: str = "") -> str:
    """An availability chart's value in words, as its rule counts it: ``3 failed probes in a
    row`` (AVAILABILITY, a run), ``10 failed probes in the last 50`` (ERROR_RATE, failures
    scattered in its window, the window read from the engine's rule name ``>= 10 failures in the
    last 50 probes``), a bare count for any other rule."""
    n = f"{count:,.0f} failed probe{'' if round(count) == 1 else 's'}"
    match rule.upper():
        case "AVAILABILITY":
            return f"{n} in a row"
        case "ERROR_RATE":
            window = _WINDOW.search(rule_name)
            return f"{n} in the last {window[1]}" if window else f"{n} in the window"
    return n


WINDOWS_H: tuple[int, ...] = (1, 6, 24, 168, 720)
OVERVIEW_WINDOWS_H: tuple[int, ...] = (1, 6, 24, 168)
Severity = Literal["critical", "warning", "info"]
# A severity filter shows that level and the ones above it ("info": everything).
SEVERITY_AT_LEAST: dict[str, tuple[str, ...]] = {
    "critical": ("critical",),
    "warning": ("critical", "warning"),
    "info": ("critical", "warning", "info"),
}
HEALTH_MAX_HOURS = 7 * 24
ViolationStateFilter = Literal["open", "cleared"]
ChartPhase = Literal["collecting", "armed", "unknown"]


@dataclass(frozen=True, slots=True)
class ChartQuery:
    """One chart: a rational subgroup (provider, model, prompt, target) and one metric over a window.

    ``target`` "" picks the model's only target, or its most recently probed one.
    """

    provider: str
    model: str
    prompt_id: str
    metric: Metric = "latency_ms"
    hours: float = 1.0
    target: str = ""
    severities: tuple[str, ...] = ()
    """The violations marked on the chart by severity (empty: all of them)."""


@dataclass(frozen=True, slots=True)
class ChartPoint:
    """A probe (raw) or a bucket of probes (``n`` > 1, with ``lo``/``hi`` the bucket's min/max)."""

    ts: datetime
    value: float
    n: int = 1
    lo: float | None = None
    hi: float | None = None
    id: str | None = None
    p95: float | None = None
    """A bucket's 95th percentile as a lognormal of its logs' mean and spread (the comparison's
    band above its median ``value``); None where the rollups cannot tell."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Center line, control limits and zone bounds, in the metric's units."""

    center: float
    ucl: float
    lcl: float
    zone_a_upper: float
    zone_a_lower: float
    zone_b_upper: float
    zone_b_lower: float
    sigma: float
    transform: str = "none"
    baseline_id: str | None = None
    baseline_n: int | None = None


@dataclass(frozen=True, slots=True)
class BaselineInfo:
    """The baseline an armed chart's limits come from: who made it and why."""

    id: str
    n: int
    number: int = 0
    n_excluded: int = 0
    created_by: str = "engine"
    reason: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RebaselineMark:
    """A re-baseline of a chart: when its new baseline started, who asked and why."""

    ts: datetime
    number: int
    created_by: str
    reason: str


@dataclass(frozen=True, slots=True)
class ViolationMark:
    """Where a violation sits on a chart."""

    id: str
    ts: datetime
    value: float
    rule: str
    severity: str
    state: str
    point_id: str = ""
    """The probe that triggered it (its pattern's last), where the reader knows it."""


@dataclass(frozen=True, slots=True)
class ChartData:
    """Everything one control chart shows; ``bucket_s`` is 0 when the points are raw probes.

    Limits and phase are the SPC engine's (its chart snapshot): ``phase`` is ``unknown`` while
    the engine has no chart for this subgroup (not running yet, or no point since it started).
    ``false_alarm_every_s`` is the engine's in-control ARL of critical signals (in points) times
    ``probe_interval_s``, the median spacing of this chart's recent probes.
    """

    query: ChartQuery
    start: datetime
    end: datetime
    bucket_s: int
    points: list[ChartPoint]
    limits: Limits | None
    violations: list[ViolationMark]
    failed_probes: int = 0
    chart_key: str = ""
    violations_total: int = 0
    """Violations of the severities asked for in the window: more than ``violations`` when the
    chart is over its marks budget (the most severe, then the newest, are marked)."""
    phase: ChartPhase = "unknown"
    progress: int = 0
    baseline_n: int | None = None
    baseline: BaselineInfo | None = None
    arl0_critical: float | None = None
    probe_interval_s: float | None = None
    false_alarm_every_s: float | None = None
    open_episodes: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    note: str = ""
    """Why the baseline in progress was extended (an unstable baseline), or empty."""
    ar_order: int = 0
    autocorrelation: float | None = None
    tail_rate: float | None = None
    rebaselines: list[RebaselineMark] = field(default_factory=list)
    """Every re-baseline of this chart within the window (dashed lines on the chart)."""

    @property
    def collecting_baseline(self) -> bool:
        return self.phase != "armed"


@dataclass(frozen=True, slots=True)
class Series:
    """A chart the dashboard can show: one prompt of one model."""

    provider: str
    model: str
    prompt_id: str
    last_seen: datetime | None = None


@dataclass(frozen=True, slots=True)
class Violation:
    """A violation episode: the ``open`` event with its frozen statistics and human follow-up."""

    id: str
    episode_id: str
    ts: datetime
    provider: str
    model: str
    target: str
    host: str
    prompt_id: str
    metric: str
    chart: str
    chart_key: str
    rule: str
    rule_name: str
    severity: str
    value: float
    statistic: float | None
    deviation_sigma: float
    limits: dict[str, Any]
    baseline: dict[str, Any]
    point_ids: list[str]
    point_values: list[float]
    point_ts: list[datetime]
    system: dict[str, float | None]
    state: Literal["open", "cleared"]
    cleared_at: datetime | None = None
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    resolved_by: str | None = None
    resolved_at: datetime | None = None
    note: str | None = None
    system_scope: str = "prober"
    """Whose host ``system`` describes: the prober's, or ``target`` when the target runs on it."""
    detail: str = ""
    """The engine's sentence: the metric in its units, which way, by how much, the rule in words."""
    direction: str = ""
    better: bool = False


@dataclass(frozen=True, slots=True)
class ContextPoint:
    """A probe near a violation, for the ±10-point context table."""

    id: str
    ts: datetime
    status: str
    value: float | None
    latency_ms: float | None
    ttft_ms: float | None
    tokens_per_s: float | None
    in_pattern: bool
    trigger: bool
    error: str | None = None
    """Why a failed probe failed (the prober's error text)."""
    prompt_id: str = ""


@dataclass(frozen=True, slots=True)
class ViolationDetail:
    violation: Violation
    context: list[ContextPoint]
    """The ±10 probes around the trigger, for the table."""
    nearby: list[ContextPoint] = field(default_factory=list)
    """The ±30 probes around the trigger, for the mini-chart (``context`` is a slice of it)."""
    marks: list[ViolationMark] = field(default_factory=list)
    """The violations of the same chart (this one among them) triggered by a probe of ``nearby``."""


@dataclass(frozen=True, slots=True)
class ViolationFilter:
    provider: str | None = None
    model: str | None = None
    rule: str | None = None
    severity: str | None = None
    severities: tuple[str, ...] = ()
    """Any of these severities (empty: no restriction)."""
    acknowledged: bool | None = None
    state: ViolationStateFilter | None = None
    since: datetime | None = None
    until: datetime | None = None
    """At or before this (``since`` and ``until`` both included: a comparison chart's shared mark
    links to the log of its violations' span, first to last)."""
    limit: int = 50
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class ViolationPage:
    items: list[Violation]
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model seen in telemetry, its switch, and the host metrics of its latest probe."""

    provider: str
    model: str
    enabled: bool
    first_seen: datetime
    last_seen: datetime
    target: str = ""
    host: str = ""
    last_status: str = ""
    cpu_percent: float | None = None
    memory_percent: float | None = None
    gpu_percent: float | None = None
    gpu_memory_percent: float | None = None
    # "probe", or "traffic" for a model seen only in an application's real traffic (its row then
    # holds that traffic's latest request: target, host, status); a probe replaces it.
    source: str = "probe"


@dataclass(frozen=True, slots=True)
class ModelHealth:
    """One provider/model/target, streaming or not, over a window: failures and latency percentiles.

    ``failures`` counts failed probes by status (only kinds that occurred); ``failure_run`` is the
    number of most recent consecutive failed probes (0 when the last probe succeeded; it cannot
    reach back before the window). Percentiles (linear interpolation, ``percentile_cont``) cover
    successful probes only and are null when there were none, or, for TTFT, when no probe
    measured it. Open violations are the model's (all targets and modes): neither cleared nor
    resolved, whenever they opened; ``worst_severity`` is the highest among them.
    """

    provider: str
    model: str
    target: str
    streaming: bool
    probes: int
    ok: int
    success_ratio: float
    failures: dict[str, int]
    failure_run: int
    last_ts: datetime
    last_status: str
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    ttft_p99_ms: float | None = None
    tokens_per_s_p50: float | None = None
    open_violations: int = 0
    worst_severity: str | None = None
    availability: AvailabilityView | None = None
    """The engine's availability chart of this target (None: the engine has not written it)."""


@dataclass(frozen=True, slots=True)
class SilentModel:
    """An enabled model not probed in the overview's window, and when it last was."""

    provider: str
    model: str
    target: str
    last_seen: datetime
    last_status: str


@dataclass(frozen=True, slots=True)
class HealthOverview:
    """Per-model health over ``[start, end]``: one row per provider/model/target/streaming, sorted."""

    hours: float
    start: datetime
    end: datetime
    models: list[ModelHealth]
    silent: list[SilentModel] = field(default_factory=list)
    """Enabled models with no probe in the window: a prober that stopped is news too."""


@dataclass(frozen=True, slots=True)
class Sparkline:
    """One chart of a model over the overview's window, in buckets of the per-minute rollups.

    Each point is a bucket's geometric mean (close to its median for latencies), with the
    engine's limits of that chart (None while it collects its baseline) or, while it collects,
    its baseline's progress (points collected of ``baseline_n``; None without a chart record).
    """

    provider: str
    model: str
    prompt_id: str
    target: str
    metric: Metric
    bucket_s: int
    points: list[ChartPoint]
    limits: Limits | None = None
    progress: int | None = None
    baseline_n: int | None = None


@dataclass(frozen=True, slots=True)
class OpenEpisode:
    """An open (neither cleared nor resolved) violation episode."""

    id: str
    ts: datetime
    provider: str
    model: str
    target: str
    prompt_id: str
    metric: str
    rule: str
    severity: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Overview:
    """Every model at a glance over ``[start, end]``: a latency sparkline each, open criticals."""

    hours: float
    start: datetime
    end: datetime
    sparklines: list[Sparkline]
    critical: list[OpenEpisode]
    critical_24h: int = 0
    """Critical episodes opened in the last 24 h (each one a page, unless silenced)."""


@dataclass(frozen=True, slots=True)
class FalseAlarmBudget:
    """Critical signals a day the armed charts raise from noise alone (their in-control ARLs at
    their probes' pace): what the pages of a quiet day should come close to."""

    armed_charts: int
    counted_charts: int
    """Armed charts with an ARL and a known pace (availability charts publish no ARL)."""
    per_day: float


SettingKind = Literal["bool", "int", "float", "text", "list", "choice"]


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """A known setting; a secret's value is never returned, only whether it is set."""

    key: str
    kind: SettingKind
    description: str
    secret: bool
    is_set: bool
    value: Any
    default: Any
    choices: list[str] = field(default_factory=list)
    updated_at: datetime | None = None
    updated_by: str | None = None


@dataclass(frozen=True, slots=True)
class RebaselineResult:
    """The answer to a re-baseline request: the engine's reply, or that no engine answered."""

    status: Literal["ok", "refused", "no_engine"]
    chart_key: str
    replica: int = 0
    cleared: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class ModelRebaselineResult:
    """The answer to a model-wide re-baseline: the charts re-baselined, or why none was."""

    status: Literal["ok", "refused", "no_engine"]
    provider: str
    model: str
    target: str = ""
    replica: int = 0
    charts: tuple[RebaselinedChart, ...] = ()
    cleared: int = 0
    error: str = ""

    @property
    def chart_names(self) -> list[str]:
        """Each chart re-baselined as "target · prompt · metric" ("target · availability")."""
        out = []
        for chart in self.charts:
            _provider, _model, target, prompt_id, metric = parse_chart_key(chart.chart_key)
            parts = (target, metric) if metric == AVAILABILITY else (target, prompt_id, metric)
            out.append(" · ".join((without_password(parts[0]), *parts[1:])))
        return out


class SettingError(ValueError):
    """A setting key is unknown or its value is invalid; the message names the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class SettingErrors(ValueError):
    """Several settings refused at once: the message for each key."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {m}" for k, m in errors.items()))
        self.errors = errors


class DashboardData(Protocol):
    """The dashboard's data access; the API implements it over Postgres."""

    async def series(self) -> list[Series]: ...

    async def chart(self, query: ChartQuery, *, marks: int = ...) -> ChartData:
        """``marks``: the violation marks wanted at most (the most severe, then the newest)."""
        ...

    async def targets(self, provider: str, model: str, prompt_id: str) -> list[str]:
        """The stored targets of one prompt of a model (those its chart offers), most recently
        probed first; none for an unknown one. Lighter than :meth:`chart` when only they are
        wanted."""
        ...

    async def rebaseline(self, chart_key: str, by: str, reason: str) -> RebaselineResult: ...

    async def rebaseline_model(
        self, provider: str, model: str, target: str, by: str, reason: str
    ) -> ModelRebaselineResult: ...

    async def violations(self, flt: ViolationFilter) -> ViolationPage: ...

    async def violation(self, violation_id: str) -> ViolationDetail | None: ...

    async def acknowledge(self, violation_id: str, by: str, note: str | None) -> Violation | None: ...

    async def resolve(self, violation_id: str, by: str, note: str | None) -> Violation | None: ...

    async def models(self) -> list[ModelInfo]: ...

    async def overview(self, hours: float) -> Overview: ...

    async def false_alarm_budget(self) -> FalseAlarmBudget: ...

    async def model_health(self, hours: float) -> HealthOverview: ...

    async def set_model_enabled(self, provider: str, model: str, enabled: bool) -> ModelInfo | None: ...

    async def settings(self) -> list[SettingInfo]: ...

    async def setting_value(self, key: str) -> object:
        """One setting's value (its default when unset; None for a secret)."""
        ...

    async def put_setting(self, key: str, value: object, by: str) -> SettingInfo: ...

    async def put_settings(
        self, values: dict[str, object], by: str, remove: Collection[str] = ()
    ) -> list[SettingInfo]:
        """Store all of ``values`` and delete the stored ``remove`` keys, or do nothing:
        :class:`SettingErrors` names each refused key."""
        ...
