"""Chart configuration and the service's defaults, with the reasoning behind them.

The defaults are built for the goal of issue 3: on in-control lognormal latency, with
parameters estimated from the default baseline, ``critical`` signals at most once per 100,000
probes, while a sustained shift on the log scale is caught as ``critical`` within a median of
25 probes at 1 sigma, 100 at 0.5 sigma, 8 at 2 sigma, and a single ~5 sigma point at once.

- Log scale for latency-like metrics: lognormal latency becomes normal, so the statistics below
  hold whatever the sigma of log latency (0.2 or 0.6).
- ``critical`` comes only from detectors built for a tiny false-alarm rate: a two-sided CUSUM
  with three reference values (k = 0.25, 0.5, 1.0 sigma, one per shift size of interest), each
  with its h set for an in-control ARL of 1,000,000 with known parameters (Brook-Evans), and a
  single point beyond 5 sigma (ARL 1.7 million). Together: about 280,000 with known parameters.
- Estimated parameters cost a factor of about two (a sigma estimated a few per cent low shortens
  the in-control run a lot at these thresholds). With a baseline of 1,000 points (sigma from the
  moving range) the false-alarm *rate* averaged over baselines is about one per 145,000 probes
  (tests/spc_engine/test_defaults.py measures it). Medians of detection measured the same way:
  about 84, 24 and 7 probes at 0.5, 1 and 2 sigma.
- One paging metric per probe: every successful probe feeds three charts (latency, TTFT,
  tokens/s), and three critical charts would triple the per-model false-alarm rate. Total
  latency is the one that pages by default: a slower prefill (TTFT) or slower generation
  (tokens/s) shows in it. The TTFT and tokens/s charts run the same CUSUM and spike detectors
  at ``warning`` (on the dashboard, in the log and in incident analyses); per-model settings
  can make them critical.
- The classic tests still run at lower severity: Nelson test 1 (3 sigma) at ``warning``, tests
  2-8 at ``info``, and an EWMA (lambda 0.1, in-control ARL 20,000) at ``warning``.
- An episode clears after ``clear_after`` consecutive points without its rule firing.
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

DEFAULT_BASELINE_N = 1000
DEFAULT_CUSUM_K = (0.25, 0.5, 1.0)
DEFAULT_CUSUM_H = (23.719, 12.661, 6.463)
"""h for a two-sided in-control ARL of 1e6 at each k (``arl.cusum_h_for_arl0``)."""
DEFAULT_EWMA_LAMBDA = 0.1
DEFAULT_EWMA_L = 3.932
"""L for an in-control ARL of 20,000 at lambda 0.1 (``arl.ewma_limit_for_arl0``)."""
DEFAULT_SPIKE_K = 5.0


class SpikeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A single point beyond ``k`` sigma (rule ``SPIKE``): test 1 at a far limit, critical."""

    enabled: bool = True
    k: float = DEFAULT_SPIKE_K
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
    baseline_n: int = DEFAULT_BASELINE_N
    sigma_estimator: SigmaEstimator = "mr"
    clean_baseline: bool = True
    clean_limit: float | None = None
    """Sigma multiple for baseline cleaning; None = ``baseline.default_clean_limit(n)``."""
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
    clear_after: int = 10

    def __post_init__(self) -> None:
        if self.baseline_n < 2:
            raise ValueError("baseline_n must be at least 2")
        if (self.center is None) != (self.sigma is None):
            raise ValueError("give both center and sigma, or neither")
        if self.sigma is not None and not self.sigma > 0:
            raise ValueError("sigma must be > 0")
        if self.clear_after < 1:
            raise ValueError("clear_after must be at least 1")


MetricName = Literal["latency_ms", "ttft_ms", "tokens_per_s"]
CHARTED_METRICS: tuple[MetricName, ...] = ("latency_ms", "ttft_ms", "tokens_per_s")


PAGING_METRICS: tuple[MetricName, ...] = ("latency_ms",)
"""Metrics whose CUSUM and spike signals are ``critical`` by default (the others: ``warning``)."""


def default_config(metric: str = "latency_ms") -> ChartConfig:
    """The service's default configuration of a metric's chart (what ``--defaults`` runs).

    All three charted metrics are positive and right-skewed, so all run on the log scale; only
    the paging metric's detectors are critical (see the module docstring).
    """
    config = ChartConfig(transform="log")
    if metric in PAGING_METRICS:
        return config
    return msgspec.structs.replace(
        config,
        spike=msgspec.structs.replace(config.spike, severity="warning"),
        cusum=msgspec.structs.replace(config.cusum, severity="warning"),
    )


BASELINE_SETTINGS = ("transform", "baseline_n", "sigma_estimator")
"""Settings whose change invalidates a chart's baseline: a new one is collected."""


def to_settings(config: ChartConfig) -> ChartSettings:
    """The public view of a configuration (every field set), as in ``ChartView.settings``."""
    r = config.rules
    return ChartSettings(
        transform=config.transform,
        baseline_n=config.baseline_n,
        sigma_estimator=config.sigma_estimator,
        clear_after=config.clear_after,
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
