"""Merging a host's incidents into its cascade, and holding a stray point's page (pure).

Correlation (incidents.py) places each new violation; it cannot undo an earlier placement. A
second model's shift often starts with a jump: its first episode is one SPIKE point, which does
not join the first model's incident (one stray point is no cascade) and so opens an incident of
its own. Once that episode is sustained (still open ``sustain_s`` after it opened, or confirmed by
another sustained signal of its model), the host has critical signals of two models overlapping
in time: a cascade. :func:`plan_merge` then folds every incident of the host holding a sustained
open signal into one survivor; the others are marked merged into it.

Until then the lone point must not page on its own: :func:`hold_until` tells how long the new
incident's first message waits (its group's first flush), so that a point that turns out
sustained is merged before anyone was told of it, and one that clears in time tells nobody.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from llmscope.alerter.incidents import OpenSignal, sustained, sustained_models

HOLD_GRACE = timedelta(seconds=5)
"""Past the sustain time, so the merge pass (each dispatch tick) runs before the held flush."""


@dataclass(frozen=True, slots=True)
class HostIncident:
    """An unresolved incident of one host, with the still-open signals of its episodes."""

    id: str
    opened_at: datetime
    last_violation_at: datetime
    cascade: bool
    signals: tuple[OpenSignal, ...]


@dataclass(frozen=True, slots=True)
class Merge:
    survivor: str
    absorbed: tuple[str, ...]


def plan_merge(
    incidents: Sequence[HostIncident], when: datetime, sustain_s: float, window: float
) -> Merge | None:
    """The incidents of one host to fold into one, or None.

    A cascade needs sustained open signals of at least two models at ``when``; every incident
    holding one of them takes part if its last violation is within ``window`` of the survivor's
    (as a violation joins an incident: incidents.correlate). Incidents with only unconfirmed
    one-point signals stay apart (a stray SPIKE turns nothing into a cascade). The survivor is an
    incident that already is a cascade, else the earliest opened: the one people were told of first.
    """
    confirmed = sustained_models((s for inc in incidents for s in inc.signals), when, sustain_s)
    live = [inc for inc in incidents if any(s.model in confirmed for s in inc.signals)]
    if len(live) < 2:
        return None
    survivor = min(live, key=lambda inc: (not inc.cascade, inc.opened_at, inc.id))
    near = [
        inc
        for inc in live
        if abs((inc.last_violation_at - survivor.last_violation_at).total_seconds()) <= window
    ]
    models = {s.model for inc in near for s in inc.signals if s.model in confirmed}
    if len(near) < 2 or len(models) < 2:
        return None
    return Merge(survivor.id, tuple(sorted(inc.id for inc in near if inc.id != survivor.id)))


def hold_until(
    signal: OpenSignal,
    *,
    confirmed: Collection[str],
    other_models_open: bool,
    sustain_s: float,
) -> datetime | None:
    """When the first message of a new incident opened by ``signal`` may go out, or None for at
    once: a lone unconfirmed one-point signal while another model of its host has an open
    incident waits until it would count as sustained (then it is merged, or stands on its own)."""
    if not other_models_open or signal.model in confirmed:
        return None
    if sustained(signal.rule, signal.points):
        return None
    return signal.opened_at + timedelta(seconds=sustain_s) + HOLD_GRACE
