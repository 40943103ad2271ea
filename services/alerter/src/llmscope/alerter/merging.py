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
    told: bool = False
    """whether a message about it went out already (its alert groups notified)"""


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
    An incident already told of (its groups notified) is preferred over one that never paged.
    """
    confirmed = sustained_models((s for inc in incidents for s in inc.signals), when, sustain_s)
    live = [inc for inc in incidents if any(s.model in confirmed for s in inc.signals)]
    if len(live) < 2:
        return None
    survivor = min(live, key=lambda inc: (not inc.told, not inc.cascade, inc.opened_at, inc.id))
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
    others: Sequence[OpenSignal],
    confirmed: Collection[str],
    sustain_s: float,
) -> datetime | None:
    """When the first message of a new incident opened by ``signal`` may go out, or None for at
    once. ``others``: the open signals of the host's other models in its open incidents.

    With none, nothing to merge with: at once. Otherwise it waits until every unconfirmed
    one-point signal among its own and theirs would count as sustained: a lone point of its own
    is then merged into the host's cascade or stands alone; a sustained signal of its own next to
    another model's fresh point waits for that point, so that if both turn out to be one cascade,
    the incident merged away never paged (the survivor is the one told first).
    """
    if not others:
        return None
    pending = [s.opened_at for s in others if s.model not in confirmed and not sustained(s.rule, s.points)]
    if signal.model not in confirmed and not sustained(signal.rule, signal.points):
        pending.append(signal.opened_at)
    if not pending:
        return None
    return max(pending) + timedelta(seconds=sustain_s) + HOLD_GRACE
