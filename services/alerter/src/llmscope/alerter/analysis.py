"""The deterministic incident analysis: what moved, by how much, where, and what else was hit."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import fmean

from msgspec import structs

from llmscope.alerter.messages import (
    Outage,
    change_pct,
    clock,
    failure_rate_known,
    is_outage,
    level,
    metric_words,
    outage_movement,
    quantity,
    verdict,
)
from llmscope.proto.incident import MetricMove
from llmscope.proto.redaction import redacted
from llmscope.proto.violation import ViolationEvent


@dataclass(frozen=True, slots=True)
class TelemetryPoint:
    """The telemetry fields the analysis reads (asked of the API over the bus when it runs)."""

    id: str
    ts: datetime
    model: str
    latency_ms: float | None = None
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    status: str = "ok"
    prompt_id: str = ""


SeriesKey = tuple[str, str, str, str]
"""(model, metric, prompt id, target): one chart. Prompts of different lengths have their own
baselines, so figures are never compared or averaged across them."""


def worst_per_series(events: Sequence[ViolationEvent]) -> dict[SeriesKey, ViolationEvent]:
    """Per chart (model, metric, prompt, target), the violation furthest from its baseline."""
    worst: dict[SeriesKey, ViolationEvent] = {}
    for ev in events:
        key = (ev.model, ev.metric, ev.prompt_id, ev.target)
        if key not in worst or abs(ev.deviation_sigma) > abs(worst[key].deviation_sigma):
            worst[key] = ev
    return worst


def _series_words(ev: ViolationEvent) -> str:
    """`` (prompt long-1, target local)``: which chart of the model a figure belongs to."""
    parts = [
        f"prompt {ev.prompt_id}" if ev.prompt_id else "",
        f"target {redacted(ev.target)}" if ev.target else "",
    ]
    named = ", ".join(p for p in parts if p)
    return f" ({named})" if named else ""


def metric_moves(events: Sequence[ViolationEvent]) -> tuple[MetricMove, ...]:
    """Per chart (model, metric, prompt, target), the worst point against its frozen baseline."""
    worst = worst_per_series(events)
    moves = []
    for (model, metric, prompt_id, _target), ev in sorted(worst.items()):
        center = ev.limits.center
        moves.append(
            MetricMove(
                model=model,
                metric=metric,
                prompt_id=prompt_id,
                baseline=center,
                # An outage's value is a failure count and its center a rate: no percentage.
                observed=ev.value if is_outage(ev) else level(ev),
                change_percent=change_pct(ev),
                deviation_sigma=ev.deviation_sigma,
                rule=ev.rule,
                rule_name=ev.rule_name,
            )
        )
    return tuple(moves)


_WINDOW = re.compile(r"in the last (\d+) probes")
"""An ERROR_RATE rule's window, from the engine's rule name ``>= 10 failures in the last 50 probes``."""


def _raised(move: MetricMove, count: int, run: ViolationEvent | None) -> MetricMove:
    """``move`` with its figure raised to ``count`` failed probes since the last success: a run
    (``MetricMove.run``), whatever rule fired; the chart's AVAILABILITY violation's rule where it
    has one (an ERROR_RATE-only chart keeps its rule, the count is still worded "in a row")."""
    if count <= move.observed:
        return move
    rule, name = (run.rule, run.rule_name) if run is not None else (move.rule, move.rule_name)
    return structs.replace(move, observed=float(count), rule=rule, rule_name=name, run=True)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def _open_words(open_count: int) -> str:
    if open_count == 0:
        return "all cleared"
    # No clock time (tickets compare the text across analyses); the resolution rewrites it.
    return f"{open_count} still open when this analysis was written"


def summarize(
    events: Sequence[ViolationEvent],
    *,
    cleared: frozenset[str] = frozenset(),
    telemetry: Sequence[TelemetryPoint] = (),
    outages: Mapping[str, Outage] | None = None,
) -> tuple[str, tuple[MetricMove, ...], tuple[str, ...]]:
    """(summary text, metric moves, rules) from the incident's violations and their telemetry.

    ``outages``: per outage episode, the target's failed probes since its last success (the
    violation's own points are only the few that tripped the rule). Its count of open violations
    says when it held: the analysis is written again when the incident resolves.
    """
    if not events:
        return "No violations.", (), ()
    models = sorted({e.model for e in events})
    hosts = sorted({e.host for e in events if e.host})
    rules = Counter(e.rule for e in events)
    open_count = sum(1 for e in events if e.episode_id not in cleared)
    where = f" on host {', '.join(hosts)}" if hosts else f" at provider {events[0].provider}"
    lines = [
        f"{len(events)} violation(s) on {len(models)} model(s){where} "
        f"({_open_words(open_count)}): {', '.join(models)}."
        + (" Several models degraded together: a cascade." if len(models) > 1 else "")
    ]
    by_key = worst_per_series(events)
    outages = outages or {}
    # An outage goes on failing after its rule fired (at 3 probes, say): its series' figure is
    # every failed probe since the last success when that is known.
    failing: dict[SeriesKey, Outage] = {}
    runs: dict[SeriesKey, ViolationEvent] = {}
    for ev in events:
        known = outages.get(ev.episode_id)
        key = (ev.model, ev.metric, ev.prompt_id, ev.target)
        before = failing[key].count if key in failing else 0
        if known is not None and is_outage(ev) and known.count > before:
            failing[key] = known
        if ev.rule.upper() == "AVAILABILITY" and key not in runs:
            runs[key] = ev
    # metric_moves walks the same sorted series: one move per series, in this order. A count
    # raised to the failures since the last success is a run: the series' AVAILABILITY
    # violation's rule goes with it where there is one.
    moves = tuple(
        _raised(mv, failing[key].count, runs.get(key)) if key in failing else mv
        for key, mv in zip(sorted(by_key), metric_moves(events), strict=True)
    )
    for ((model, _metric, _prompt, _target), ev), mv in zip(sorted(by_key.items()), moves, strict=True):
        series = _series_words(ev)
        if is_outage(ev):
            if (key := (model, ev.metric, ev.prompt_id, ev.target)) in failing:
                rate = (
                    f"baseline failure rate {ev.limits.center:.1%} over {ev.baseline.n} probes"
                    if failure_rate_known(ev)
                    else f"baseline failure rate not known yet, {ev.baseline.n} probes collected"
                )
                # A run, whatever rule fired: an ERROR_RATE count is of failures in its window.
                window = _WINDOW.search(ev.rule_name) if ev.rule.upper() == "ERROR_RATE" else None
                fired = f"{int(ev.value)} in the last {window[1]}" if window else f"{int(ev.value)}"
                lines.append(
                    f"- {model}{series}: down: {failing[key].count} failed probes in a row since the last"
                    f" success ({ev.rule} fired at {fired}; {rate})."
                )
            else:
                lines.append(f"- {model}{series}: {outage_movement(ev)}.")
            continue
        name, q = metric_words(mv.metric), quantity
        pct = f", {mv.change_percent:+.0f} %" if mv.change_percent is not None else ""
        word = verdict(ev)
        lines.append(
            f"- {model} {name}{series}: {q(mv.observed, mv.metric)} against this prompt's baseline of "
            f"{q(mv.baseline, mv.metric)}{pct}" + (f" ({word})" if word else "") + "."
        )
    lines.append("Rules: " + ", ".join(f"{r} x{n}" if n > 1 else r for r, n in sorted(rules.items())) + ".")
    ok = [p for p in telemetry if p.status == "ok"]
    splits = _ttft_splits(ok)
    if splits:
        lines.extend(splits)
    else:
        ttft_moves = [m for m in moves if m.metric == "ttft_ms"]
        lat_moves = [m for m in moves if m.metric == "latency_ms"]
        if ttft_moves and lat_moves:
            lines.append(
                "Both time to first token and total latency moved: the delay starts before generation."
            )
        elif lat_moves:
            lines.append("No time-to-first-token data: the split between waiting and generation is unknown.")
    speeds = []
    for (model, prompt), points in _per_prompt(ok).items():
        tps = _mean([p.tokens_per_s for p in points])
        if tps is not None:
            speeds.append(f"{tps:.1f} tokens/s ({model}" + (f", prompt {prompt})" if prompt else ")"))
    if speeds:
        lines.append("Generation speed at the signalling points: " + "; ".join(speeds) + ".")
    outage_lines_ = _outage_lines(events, outages)
    if outage_lines_:
        lines.extend(outage_lines_)
    else:
        failed = [p for p in telemetry if p.status != "ok"]
        if failed:
            kinds = Counter(p.status for p in failed)
            lines.append(
                "Failed probes among the signalling points: "
                + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
                + "."
            )
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


def _per_prompt(points: Sequence[TelemetryPoint]) -> dict[tuple[str, str], list[TelemetryPoint]]:
    out: dict[tuple[str, str], list[TelemetryPoint]] = {}
    for p in points:
        out.setdefault((p.model, p.prompt_id), []).append(p)
    return dict(sorted(out.items()))


def _where_time(share: float) -> str:
    if share >= 0.5:
        return "before the first token (queueing, model load or prompt evaluation)"
    return "in generation (decoding), after the first token"


def _ttft_splits(ok: Sequence[TelemetryPoint]) -> list[str]:
    """Where the time goes, per prompt: a total averaged over prompts of different lengths
    means nothing, a share of each prompt's own total does."""
    rows = []
    for (model, prompt), points in _per_prompt(ok).items():
        ttft = _mean([p.ttft_ms for p in points])
        total = _mean([p.latency_ms for p in points if p.ttft_ms is not None])
        if ttft is not None and total:
            rows.append((model, prompt, ttft, total, ttft / total))
    if not rows:
        return []
    if len(rows) == 1:
        model, prompt, ttft, total, share = rows[0]
        of = f" ({model}, prompt {prompt})" if prompt else f" ({model})"
        return [
            f"Time to first token{of} averaged {quantity(ttft, 'ttft_ms')} of {quantity(total, 'latency_ms')}"
            f" total ({share:.0%}): most of the time is spent {_where_time(share)}."
        ]
    lines = ["Time to first token at the signalling points, per prompt (each against its own total):"]
    for model, prompt, ttft, total, share in rows:
        name = f"{model}, prompt {prompt}" if prompt else model
        lines.append(
            f"- {name}: {quantity(ttft, 'ttft_ms')} of {quantity(total, 'latency_ms')} total ({share:.0%}),"
            f" mostly {_where_time(share)}."
        )
    return lines


def _outage_lines(events: Sequence[ViolationEvent], outages: Mapping[str, Outage]) -> list[str]:
    """Per target, the failed probes since its last success, counted in full (not only the
    points that tripped the rule), with their kinds among the latest ones read."""
    lines = []
    seen: set[tuple[str, str, str]] = set()
    for ev in events:
        outage = outages.get(ev.episode_id)
        key = (ev.provider, ev.model, ev.target)
        if outage is None or key in seen or outage.count == 0:
            continue
        seen.add(key)
        target = f" (target {redacted(ev.target)})" if ev.target else ""
        since = f" from {clock(outage.since)}" if outage.since else ""
        last = f"; last success {clock(outage.last_success)}" if outage.last_success else ""
        kinds = Counter(p.status for p in outage.recent)
        read = len(outage.recent)
        scope = "" if read >= outage.count else f" (kinds of the latest {read})"
        what = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
        lines.append(
            f"Failed probes of {ev.model}{target}: {outage.count}{since}{last}"
            + (f"; {what}{scope}" if what else "")
            + "."
        )
    return lines
