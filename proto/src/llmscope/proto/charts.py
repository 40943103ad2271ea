"""SPC charts as the engine publishes them: the KV contract readers (API, dashboard, CLI) rely on.

The SPC engine keeps one record per chart, what readers show of it, in the JetStream KV bucket
``subjects.SPC_CHARTS_BUCKET`` (``llmscope_spc_charts``, history 1, file storage):

- key: :func:`chart_key` of (provider, model, target, prompt_id, metric). One chart per
  rational subgroup: latency never mixes prompts or endpoints. The availability chart of a
  provider/model/target uses prompt ``*`` and metric ``availability``. Keys starting with ``_``
  are the engine's own bookkeeping (``_checkpoint.p<k>`` and ``_lease.p<k>`` per telemetry
  partition, ``_defaults``, ``_settings.<provider>.<model>``), not charts.
- value: one JSON object, written by the engine when what it shows changed (a point while
  collecting, an episode opening or clearing, arming, a re-baseline, new settings, the
  availability counts), at most every ``LLMSCOPE_SPC_SNAPSHOT_INTERVAL_S``, and at once after a
  re-baseline::

      {"version": 1, "key": ..., "meta": ChartMeta, "seq": <telemetry stream seq>,
       "updated_at": RFC 3339 | null, "view": ChartView | null, "gen": <int>}

  ``seq`` is the last telemetry stream sequence the chart had applied when the record was
  written (the state the view renders), not the chart's latest: a chart in control takes points
  without its record changing. ``updated_at`` is when the record was written, i.e. when what it
  shows last changed. ``gen`` is the engine's own bookkeeping (the record's generation). Records
  written by engines before the split of chart state also hold ``config`` and ``state``; none
  written since do. The engine's state lives in its own bucket, ``subjects.SPC_STATE_BUCKET``
  (``llmscope_spc_state``), which is not a contract and which readers never need: read the value as a
  :class:`ChartRecord`, which ignores the fields it does not know (msgspec skips unknown fields).
  ``view`` is the public part of a metric chart; an availability chart has ``availability``
  (:class:`AvailabilityView`) instead. Fields are only ever added, with defaults, as for wire
  events.
- other keys starting with ``_``: ``_defaults`` (the engine's default settings per metric) and
  ``_settings.<provider>.<model>`` (when each override took effect); see
  :mod:`llmscope.proto.chartconfig`, which also documents the per-model overrides.

A chart that is not in the bucket yet has not received a point since the engine started (or
the engine is not running): readers show it as collecting, with no limits.

Traffic charts (one point per minute of real traffic; prompt ``traffic:<operation>``, target the
service name, metric one of :data:`TRAFFIC_METRICS`) are records too: ``view`` has the phase, the
baseline and the limits at the baseline's mean requests per minute, and ``traffic``
(:class:`TrafficView`) the recent minutes with each one's own limit (limits depend on ``n``).
The engine's own state of them lives under ``_traffic.*`` keys. They are re-baselined by the same
requests as probe charts.

Re-baselining is a core NATS request on ``subjects.spc_rebaseline()`` with a
:class:`RebaselineRequest` JSON body; the replica owning the chart answers a
:class:`RebaselineReply`. No answer (no responders, or a timeout) means no engine holds it.
A whole model (every prompt, metric and availability chart, optionally of one target) is
re-baselined by one request on ``subjects.spc_rebaseline_model()`` with a
:class:`ModelRebaselineRequest`; the replica owning the model answers a
:class:`ModelRebaselineReply` listing the charts it re-baselined.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from llmscope.proto import subjects
from llmscope.proto.base import Count
from llmscope.proto.chartconfig import ChartSettings
from llmscope.proto.telemetry import TRAFFIC_PROMPT_PREFIX as TRAFFIC_PROMPT_PREFIX
from llmscope.proto.violation import BaselineRef, ChartLimits

AVAILABILITY = "availability"
"""Metric name of the per-target availability chart (its prompt is ``*``)."""
TRAFFIC_METRICS = (
    "traffic_error_rate",
    "traffic_latency_per_token_p50",
    "traffic_latency_per_token_p90",
    "traffic_ttft_p50",
)
"""Metrics of the per-minute traffic charts (their prompt is ``traffic:<operation>``)."""
CHART_RECORD_VERSION = 1

Phase = Literal["collecting", "armed"]


def chart_key(provider: str, model: str, target: str, prompt_id: str, metric: str) -> str:
    """The chart's id, also its KV key: :func:`subjects.kv_key` of the five parts (reversible)."""
    return subjects.kv_key(provider, model, target, prompt_id, metric)


def parse_chart_key(key: str) -> tuple[str, str, str, str, str]:
    """(provider, model, target, prompt_id, metric) of a chart key; ValueError if it is none."""
    try:
        parts = subjects.parse_kv_key(key, 5)
    except ValueError as exc:
        raise ValueError(f"not a chart key: {key!r}") from exc
    return parts[0], parts[1], parts[2], parts[3], parts[4]


def model_charts_filter(provider: str, model: str, target: str = "") -> str:
    """KV key filter of every chart of a model, or of one of its targets (``target`` non-empty)."""
    return subjects.kv_key(provider, model, *((target,) if target else ())) + ".>"


CHART_KEYS = "*.*.*.*.*"
"""A KV key filter that matches chart records only: a chart key has five tokens, and none of
the engine's bookkeeping keys has (``_lease.p<k>``, ``_checkpoint.p<k>``, ``_defaults``,
``_settings.<provider>.<model>``, ``_traffic.p<k>[.<digest>]``). A watch of the chart records
with it is not woken by the leases' renewals (16 partitions, 6.4 writes a second)."""


def is_chart_key(key: str) -> bool:
    """False for the engine's bookkeeping keys (``_checkpoint...``) and anything malformed."""
    if key.startswith("_"):
        return False
    try:
        parse_chart_key(key)
    except ValueError:
        return False
    return True


def is_traffic_chart(key: str) -> bool:
    """True for the key of a per-minute traffic chart (not of a per-request chart of traffic)."""
    try:
        _provider, _model, _service, prompt_id, metric = parse_chart_key(key)
    except ValueError:
        return False
    return prompt_id.startswith(TRAFFIC_PROMPT_PREFIX) and metric in TRAFFIC_METRICS


class ChartMeta(msgspec.Struct, frozen=True, kw_only=True):
    """Which rational subgroup a chart watches (the decoded parts of its key, plus the host)."""

    provider: str
    model: str
    target: str
    prompt_id: str
    metric: str
    host: str = ""


class ChartBaseline(BaselineRef, frozen=True, kw_only=True):
    """The frozen Phase I baseline of an armed chart: who made it, why, and how many points."""

    number: Annotated[int, Meta(description="0 for the first baseline, +1 per re-baseline")] = 0
    n_excluded: Annotated[Count, Meta(description="baseline points dropped as out of control")] = 0
    known: Annotated[bool, Meta(description="parameters given, not estimated")] = False


class ChartView(msgspec.Struct, frozen=True, kw_only=True):
    """What the API and dashboard show of a chart: armed or collecting, limits, expected ARL."""

    phase: Phase
    progress: Annotated[Count, Meta(description="baseline points collected (= baseline_n once armed)")]
    baseline_n: Annotated[Count, Meta(description="points the baseline needs")]
    limits: Annotated[
        ChartLimits | None,
        Meta(description="metric units, asymmetric on the log scale; null while collecting"),
    ] = None
    baseline: ChartBaseline | None = None
    open_episodes: Annotated[tuple[str, ...], Meta(description="rules with an open violation episode")] = ()
    arl0_critical: Annotated[
        float | None,
        Meta(description="expected in-control points between critical signals, for the fitted model"),
    ] = None
    rules: Annotated[tuple[str, ...], Meta(description="rules evaluated, in evaluation order")] = ()
    settings: Annotated[
        ChartSettings | None,
        Meta(description="the settings the chart runs with (defaults plus overrides, all set)"),
    ] = None
    note: Annotated[
        str, Meta(description="why the baseline in progress was extended (an unstable baseline), or empty")
    ] = ""
    ar_order: Annotated[
        int, Meta(ge=0, description="order of the fitted AR model of serial dependence (0: independent)")
    ] = 0
    autocorrelation: Annotated[
        float | None, Meta(description="lag-1 autocorrelation of the baseline (chart scale)")
    ] = None
    tail_rate: Annotated[
        float | None,
        Meta(description="the baseline's rate of unusually slow points (beyond the tail rule's k)"),
    ] = None


class AvailabilityView(msgspec.Struct, frozen=True, kw_only=True):
    """What the API and dashboard show of a target's availability chart (probe outcomes)."""

    phase: Phase
    progress: Annotated[Count, Meta(description="probes of the baseline seen (= baseline_n once armed)")]
    baseline_n: Annotated[Count, Meta(description="probes the baseline failure rate is estimated from")]
    baseline_failure_rate: Annotated[
        float | None,
        Meta(description="estimated failure rate, floored (null while collecting)"),
    ] = None
    window: Annotated[Count, Meta(description="probes the ERROR_RATE rule counts failures over")] = 0
    threshold: Annotated[
        int | None,
        Meta(description="failures in the window that signal ERROR_RATE (null while collecting)"),
    ] = None
    window_failures: Annotated[Count, Meta(description="failures among the last `window` probes")] = 0
    failure_run: Annotated[Count, Meta(description="consecutive failed probes, latest first")] = 0
    fail_run: Annotated[Count, Meta(description="consecutive failures that signal AVAILABILITY")] = 0
    open_episodes: Annotated[tuple[str, ...], Meta(description="rules with an open violation episode")] = ()
    baseline_number: Annotated[int, Meta(description="0 for the first baseline, +1 per re-baseline")] = 0
    baseline_by: Annotated[str | None, Meta(description="who asked for the current baseline")] = None
    baseline_reason: Annotated[str | None, Meta(description="why the current baseline was started")] = None
    cold_starts: Annotated[
        Count,
        Meta(description="successful probes that paid a model load: counted, not charted as warm latency"),
    ] = 0


class TrafficPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One minute of a traffic chart: its statistic in metric units and the limit at its size."""

    ts: Annotated[datetime, Meta(description="start of the minute")]
    value: Annotated[float, Meta(description="error rate (0-1), or ms (per output token, or TTFT)")]
    n: Annotated[Count, Meta(description="requests the statistic is over")]
    ucl: Annotated[
        float | None,
        Meta(description="upper limit at this n (null in the baseline); the error rate is judged exactly"),
    ] = None
    z: Annotated[float | None, Meta(description="sigmas above the baseline (null in the baseline)")] = None


class TrafficView(msgspec.Struct, frozen=True, kw_only=True):
    """What the dashboard shows of a traffic chart beyond :class:`ChartView`: who, and its minutes."""

    service_name: str
    operation: str
    kind: Annotated[Literal["p", "quantile"], Meta(description="error rate, or a log-scale quantile")]
    min_requests: Annotated[Count, Meta(description="requests a minute needs to be a point")]
    points: Annotated[Count, Meta(description="minutes charted since the chart began")] = 0
    skipped: Annotated[Count, Meta(description="minutes with too few requests to be a point")] = 0
    k: Annotated[float, Meta(description="sigmas of the one-minute limit")] = 4.5
    k_run: Annotated[float, Meta(description="sigmas two minutes in a row must exceed")] = 3.5
    recent: Annotated[
        tuple[TrafficPoint, ...], Meta(description="the latest minutes, oldest first (a few hours)")
    ] = ()


class ChartRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The read side of a chart's KV value (the engine's ``config`` and ``state`` are skipped)."""

    version: int = CHART_RECORD_VERSION
    key: str
    meta: ChartMeta
    seq: Annotated[
        int,
        Meta(description="last telemetry stream sequence the chart had applied when this record was written"),
    ] = 0
    updated_at: Annotated[
        datetime | None, Meta(description="when the record was written: what it shows last changed")
    ] = None
    view: ChartView | None = None
    availability: AvailabilityView | None = None
    traffic: TrafficView | None = None


_RECORD_DECODER = msgspec.json.Decoder(ChartRecord)


def decode_record(data: bytes) -> ChartRecord:
    """Decode a KV value written by the engine; raises ``msgspec.DecodeError`` on garbage."""
    return _RECORD_DECODER.decode(data)


class RebaselineRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Request body on ``subjects.spc_rebaseline()``: which chart, who asks and why."""

    chart_key: str
    by: str
    reason: str


class RebaselineReply(msgspec.Struct, frozen=True, kw_only=True):
    """The owning engine replica's answer: ``ok`` with the episodes it cleared, or an error."""

    ok: bool
    chart_key: str = ""
    replica: int = 0
    cleared: Annotated[int, Meta(description="open violation episodes cleared by the re-baseline")] = 0
    error: str = ""


NonEmpty = Annotated[str, Meta(min_length=1)]


class ModelRebaselineRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Request body on ``subjects.spc_rebaseline_model()``: every chart of a model, who and why."""

    provider: NonEmpty
    model: NonEmpty
    target: str = ""
    """Only this target's charts; empty: every target of the model."""
    by: NonEmpty
    reason: NonEmpty


class RebaselinedChart(msgspec.Struct, frozen=True, kw_only=True):
    """One chart a model-wide re-baseline reset, with the open episodes that cleared."""

    chart_key: str
    cleared: Count = 0


class ModelRebaselineReply(msgspec.Struct, frozen=True, kw_only=True):
    """The owning replica's answer: ``ok`` with the charts re-baselined (by key), or an error."""

    ok: bool
    provider: str = ""
    model: str = ""
    target: str = ""
    replica: int = 0
    charts: tuple[RebaselinedChart, ...] = ()
    cleared: Annotated[int, Meta(description="open violation episodes cleared, all charts together")] = 0
    error: str = ""
