"""A batch's rollup, series, series target and model rows, computed in Python as the statements
in :mod:`llmscope.api.persister.sql` compute them in SQL."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from llmscope.api.persister.sql import ROLLUP_PARAMS
from llmscope.proto.telemetry import TelemetryEvent

_ROLLUP_METRICS = tuple(operator.attrgetter(c) for c in ("latency_ms", "ttft_ms", "tokens_per_s"))
_ts = operator.attrgetter("ts")
_MINUTE = timedelta(minutes=1)
_NEVER = datetime(1, 1, 1, tzinfo=UTC)
_LOG_FLOOR = math.log(1e-9)


def metric_rollup(values: list[float]) -> list[Any]:
    """n, min, max, sum, sum of logs (floored at 1e-9) and of their squares, as STORE_TELEMETRY_ARRAYS's
    aggregates."""
    if not values:
        return [0, None, None, 0.0, 0.0, 0.0]
    if min(values) > 1e-9:
        logs = list(map(math.log, values))
    else:
        logs = [math.log(v) if v > 1e-9 else _LOG_FLOOR for v in values]
    return [len(values), min(values), max(values), sum(values), sum(logs), sum([x * x for x in logs])]


def one_rollup(ev: TelemetryEvent) -> list[Any]:
    """STORE_ONE_TELEMETRY's parameters after the event's columns: its rollup row's ``n_ok`` and
    metric aggregates (as :func:`metric_rollup` of a one-event group)."""
    if ev.status != "ok":
        return [0, *_EMPTY_ROLLUP * 3]
    out: list[Any] = [1]
    for metric in _ROLLUP_METRICS:
        v = metric(ev)
        if v is None:
            out += _EMPTY_ROLLUP
        else:
            log_v = math.log(v) if v > 1e-9 else _LOG_FLOOR
            out += (1, v, v, v, log_v, log_v * log_v)
    return out


_EMPTY_ROLLUP = (0, None, None, 0.0, 0.0, 0.0)


def batch_aggregates(
    events: Sequence[TelemetryEvent], new: Sequence[TelemetryEvent] | None = None
) -> list[list[Any]]:
    """UPSERT_AGGREGATES's parameters: what STORE_TELEMETRY_ARRAYS computes in SQL. The rollups
    count ``new`` (the events this write inserted; all of ``events`` when None), the series,
    series targets and models take every event of the batch, as that statement's ``src``.
    Events are grouped in one pass; the sums and extremes are taken by builtins, per group."""
    if new is not None and len(new) != len(events):
        counted = batch_aggregates(new)[:ROLLUP_PARAMS] if new else [[] for _ in range(ROLLUP_PARAMS)]
        return counted + batch_aggregates(events)[ROLLUP_PARAMS:]
    minutes: dict[tuple[str, str, str, str, datetime], list[TelemetryEvent]] = {}
    by_model: dict[tuple[str, str], list[TelemetryEvent]] = {}
    # The minute of the previous event, reused while events stay in it: a batch is mostly in time
    # order, and ``datetime.replace`` was a fifth of this function's time.
    minute = end = _NEVER
    zone = None
    for ev in events:
        provider: str = ev.provider
        ts = ev.ts
        if not (minute <= ts < end and ts.tzinfo is zone):
            minute = ts.replace(second=0, microsecond=0)
            end, zone = minute + _MINUTE, ts.tzinfo
        key = (provider, ev.model, ev.prompt_id, ev.target, minute)
        group = minutes.get(key)
        if group is None:
            minutes[key] = [ev]
        else:
            group.append(ev)
        group = by_model.get(key[:2])
        if group is None:
            by_model[key[:2]] = [ev]
        else:
            group.append(ev)
    rollups: list[tuple[Any, ...]] = []
    series: dict[tuple[Any, ...], list[datetime]] = {}
    targets: dict[tuple[Any, ...], list[datetime]] = {}
    for key in sorted(minutes):
        group = minutes[key]
        ok = [ev for ev in group if ev.status == "ok"]
        row: list[Any] = [*key, len(group), len(ok)]
        for metric in _ROLLUP_METRICS:
            row += metric_rollup([v for v in map(metric, ok) if v is not None])
        rollups.append(tuple(row))
        stamps = list(map(_ts, group))
        lo, hi = min(stamps), max(stamps)
        for spans, span_key in ((series, key[:3]), (targets, key[:4])):
            span = spans.get(span_key)
            if span is None:
                spans[span_key] = [lo, hi]
            else:
                span[0], span[1] = min(span[0], lo), max(span[1], hi)
    out: list[list[Any]] = [list(column) for column in zip(*rollups, strict=True)]
    for spans, width in ((series, 3), (targets, 4)):
        keys = sorted(spans)
        out += ([k[i] for k in keys] for i in range(width))
        out += ([spans[k][i] for k in keys] for i in range(2))
    mkeys = sorted(by_model)
    # A model's row is its probes' state, its traffic's only where the batch has no probe of it
    # (as STORE_TELEMETRY_ARRAYS): the latest of those events; of two at the same time, the
    # later in the batch; first seen, the earliest of those.
    kinds = [_model_events(by_model[k]) for k in mkeys]
    latest = [max(reversed(group), key=_ts) for group in kinds]
    out += ([k[i] for k in mkeys] for i in range(2))
    out.append([min(map(_ts, group)) for group in kinds])
    for col in ("ts", "target", "host", "status", "cpu_percent", "memory_percent", "gpu_percent"):
        out.append([getattr(ev, col) for ev in latest])
    out.append([ev.gpu_memory_percent for ev in latest])
    out.append([ev.source for ev in latest])
    return out


def _model_events(group: list[TelemetryEvent]) -> list[TelemetryEvent]:
    """The events of one model that its row takes: its probes, or its traffic where none."""
    if all(ev.source == "probe" for ev in group):
        return group
    probes = [ev for ev in group if ev.source == "probe"]
    return probes or group
