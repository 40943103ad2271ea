"""Per-model SPC chart settings: what the API writes and the SPC engine applies.

Overrides: the JetStream KV bucket ``subjects.SPC_CONFIG_BUCKET`` (``llmscope_spc_config``,
history 1, file storage), key ``subjects.kv_key(provider, model)``, value one
:class:`ModelOverrides` JSON object, written by the API and watched by the SPC engine. A missing
key means the engine's defaults. Every setting is optional: absent or null keeps the default::

    {"transform": "none", "cusum": {"k": [0.5], "h": [5.0]}, "rules": {"r2": {"enabled": false}},
     "metrics": {"tokens_per_s": {"baseline_n": 500}},
     "updated_by": "ann", "updated_at": "2025-01-01T00:00:00Z", "reason": "new GPU"}

The settings at the top level apply to every metric of the model; ``metrics`` adds per-metric
settings on top. Limits are in the types (``Meta(ge=..., le=...)``), so a bad value is refused
with a path naming the field (``Expected `float` > 0.0 - at `$.ewma.lam```); a CUSUM needs its
``k`` and ``h`` together, one ``h`` per ``k``.

Defaults: the engine writes its default settings of each metric (every field set) under
:data:`DEFAULTS_KEY` in the chart bucket ``subjects.SPC_CHARTS_BUCKET`` as :class:`SpcDefaults`.
The effective settings of a chart are ``overlay(defaults[metric], overrides.settings(),
overrides.metrics[metric])`` (:func:`effective`); each chart's ``ChartView.settings`` shows the
settings it runs with, so a reader can tell whether a change has been applied yet.

When a change applies (the engine's policy): an override is adopted before the first telemetry
batch the engine handles after seeing it, and applies from that batch's first stream sequence
on; the engine records that sequence durably (chart-bucket key ``_settings.<kv_key>``) before
charting the batch, so a restart replays the change at exactly the same point. Each chart
picks the change up at its next point. Changes that keep the baseline valid (rules on/off, K,
severities, EWMA, CUSUM, spike, clear_after) apply to that point; a change of ``transform``,
``baseline_n`` or ``sigma_estimator`` starts a new baseline at that point, recorded like an
explicit re-baseline (``created_by`` = ``updated_by``, reason ``configuration changed: ...``),
and the chart's open violation episodes clear. A deleted key goes back to the defaults the
same way (recorded as by ``engine``).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import msgspec.inspect
from msgspec import Meta

from llmscope.proto.violation import Severity, Transform

SigmaEstimator = Literal["mr", "sd"]
MetricName = Literal["latency_ms", "ttft_ms", "tokens_per_s"]
METRIC_NAMES: tuple[MetricName, ...] = ("latency_ms", "ttft_ms", "tokens_per_s")
DEFAULTS_KEY = "_defaults"
"""Key of :class:`SpcDefaults` in the SPC chart bucket (keys starting ``_`` are no charts)."""
SETTINGS_VERSION = 1

SigmaK = Annotated[float, Meta(gt=0, le=10, description="sigma multiple")]
RunK = Annotated[int, Meta(ge=1, le=100, description="points (tests 3 and 4: changes)")]
CusumK = Annotated[float, Meta(ge=0, le=5, description="reference value, sigma units")]
CusumH = Annotated[float, Meta(gt=0, le=100, description="decision interval, sigma units")]


class _Settings(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of the settings structs: all fields optional, None = the engine default.

    Stored values are read leniently (a field written by a newer version is ignored, as the wire
    contract promises); a request body is read with :func:`decode_overrides` ``strict=True``,
    which refuses unknown fields with their path."""


class SigmaTestSettings(_Settings, frozen=True, kw_only=True):
    """Nelson test 1: one point beyond ``k`` sigma."""

    enabled: bool | None = None
    k: SigmaK | None = None
    severity: Severity | None = None


class RunTestSettings(_Settings, frozen=True, kw_only=True):
    """One of Nelson tests 2-8 and its K (a whole number, see ``spc_engine.rules``)."""

    enabled: bool | None = None
    k: RunK | None = None
    severity: Severity | None = None


class RulesSettings(_Settings, frozen=True, kw_only=True):
    """The eight Nelson tests of the individuals chart."""

    r1: SigmaTestSettings | None = None
    r2: RunTestSettings | None = None
    r3: RunTestSettings | None = None
    r4: RunTestSettings | None = None
    r5: RunTestSettings | None = None
    r6: RunTestSettings | None = None
    r7: RunTestSettings | None = None
    r8: RunTestSettings | None = None


class SpikeSettings(_Settings, frozen=True, kw_only=True):
    """Rule ``SPIKE``: a single point beyond ``k`` sigma."""

    enabled: bool | None = None
    k: Annotated[float, Meta(gt=0, le=20, description="sigma multiple")] | None = None
    severity: Severity | None = None


class EwmaSettings(_Settings, frozen=True, kw_only=True):
    """Rule ``EWMA``: smoothing ``lam`` and limit multiplier ``L`` (asymptotic limits)."""

    enabled: bool | None = None
    lam: Annotated[float, Meta(gt=0, le=1)] | None = None
    L: Annotated[float, Meta(gt=0, le=10)] | None = None
    severity: Severity | None = None


class CusumSettings(_Settings, frozen=True, kw_only=True):
    """Rule ``CUSUM``: two-sided tabular CUSUMs, one ``h`` per ``k`` (given together)."""

    enabled: bool | None = None
    k: Annotated[tuple[CusumK, ...], Meta(min_length=1, max_length=8)] | None = None
    h: Annotated[tuple[CusumH, ...], Meta(min_length=1, max_length=8)] | None = None
    severity: Severity | None = None

    def __post_init__(self) -> None:
        if (self.k is None) != (self.h is None):
            raise ValueError("give cusum k and h together")
        if self.k is not None and self.h is not None and len(self.k) != len(self.h):
            raise ValueError("cusum needs one h per k")


class ChartSettings(_Settings, frozen=True, kw_only=True):
    """The settings of a chart; in an override every field is optional (None = default)."""

    transform: Transform | None = None
    baseline_n: Annotated[int, Meta(ge=10, le=100_000, description="Phase I points")] | None = None
    sigma_estimator: SigmaEstimator | None = None
    clear_after: Annotated[int, Meta(ge=1, le=10_000, description="quiet points to clear")] | None = None
    min_change: (
        Annotated[
            float,
            Meta(ge=0, le=100, description="a sustained shift pages from (1 + this) x worse"),
        ]
        | None
    ) = None
    min_spike_change: (
        Annotated[float, Meta(ge=0, le=100, description="one answer pages from (1 + this) x worse")] | None
    ) = None
    rules: RulesSettings | None = None
    spike: SpikeSettings | None = None
    ewma: EwmaSettings | None = None
    cusum: CusumSettings | None = None

    def settings(self) -> ChartSettings:
        """Only the chart settings (for a :class:`ModelOverrides`, without the model's extras)."""
        return ChartSettings(**{f: getattr(self, f) for f in ChartSettings.__struct_fields__})


class MetricOverrides(_Settings, frozen=True, kw_only=True):
    """Settings of one metric's charts, on top of the model's."""

    latency_ms: ChartSettings | None = None
    ttft_ms: ChartSettings | None = None
    tokens_per_s: ChartSettings | None = None


class ModelOverrides(ChartSettings, frozen=True, kw_only=True):
    """The KV value of one model's overrides: settings for all its metrics, then per metric."""

    metrics: MetricOverrides | None = None
    updated_by: Annotated[str, Meta(min_length=1, max_length=200)]
    updated_at: datetime | None = None
    reason: Annotated[str, Meta(max_length=2000)] = ""
    version: int = SETTINGS_VERSION

    def for_metric(self, metric: str) -> ChartSettings:
        """The overrides of one metric's charts: the model's, then the metric's on top."""
        base = self.settings()
        extra = getattr(self.metrics, metric, None) if metric in METRIC_NAMES else None
        return base if extra is None else overlay(base, extra)


class SpcDefaults(msgspec.Struct, frozen=True, kw_only=True):
    """The engine's default settings per metric (every field set), under :data:`DEFAULTS_KEY`."""

    metrics: dict[str, ChartSettings]
    updated_at: datetime | None = None
    version: int = SETTINGS_VERSION


S = TypeVar("S", bound=_Settings)


def overlay(base: S, top: S | None) -> S:
    """``base`` with every field that ``top`` sets replaced (nested settings field by field)."""
    if top is None:
        return base
    changes: dict[str, Any] = {}
    for name in top.__struct_fields__:
        new = getattr(top, name)
        if new is None:
            continue
        old = getattr(base, name)
        changes[name] = overlay(old, new) if isinstance(new, _Settings) and old is not None else new
    return msgspec.structs.replace(base, **changes) if changes else base


def effective(defaults: ChartSettings, overrides: ModelOverrides | None, metric: str) -> ChartSettings:
    """What a chart of ``metric`` runs with: the defaults, then the model's overrides."""
    return defaults if overrides is None else overlay(defaults, overrides.for_metric(metric))


_OVERRIDES = msgspec.json.Decoder(ModelOverrides)
_OVERRIDES_TYPE = msgspec.inspect.type_info(ModelOverrides)
_DEFAULTS = msgspec.json.Decoder(SpcDefaults)
_PATH = re.compile(r" - at .*`(\$[^`]*)`$")


def decode_overrides(data: bytes, *, strict: bool = False) -> ModelOverrides:
    """A KV value, or with ``strict`` a request body that may name only known fields; raises
    ``msgspec.ValidationError`` naming the bad field."""
    overrides = _OVERRIDES.decode(data)
    if strict:
        problem = _unknown_field(msgspec.json.decode(data), _OVERRIDES_TYPE, "$")
        if problem is not None:
            raise msgspec.ValidationError(problem)
    return overrides


def _unknown_field(raw: object, t: msgspec.inspect.Type, path: str) -> str | None:
    """The first field of ``raw`` that type ``t`` does not know, as msgspec words it."""
    if isinstance(t, msgspec.inspect.Metadata):
        return _unknown_field(raw, t.type, path)
    if isinstance(t, msgspec.inspect.UnionType):
        structs = [u for u in t.types if isinstance(u, msgspec.inspect.StructType)]
        return _unknown_field(raw, structs[0], path) if structs and isinstance(raw, dict) else None
    if isinstance(t, msgspec.inspect.StructType) and isinstance(raw, dict):
        fields = {f.encode_name: f for f in t.fields}
        for name, value in raw.items():
            field = fields.get(name)
            if field is None:
                return f"Object contains unknown field `{name}` - at `{path}`"
            found = _unknown_field(value, field.type, f"{path}.{name}")
            if found is not None:
                return found
    return None


def decode_defaults(data: bytes) -> SpcDefaults:
    return _DEFAULTS.decode(data)


def error_path(exc: msgspec.MsgspecError) -> tuple[str, str]:
    """(JSON path, message) of a decode error: ``("$.cusum.h[0]", "Expected ...")``."""
    text = str(exc)
    match = _PATH.search(text)
    if match is None:
        return "$", text
    return match.group(1), text[: match.start()]


class ChartSettingsState(msgspec.Struct, frozen=True, kw_only=True):
    """One chart of a model and whether it runs with the model's effective settings yet."""

    key: str
    target: str
    prompt_id: str
    metric: str
    phase: str
    progress: int = 0
    baseline_n: int = 0
    applied: Annotated[bool, Meta(description="its settings equal the effective ones")] = False
    arl0_critical: float | None = None


class ModelConfigView(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/spc/config/{provider}/{model}``: defaults, raw overrides, effective, per chart.

    ``defaults`` and ``effective`` are null while no SPC engine has published its defaults.
    """

    provider: str
    model: str
    overrides: ModelOverrides | None = None
    defaults: dict[str, ChartSettings] | None = None
    effective: dict[str, ChartSettings] | None = None
    charts: list[ChartSettingsState] = msgspec.field(default_factory=list)
