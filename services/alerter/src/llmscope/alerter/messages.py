"""What every message says first, in words an on-call engineer can act on (pure).

Each channel renders the same facts, in this order: what is wrong (model, target, prompt, the
metric in words and its units, which way and how much against the baseline), since when, how
sure (the rule in words, never its parameters), what else is affected (other models of the
incident) and where to look (the incident, the violation, the chart). Outages add what the failed
probes answered: failure kind, HTTP status, error text, how many, since when, the last success.

The engine fills ``direction``, ``level``, ``change_pct`` and ``detail`` on new events; older
events lack them, and the figures are then computed from ``value`` and ``limits.center``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from urllib.parse import urlencode

from llmscope.proto.redaction import redacted
from llmscope.proto.violation import ViolationEvent

AVAILABILITY_METRICS = frozenset({"availability", "error_rate"})
AVAILABILITY_RULES = frozenset({"AVAILABILITY", "ERROR_RATE"})
# Metrics where a higher value is the better one (everything else: lower is better).
HIGHER_IS_BETTER = frozenset({"tokens_per_s"})
CHART_METRICS = frozenset({"latency_ms", "ttft_ms", "tokens_per_s"})

METRIC_WORDS = {
    "latency_ms": "latency",
    "ttft_ms": "time to first token",
    "tokens_per_s": "generation speed",
    "total_duration_ms": "server-side duration",
    "load_duration_ms": "model load time",
    "prompt_eval_duration_ms": "prompt evaluation time",
    "eval_duration_ms": "generation time",
    "availability": "availability",
    "cpu_percent": "CPU use",
    "memory_percent": "memory use",
    "gpu_percent": "GPU use",
    "gpu_memory_percent": "GPU memory use",
}

RULE_WORDS = {
    "CUSUM": "a sustained shift: the level has stayed away from the baseline over many probes (CUSUM)",
    "SPIKE": "a single probe beyond anything the baseline made plausible",
    "TAIL": "an excess of slow answers over the baseline's tail rate",
    "AVAILABILITY": "consecutive failed probes",
    "ERROR_RATE": "more failed probes than the baseline failure rate allows",
    "EWMA": "the smoothed average (EWMA) left its control limits: a small sustained shift",
    "R1": "one probe beyond the control limits",
    "R2": "nine probes in a row on one side of the baseline",
    "R3": "six probes in a row steadily rising or falling",
    "R4": "fourteen probes in a row alternating up and down",
    "R5": "two of three probes far from the baseline on one side",
    "R6": "four of five probes away from the baseline on one side",
    "R7": "fifteen probes in a row unusually close to the baseline",
    "R8": "eight probes in a row away from the baseline on both sides",
}

SEVERITY_COLOURS = {"critical": "#D0021B", "warning": "#F5A623", "info": "#4A90E2"}
RESOLVED_COLOUR = "#2EB67D"
IMPROVED_COLOUR = "#4A90E2"

Tone = Literal["critical", "warning", "info", "resolved", "improved"]


@dataclass(frozen=True, slots=True)
class FailedProbe:
    """One failed probe as the API stored it (asked of it over the bus: api_view)."""

    ts: datetime
    status: str
    http_status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Outage:
    """The failed probes of a target since its last success, up to the message's creation."""

    count: int
    since: datetime | None
    last_success: datetime | None
    recent: tuple[FailedProbe, ...] = ()
    """the latest failed probes, newest first"""


@dataclass(frozen=True, slots=True)
class PastIncident:
    """A resolved incident the current one closely resembles (resemblance.py), and how it ended."""

    id: str
    title: str
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class IncidentRef:
    """The incident a violation belongs to, as messages name it."""

    id: str
    title: str
    models: tuple[str, ...] = ()
    cascade: bool = False
    host: str = ""
    seen_before: PastIncident | None = None


def seen_before_line(past: PastIncident) -> str:
    """``Looks like <title> (resolved 03-02 12:05 by ann): restarted the GPU node``."""
    how = f"resolved {clock(past.resolved_at)}" if past.resolved_at else "resolved"
    if past.resolved_by:
        how += f" by {past.resolved_by}"
    return f"Looks like {past.title} ({how}): {past.note or 'no resolution note'}"


# -- numbers in the metric's own units --------------------------------------------------------


def metric_words(metric: str) -> str:
    return METRIC_WORDS.get(metric, metric.replace("_", " "))


def quantity(value: float | None, metric: str) -> str:
    """``1.63 s``, ``880 ms``, ``42.1 tok/s``, ``12 %``."""
    if value is None:
        return "-"
    if metric.endswith("_ms"):
        if abs(value) >= 1000:
            return f"{value / 1000:.3g} s" if abs(value) < 100_000 else f"{value / 1000:,.0f} s"
        return f"{value:.3g} ms" if abs(value) < 100 else f"{value:.0f} ms"
    if metric == "tokens_per_s":
        return f"{value:.3g} tok/s"
    if metric.endswith("_percent"):
        return f"{value:.0f} %"
    return f"{value:.3g}"


def change_pct(ev: ViolationEvent) -> float | None:
    """Signed % of the level against the baseline center: the engine's, else computed."""
    if ev.change_pct is not None:
        return ev.change_pct
    center = ev.limits.center
    if not center or ev.metric in AVAILABILITY_METRICS:
        return None
    return (level(ev) / center - 1) * 100


def level(ev: ViolationEvent) -> float:
    return ev.level if ev.level is not None else ev.value


def direction(ev: ViolationEvent) -> Literal["up", "down", ""]:
    if ev.direction:
        return ev.direction
    pct = change_pct(ev)
    if pct is None or pct == 0:
        return ""
    return "up" if pct > 0 else "down"


def improved(ev: ViolationEvent) -> bool:
    """The move is an improvement: the engine says so, else the metric's direction does."""
    if ev.better:
        return True
    if ev.direction or ev.metric in AVAILABILITY_METRICS:
        return False
    way = direction(ev)
    return way == ("up" if ev.metric in HIGHER_IS_BETTER else "down")


def verdict(ev: ViolationEvent) -> str:
    """``slower`` / ``faster`` for timings and speed, ``higher`` / ``lower`` otherwise."""
    way = direction(ev)
    if not way:
        return ""
    if ev.metric.endswith("_ms") or ev.metric in HIGHER_IS_BETTER:
        return "faster" if improved(ev) else "slower"
    return "higher" if way == "up" else "lower"


def is_outage(ev: ViolationEvent) -> bool:
    return ev.rule.upper() in AVAILABILITY_RULES or ev.metric in AVAILABILITY_METRICS


def subject(ev: ViolationEvent) -> str:
    """``ollama/llama3.1:8b on gpu-1 (target local, prompt simple-1)``."""
    where = f" on {ev.host}" if ev.host else ""
    extra = [
        f"target {redacted(ev.target)}" if ev.target else "",
        f"prompt {ev.prompt_id}" if ev.prompt_id else "",
    ]
    parts = ", ".join(p for p in extra if p)
    return f"{ev.provider}/{ev.model}{where}" + (f" ({parts})" if parts else "")


def movement(ev: ViolationEvent) -> str:
    """``latency 1.63 s, +85 % over the 0.88 s baseline (slower)``; the engine's detail if given."""
    if is_outage(ev):
        return outage_movement(ev)
    if ev.detail:
        word = verdict(ev)
        return ev.detail + (f" ({word})" if word and word not in ev.detail else "")
    name = metric_words(ev.metric)
    base = quantity(ev.limits.center, ev.metric)
    pct = change_pct(ev)
    now = quantity(level(ev), ev.metric)
    if pct is None:
        return f"{name} {now} against a {base} baseline"
    way = "over" if pct >= 0 else "under"
    word = verdict(ev)
    return f"{name} {now}, {pct:+.0f} % {way} the {base} baseline" + (f" ({word})" if word else "")


def failure_rate_known(ev: ViolationEvent) -> bool:
    """The engine has estimated the target's failure rate: while it collects its availability
    baseline it writes a rate of 0 (and an alarm share of 1), which is no estimate at all (its
    estimate is floored above 0)."""
    return ev.limits.center > 0


def baseline_failure_rate(ev: ViolationEvent) -> str:
    """``1.0% over 200 probes``, or ``not known yet (12 probes collected)`` during the baseline."""
    if failure_rate_known(ev):
        return f"{ev.limits.center:.1%} over {ev.baseline.n} probes"
    return f"not known yet ({ev.baseline.n} probes collected)"


def _run_that_fires(ev: ViolationEvent) -> int | None:
    """The failure run the AVAILABILITY rule fired at, from its name (``4 failed probes in a
    row``): longer than 3 for a flaky baseline, and below the count when an outage went on
    through a re-baseline."""
    match = re.fullmatch(r"(\d+) failed probes in a row", ev.rule_name.strip())
    return int(match.group(1)) if match else None


def outage_movement(ev: ViolationEvent) -> str:
    """``down: 4 failed probes in a row (baseline failure rate 2.0%)``; during the baseline the
    rate is said to be unknown, never 0.0%."""
    n = int(ev.value)
    rate = ev.limits.center
    if ev.rule.upper() == "ERROR_RATE":
        against = (
            f"against a {rate:.1%} baseline failure rate"
            if failure_rate_known(ev)
            else "baseline failure rate not known yet"
        )
        return f"failing: {n} failed probes in the recent window, {against}"
    run = _run_that_fires(ev)
    fired = [f"fires at {run} in a row"] if run is not None and run != n else []
    if failure_rate_known(ev):
        fired.append(f"baseline failure rate {rate:.1%}")
    else:
        fired.append(f"baseline failure rate not known yet, {ev.baseline.n} probes collected")
    return f"down: {n} failed probes in a row ({'; '.join(fired)})"


def how_sure(ev: ViolationEvent) -> str:
    rule = ev.rule.upper()
    words = RULE_WORDS.get(rule) or (ev.rule_name or rule)
    points = len(ev.point_ids)
    basis = f"; {points} probes in the pattern" if points > 1 else ""
    return f"{words} [{ev.rule}, {ev.severity}{basis}]"


def since(ev: ViolationEvent) -> datetime:
    """When the signal began: the pattern's first point, else the opening."""
    return min(ev.point_ts) if ev.point_ts else (ev.opened_at or ev.ts)


def clock(ts: datetime | None) -> str:
    return "-" if ts is None else ts.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def duration(delta: timedelta) -> str:
    s = max(0, int(delta.total_seconds()))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 and s < 600 else "")
    h, m = divmod(s // 60, 60)
    return f"{h} h {m} min" if m else f"{h} h"


def failure_line(p: FailedProbe, repeats: int = 1, oldest: datetime | None = None) -> str:
    http = f"HTTP {p.http_status}" if p.http_status is not None else "no HTTP status"
    text = (p.error or "").strip()
    # The prober's error text often starts with the status it already reported ("HTTP 503 ...").
    if p.http_status is not None and text.startswith(http):
        text = text[len(http) :].lstrip(" :-")
    error = f": {text[:200]}" if text else ""
    when = clock(p.ts) if oldest is None or repeats == 1 else f"{clock(oldest)}-{clock(p.ts)}"
    times = f" (x{repeats})" if repeats > 1 else ""
    return f"{when} {p.status}, {http}{error}{times}"


def _same_failure(a: FailedProbe, b: FailedProbe) -> bool:
    same_text = (a.error or "").strip() == (b.error or "").strip()
    return same_text and (a.status, a.http_status) == (b.status, b.http_status)


def failure_lines(recent: Sequence[FailedProbe]) -> list[str]:
    """One line per run of identical failures (same kind, status and text; ``recent`` newest
    first), with its count and time span: an outage's probes usually fail the same way, and a page
    of repeated lines hides the one that differs."""
    out: list[str] = []
    i = 0
    while i < len(recent):
        j = i
        while j + 1 < len(recent) and _same_failure(recent[j + 1], recent[i]):
            j += 1
        out.append(failure_line(recent[i], repeats=j - i + 1, oldest=recent[j].ts))
        i = j + 1
    return out


def outage_lines(outage: Outage | None, now: datetime) -> list[str]:
    if outage is None:
        return []
    lines = []
    started = f" since {clock(outage.since)}" if outage.since else ""
    lasting = f" ({duration(now - outage.since)})" if outage.since else ""
    lines.append(f"{outage.count} failed probe(s){started}{lasting}")
    lines.append(
        f"Last success: {clock(outage.last_success)}" if outage.last_success else "Last success: none stored"
    )
    lines.extend(f"Failed: {line}" for line in failure_lines(outage.recent))
    return lines


# -- links ------------------------------------------------------------------------------------


def chart_url(public_url: str, ev: ViolationEvent) -> str:
    """The dashboard's chart of this series over the hours around the violation."""
    params = {"provider": ev.provider, "model": ev.model}
    if ev.prompt_id:
        params["prompt_id"] = ev.prompt_id
    if ev.target:
        # As the dashboard prints it: the dashboard maps a printed target back to the stored one.
        params["target"] = redacted(ev.target)
    if ev.metric in CHART_METRICS:
        params["metric"] = ev.metric
    params["hours"] = "6"
    return f"{public_url.rstrip('/')}/?{urlencode(params)}"


def incident_url(public_url: str, incident_id: str) -> str:
    return f"{public_url.rstrip('/')}/incidents/{incident_id}"


# -- titles -----------------------------------------------------------------------------------


def worst(events: Sequence[ViolationEvent]) -> str:
    for sev in ("critical", "warning", "info"):
        if any(e.severity == sev for e in events):
            return sev
    return "warning"


def tone(firing: Sequence[ViolationEvent]) -> Tone:
    """The colour a message takes: resolved when nothing fires, improved when every move is."""
    if not firing:
        return "resolved"
    if all(improved(e) for e in firing):
        return "improved"
    return worst(firing)  # type: ignore[return-value]


def colour(kind: Tone) -> str:
    return {"resolved": RESOLVED_COLOUR, "improved": IMPROVED_COLOUR}.get(kind) or SEVERITY_COLOURS.get(
        kind, SEVERITY_COLOURS["warning"]
    )


def one_line(ev: ViolationEvent) -> str:
    """``ollama/llama3.1:8b on gpu-1 (prompt simple-1): latency 1.63 s, +85 % ... (slower)``."""
    return f"{subject(ev)}: {movement(ev)}"
