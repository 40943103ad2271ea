"""Correlating violations into incidents (pure).

A violation joins an open incident when it comes within ``window`` of the incident's last
violation and concerns a model already in it. A violation of another model joins only as part of
a cascade: it shares the incident's host label (targets without one never cascade through the
empty label), and both it and a still-open signal of another model in the incident are sustained
(not one stray point: a single SPIKE or R1 point on a second model is its own incident).

A shift that starts with a jump opens its chart's episode as a SPIKE (one point), and the engine
then keeps that one episode open for as long as the shift lasts. So a single-point episode counts
as sustained once it is still open ``sustain_s`` after it opened (longer than the engine's quiet
period, ``clear_after`` probes: the chart kept firing), and a model with any sustained open
signal on the host confirms its other single-point episodes (a CUSUM on its TTFT confirms the
SPIKE on its latency).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from llmscope.proto.violation import SEVERITIES, Severity, ViolationEvent


@dataclass(frozen=True, slots=True)
class OpenIncident:
    id: str
    provider: str
    host: str
    models: tuple[str, ...]
    last_violation_at: datetime
    sustained_open: tuple[str, ...] = ()
    """models with a still-open sustained signal in the incident"""


# Single-point tests: one probe beyond the limits says little about a whole host.
SINGLE_POINT_RULES = frozenset({"SPIKE", "R1"})


def sustained(
    rule: str, points: int, *, open_for_s: float | None = None, sustain_s: float | None = None
) -> bool:
    """A signal built on more than one probe (CUSUM, EWMA, TAIL, runs, outages), or a one-point
    episode still open ``sustain_s`` after it opened (its quiet period passed without a clear)."""
    if rule.upper() not in SINGLE_POINT_RULES or points > 1:
        return True
    return open_for_s is not None and sustain_s is not None and open_for_s >= sustain_s


@dataclass(frozen=True, slots=True)
class OpenSignal:
    """A still-open violation episode of one model, as the cascade rule weighs it."""

    model: str
    rule: str
    points: int
    opened_at: datetime


def sustained_models(signals: Iterable[OpenSignal], when: datetime, sustain_s: float) -> frozenset[str]:
    """The models with a sustained open signal at ``when``: each confirms all its open episodes."""
    return frozenset(
        s.model
        for s in signals
        if sustained(s.rule, s.points, open_for_s=(when - s.opened_at).total_seconds(), sustain_s=sustain_s)
    )


def at(event: ViolationEvent) -> datetime:
    return event.opened_at or event.ts


def correlate(
    event: ViolationEvent,
    open_incidents: Iterable[OpenIncident],
    window: float,
    confirmed: Collection[str] = (),
) -> OpenIncident | None:
    """The open incident this violation belongs to, or None for a new one. ``confirmed``: the
    models of the event's host with a sustained open signal (:func:`sustained_models`)."""
    when = at(event)
    best: OpenIncident | None = None
    best_rank: tuple[bool, datetime] = (False, when)
    for inc in open_incidents:
        if abs((when - inc.last_violation_at).total_seconds()) > window:
            continue
        same_model = inc.provider == event.provider and event.model in inc.models
        cascade = (
            bool(event.host)
            and inc.host == event.host
            and (sustained(event.rule, len(event.point_ids)) or event.model in confirmed)
            and any(model != event.model for model in inc.sustained_open)
        )
        if not (same_model or cascade):
            continue
        # A cascade on the host wins over the model's own incident: a model whose first signal
        # was a lone jump (its own incident) joins the host's cascade once its shift is sustained.
        rank = (cascade, inc.last_violation_at)
        if best is None or rank > best_rank:
            best, best_rank = inc, rank
    return best


def incident_id_for(first: ViolationEvent) -> str:
    """Derived from the first violation, so a replay after a crash makes the same incident."""
    return f"inc-{first.episode_id}"


def forms_incidents(severity: str, minimum: Severity) -> bool:
    """Whether a violation of ``severity`` opens or joins incidents.

    Only signals at or above ``minimum`` do: the Nelson run tests fire as ``info`` every few
    dozen points by design, and incidents built from them would bury the real ones.
    """
    return severity in SEVERITIES[: SEVERITIES.index(minimum) + 1]


def worst_severity(severities: Iterable[str]) -> Severity:
    ranked = [s for s in SEVERITIES if s in set(severities)]
    return ranked[0] if ranked else "warning"


def title_for(events: Sequence[ViolationEvent]) -> str:
    models = sorted({e.model for e in events})
    first = events[0]
    where = first.host or first.provider
    metrics = ", ".join(sorted({e.metric for e in events}))
    if len(models) > 1:
        return f"Cascade on {where}: {len(models)} models degraded ({', '.join(models)}) - {metrics}"
    rules = ", ".join(sorted({e.rule for e in events}))
    if metrics == "availability":  # "availability out of control" reads oddly for an outage
        return f"{first.provider}/{first.model} on {where}: probes failing ({rules})"
    return f"{first.provider}/{first.model} on {where}: {metrics} out of control ({rules})"


def search_text(title: str, rules: Sequence[str], events: Sequence[ViolationEvent]) -> str:
    """What similar past incidents are found by: title, rules, metrics and models. Not the
    summary: its figures and shared wording would make every incident look alike."""
    return " ".join([title, *rules, *sorted({e.metric for e in events}), *sorted({e.model for e in events})])
