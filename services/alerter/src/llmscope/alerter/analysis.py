"""The deterministic incident analysis: what moved, by how much, where, and what else was hit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import fmean

from llmscope.alerter.messages import (
    change_pct,
    is_outage,
    level,
    metric_words,
    outage_movement,
    quantity,
    verdict,
)
from llmscope.alerter.notifiers.base import fmt_value
from llmscope.proto.incident import MetricMove
from llmscope.proto.violation import ViolationEvent


@dataclass(frozen=True, slots=True)
class TelemetryPoint:
    """The telemetry fields the analysis reads (from the API's ``telemetry`` table when present)."""

    id: str
    ts: datetime
    model: str
    latency_ms: float | None = None
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    status: str = "ok"


def worst_per_series(events: Sequence[ViolationEvent]) -> dict[tuple[str, str], ViolationEvent]:
    """Per (model, metric), the violation furthest from its baseline."""
    worst: dict[tuple[str, str], ViolationEvent] = {}
    for ev in events:
        key = (ev.model, ev.metric)
        if key not in worst or abs(ev.deviation_sigma) > abs(worst[key].deviation_sigma):
            worst[key] = ev
    return worst


def metric_moves(events: Sequence[ViolationEvent]) -> tuple[MetricMove, ...]:
    """Per model and metric, the worst point against the frozen baseline center."""
    worst = worst_per_series(events)
    moves = []
    for (model, metric), ev in sorted(worst.items()):
        center = ev.limits.center
        moves.append(
            MetricMove(
                model=model,
                metric=metric,
                baseline=center,
                # An outage's value is a failure count and its center a rate: no percentage.
                observed=ev.value if is_outage(ev) else level(ev),
                change_percent=change_pct(ev),
                deviation_sigma=ev.deviation_sigma,
            )
        )
    return tuple(moves)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def summarize(
    events: Sequence[ViolationEvent],
    *,
    cleared: frozenset[str] = frozenset(),
    telemetry: Sequence[TelemetryPoint] = (),
) -> tuple[str, tuple[MetricMove, ...], tuple[str, ...]]:
    """(summary text, metric moves, rules) from the incident's violations and their telemetry."""
    if not events:
        return "No violations.", (), ()
    models = sorted({e.model for e in events})
    hosts = sorted({e.host for e in events if e.host})
    rules = Counter(e.rule for e in events)
    open_count = sum(1 for e in events if e.episode_id not in cleared)
    where = f" on host {', '.join(hosts)}" if hosts else f" at provider {events[0].provider}"
    lines = [
        f"{len(events)} violation(s) on {len(models)} model(s){where} "
        f"({open_count} still open): {', '.join(models)}."
        + (" Several models degraded together: a cascade." if len(models) > 1 else "")
    ]
    moves = metric_moves(events)
    by_key = worst_per_series(events)
    for mv in moves:
        ev = by_key[(mv.model, mv.metric)]
        if is_outage(ev):
            lines.append(f"- {mv.model}: {outage_movement(ev)}.")
            continue
        name, q = metric_words(mv.metric), quantity
        pct = f", {mv.change_percent:+.0f} %" if mv.change_percent is not None else ""
        word = verdict(ev)
        lines.append(
            f"- {mv.model} {name}: {q(mv.observed, mv.metric)} against a baseline of "
            f"{q(mv.baseline, mv.metric)}{pct}" + (f" ({word})" if word else "") + "."
        )
    lines.append("Rules: " + ", ".join(f"{r} x{n}" if n > 1 else r for r, n in sorted(rules.items())) + ".")
    ok = [p for p in telemetry if p.status == "ok"]
    ttft = _mean([p.ttft_ms for p in ok])
    total = _mean([p.latency_ms for p in ok if p.ttft_ms is not None])
    if ttft is not None and total:
        share = ttft / total
        where_time = (
            "before the first token (queueing, model load or prompt evaluation)"
            if share >= 0.5
            else "in generation (decoding), after the first token"
        )
        lines.append(
            f"Time to first token averaged {fmt_value(ttft, 'ms')} of {fmt_value(total, 'ms')} total "
            f"({share:.0%}): most of the time is spent {where_time}."
        )
    else:
        ttft_moves = [m for m in moves if m.metric == "ttft_ms"]
        lat_moves = [m for m in moves if m.metric == "latency_ms"]
        if ttft_moves and lat_moves:
            lines.append(
                "Both time to first token and total latency moved: the delay starts before generation."
            )
        elif lat_moves:
            lines.append("No time-to-first-token data: the split between waiting and generation is unknown.")
    tps = _mean([p.tokens_per_s for p in ok])
    if tps is not None:
        lines.append(f"Generation speed at the signalling points: {tps:.1f} tokens/s.")
    failed = [p for p in telemetry if p.status != "ok"]
    if failed:
        kinds = Counter(p.status for p in failed)
        lines.append("Failed probes: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) + ".")
    system = [e.system for e in events]
    parts = []
    for label, values in (
        ("CPU", [s.cpu_percent for s in system]),
        ("memory", [s.memory_percent for s in system]),
        ("GPU", [s.gpu_percent for s in system]),
        ("GPU memory", [s.gpu_memory_percent for s in system]),
    ):
        present = [v for v in values if v is not None]
        if present:
            peak = max(present)
            parts.append(f"{label} up to {peak:.0f}%" + (" (saturated)" if peak >= 90 else ""))
    lines.append("Host at the time: " + (", ".join(parts) if parts else "no system metrics reported") + ".")
    return "\n".join(lines), moves, tuple(sorted(rules))
