"""Chart configuration and the service's defaults, with the reasoning behind them.

The goal (issue 7): on realistic LLM latency, with the in-control model estimated from the default
baseline, ``critical`` signals at most once per 100,000 probes on independent lognormal latency
and at most three times on autocorrelated (AR(1) on the log scale, phi 0.1-0.5) or heavy-tailed
latency (1-2 % of answers 3-5x slower), while a sustained degradation of 1 sigma is found within
a median of 25 probes (45 at phi 0.3) and 2 sigma within 8 (12), and each sustained shift opens
exactly one critical episode. ``make bench`` measures all of it (``performance``).

- Log scale for latency-like metrics: lognormal latency becomes normal.
- The in-control model (:mod:`baseline`): robust level and scale, an AR(p) model of serial
  dependence chosen by BIC, a robust filter whose one-step residuals the detectors judge, the
  baseline's own tail rate, and a stability test before anything is frozen.
- ``critical`` comes only from detectors built for a tiny false-alarm rate, and only in the
  degradation direction (latency and TTFT up, tokens/s down): a CUSUM with three reference
  values (k = 0.25, 0.5, 1.0) on the clipped residuals, each h set for a one-sided in-control ARL
  of 1,000,000 (Brook-Evans); ``TAIL``, an excess of slow answers over the baseline's tail rate;
  ``SPIKE``, one point beyond anything the baseline made plausible. A move the other way is
  recorded as ``info`` (worded "faster"); ``page_better`` makes it page.
- Clipping each residual at ``clip`` sigmas bounds what one point adds to a CUSUM (3 - k), so a
  handful of isolated slow answers cannot drive it over h; they count for ``TAIL`` instead.
- One paging metric per probe: total latency pages by default; TTFT and tokens/s run the same
  detectors at ``warning`` (per-model settings can make them critical).
- The classic tests still run, on the residuals, at lower severity: Nelson test 1 (3 sigma) at
  ``warning`` and an EWMA (lambda 0.1, in-control ARL 20,000) at ``warning``. Tests 2-8 are off
  by default (on at ``info`` with a per-model setting): together they false-alarm about once per
  70 in-control points.
- Episodes: the critical detectors of one direction share one episode, which opens once and
  clears when the chart has been quiet for ``clear_after`` points and, after a CUSUM signal, a
  return test (a CUSUM towards the baseline, sized to the shift it measured) says the process is
  back; other rules keep an episode per rule and direction.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from llmscope.proto.chartconfig import (
    ChartSettings,
    CusumSettings,
    EwmaSettings,
    RulesSettings,
    RunTestSettings,
    SigmaTestSettings,
    SpikeSettings,
)
from llmscope.spc_engine.baseline import SigmaEstimator
from llmscope.spc_engine.rules import RulesConfig, Severity
from llmscope.spc_engine.transforms import TransformName

Direction = Literal["up", "down"]
DEFAULT_BASELINE_N = 1000
DEFAULT_CUSUM_K = (0.25, 0.5, 1.0)
DEFAULT_CUSUM_H = (22.318, 11.965, 6.116)
"""h for a one-sided in-control ARL of 1e6 at each k (only the degradation side pages)."""
DEFAULT_EWMA_LAMBDA = 0.1
DEFAULT_EWMA_L = 3.932
"""L for an in-control ARL of 20,000 at lambda 0.1 (``arl.ewma_limit_for_arl0``)."""
DEFAULT_SPIKE_K = 5.0


class SpikeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A single point beyond anything the baseline made plausible (rule ``SPIKE``).

    The limit is the larger of ``k`` residual sigmas, the baseline's own tail model at an
    in-control ARL of ``arl0``, and its worst point plus a margin (``baseline.fit``).
    """

    enabled: bool = True
    k: float = DEFAULT_SPIKE_K
    arl0: float = 2e5
    severity: Severity = "critical"


class TailConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An excess of slow answers (rule ``TAIL``): residuals beyond ``k`` sigmas, counted over the
    last ``window`` points, against the baseline's rate of them (floored at ``min_rate``): it
    fires at the smallest count whose binomial tail is below ``alpha``."""

    enabled: bool = True
    k: float = 3.0
    window: int = 50
    alpha: float = 1e-7
    min_rate: float = 0.002
    severity: Severity = "critical"


class EwmaConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """EWMA chart (rule ``EWMA``): smoothing ``lam`` and limit multiplier ``L``."""

    enabled: bool = True
    lam: float = DEFAULT_EWMA_LAMBDA
    L: float = DEFAULT_EWMA_L
    severity: Severity = "warning"


class CusumConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Two-sided CUSUM (rule ``CUSUM``); ``k`` and ``h`` in sigma units, one h per k."""

    enabled: bool = True
    k: tuple[float, ...] = DEFAULT_CUSUM_K
    h: tuple[float, ...] = DEFAULT_CUSUM_H
    cap: float = 1.25
    severity: Severity = "critical"

    def __post_init__(self) -> None:
        if len(self.k) != len(self.h) or not self.k:
            raise ValueError("cusum needs one h per k")


class ChartConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything that decides what one chart signals."""

    transform: TransformName = "log"
    worse: Direction = "up"
    """Which way is a degradation: "up" for latency and TTFT, "down" for tokens/s."""
    page_better: bool = False
    """Give an improvement the configured severities (else it is ``info``)."""
    baseline_n: int = DEFAULT_BASELINE_N
    sigma_estimator: SigmaEstimator = "sd"
    serial: bool = True
    """Model serial dependence (AR(p)); off: points are taken as independent."""
    max_ar_order: int = 5
    stability: bool = True
    """Refuse a baseline whose blocks differ by more than its own noise (and collect more)."""
    max_refusals: int = 3
    """Unstable baselines in a row after which the next one is armed anyway, its reason saying
    so (a level that keeps moving must not leave a chart unarmed for ever); 0: refuse for ever."""
    clip: float = 3.0
    """Residual sigmas beyond which a point counts only this much (CUSUM, EWMA, filter)."""
    clean_limit: float | None = None
    """Robust sigmas beyond which baseline points are winsorized; None: ``default_clean_limit(n)``."""
    center: float | None = None
    """Known centre, in the metric's own units (ms); with ``sigma``, no baseline is collected."""
    sigma: float | None = None
    """Known sigma, in chart units (log units when ``transform = "log"``)."""
    min_sigma: float = 1e-3
    """Floor for an estimated sigma, chart units: a constant baseline must not give sigma 0."""
    individuals: bool = True
    rules: RulesConfig = msgspec.field(default_factory=RulesConfig)
    spike: SpikeConfig = msgspec.field(default_factory=SpikeConfig)
    ewma: EwmaConfig = msgspec.field(default_factory=EwmaConfig)
    cusum: CusumConfig = msgspec.field(default_factory=CusumConfig)
    tail: TailConfig = msgspec.field(default_factory=TailConfig)
    min_change: float = 0.0
    """How much worse than the baseline's centre, as a factor ``1 + min_change`` in the metric's
    own units (0.5: 1.5x slower, or 1.5x fewer tokens/s), the level of a sustained signal (CUSUM:
    the mean since its run began; TAIL: of its window) must be to open the chart's page; a
    smaller drift that is statistically real is left to the EWMA warning. Once the page is open,
    any signal keeps it open (hysteresis). 0: every statistical signal opens it."""
    min_spike_change: float = 0.0
    """The same for one answer (SPIKE)."""
    clear_after: int = 10
    clear_arl: float = 1e5
    """In-control points expected before the return test wrongly clears a shift still there."""

    def __post_init__(self) -> None:
        if self.baseline_n < 2:
            raise ValueError("baseline_n must be at least 2")
        if (self.center is None) != (self.sigma is None):
            raise ValueError("give both center and sigma, or neither")
        if self.sigma is not None and not self.sigma > 0:
            raise ValueError("sigma must be > 0")
        if self.clear_after < 1:
            raise ValueError("clear_after must be at least 1")
        if not self.clip > 0:
            raise ValueError("clip must be > 0")
        if self.min_change < 0 or self.min_spike_change < 0:
            raise ValueError("min_change and min_spike_change must be >= 0")
        if self.max_refusals < 0:
            raise ValueError("max_refusals must be >= 0")
        if not 0 <= self.max_ar_order <= 20:
            raise ValueError("max_ar_order must be within 0..20")


DEFAULT_MIN_CHANGE = 0.5
"""Measured against a real inference server on a quiet host (README, "Measured against a real
inference server"): its latency level wandered up to 1.38x for minutes at a time with nothing
changing; a page means at least 1.5x."""
DEFAULT_MIN_SPIKE_CHANGE = 1.0

MetricName = Literal["latency_ms", "ttft_ms", "tokens_per_s"]
CHARTED_METRICS: tuple[MetricName, ...] = ("latency_ms", "ttft_ms", "tokens_per_s")


PAGING_METRICS: tuple[MetricName, ...] = ("latency_ms",)
"""Metrics whose CUSUM, tail and spike signals are ``critical`` by default (the others: ``warning``)."""
WORSE: dict[str, Direction] = {"latency_ms": "up", "ttft_ms": "up", "tokens_per_s": "down"}


def default_config(metric: str = "latency_ms") -> ChartConfig:
    """The service's default configuration of a metric's chart (what ``--defaults`` runs).

    All three charted metrics are positive and right-skewed, so all run on the log scale; only
    the paging metric's detectors are critical (see the module docstring).
    """
    # Nelson test 1 only, as Minitab enables by default: each run test adds its own false alarms
    # (together about one per 70 in-control points), which drowned the dashboard's signal in
    # info rows. Tests 2-8 stay one per-model setting away.
    config = ChartConfig(
        transform="log",
        worse=WORSE.get(metric, "up"),
        rules=RulesConfig().only({1}),
        min_change=DEFAULT_MIN_CHANGE,
        min_spike_change=DEFAULT_MIN_SPIKE_CHANGE,
    )
    if metric in PAGING_METRICS:
        return config
    return msgspec.structs.replace(
        config,
        spike=msgspec.structs.replace(config.spike, severity="warning"),
        cusum=msgspec.structs.replace(config.cusum, severity="warning"),
        tail=msgspec.structs.replace(config.tail, severity="warning"),
    )


BASELINE_SETTINGS = (
    "transform",
    "baseline_n",
    "sigma_estimator",
    "worse",
    "serial",
    "max_ar_order",
    "clip",
    "clean_limit",
)
"""Settings the in-control model depends on: a change starts a new baseline."""


def to_settings(config: ChartConfig) -> ChartSettings:
    """The public view of a configuration (every field set), as in ``ChartView.settings``."""
    r = config.rules
    return ChartSettings(
        transform=config.transform,
        baseline_n=config.baseline_n,
        sigma_estimator=config.sigma_estimator,
        clear_after=config.clear_after,
        min_change=config.min_change,
        min_spike_change=config.min_spike_change,
        rules=RulesSettings(
            r1=SigmaTestSettings(enabled=r.r1.enabled, k=r.r1.k, severity=r.r1.severity),
            **{
                f"r{n}": RunTestSettings(enabled=t.enabled, k=int(t.k), severity=t.severity)
                for n in range(2, 9)
                for t in (r.test(n),)
            },
        ),
        spike=SpikeSettings(enabled=config.spike.enabled, k=config.spike.k, severity=config.spike.severity),
        ewma=EwmaSettings(
            enabled=config.ewma.enabled, lam=config.ewma.lam, L=config.ewma.L, severity=config.ewma.severity
        ),
        cusum=CusumSettings(
            enabled=config.cusum.enabled, k=config.cusum.k, h=config.cusum.h, severity=config.cusum.severity
        ),
    )


def _apply(target: msgspec.Struct, settings: msgspec.Struct) -> Any:
    changes: dict[str, Any] = {}
    for name in settings.__struct_fields__:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, msgspec.Struct):
            changes[name] = _apply(getattr(target, name), value)
        elif isinstance(value, int) and not isinstance(value, bool) and name == "k":
            changes[name] = float(value)  # Nelson K are floats in the engine
        else:
            changes[name] = value
    return msgspec.structs.replace(target, **changes) if changes else target


def apply_settings(config: ChartConfig, settings: ChartSettings | None) -> ChartConfig:
    """``config`` with every setting that ``settings`` gives (the field names are the same)."""
    if settings is None:
        return config
    out = _apply(config, settings)
    assert isinstance(out, ChartConfig)
    return out


def describe_changes(old: ChartConfig, new: ChartConfig, names: tuple[str, ...] | None = None) -> list[str]:
    """``["transform log -> none", "cusum.k (0.25, 0.5, 1.0) -> (0.5,)"]``: what differs, by setting."""
    a = msgspec.to_builtins(to_settings(old))
    b = msgspec.to_builtins(to_settings(new))
    out: list[str] = []

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for key in x.keys() | y.keys():
                walk(x.get(key), y.get(key), f"{path}.{key}" if path else key)
        elif x != y:
            out.append(f"{path} {_fmt(x)} -> {_fmt(y)}")

    for name in names if names is not None else tuple(a):
        walk(a.get(name), b.get(name), name)
    return sorted(out)


def _fmt(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "(" + ", ".join(f"{v:g}" for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
