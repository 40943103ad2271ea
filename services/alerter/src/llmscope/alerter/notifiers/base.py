"""The Notifier protocol and the message every channel renders.

A channel keeps a pure ``build_payload(notification)`` apart from the I/O ``send(payload)``, so
payloads are tested without a network and ``send`` is tested against real local servers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from llmscope.alerter import messages as m
from llmscope.alerter.messages import IncidentRef, Outage
from llmscope.proto.alert import NotifyReason
from llmscope.proto.violation import ViolationEvent


@dataclass(frozen=True, slots=True)
class ContextPoint:
    """One point of the chart around a violation, for the +/-10-point context table."""

    ts: datetime | None
    value: float | None
    point_id: str
    in_pattern: bool = False
    status: str = "ok"

    def note(self, event: ViolationEvent) -> str:
        """Where the point stands against the limits, or why the probe failed (never a bare "ok"
        beside a point far above the UCL: that was the probe's status, not the chart's)."""
        if self.status != "ok":
            return f"failed: {self.status}"
        lim, v = event.limits, self.value
        if v is None or m.is_outage(event):
            return ""
        if v > lim.ucl:
            return "above UCL"
        if v < lim.lcl:
            return "below LCL"
        return "within limits"


@dataclass(frozen=True, slots=True)
class AlertView:
    """A violation as a message shows it."""

    event: ViolationEvent
    cleared: ViolationEvent | None = None
    acknowledged_by: str | None = None
    context: tuple[ContextPoint, ...] = ()
    outage: Outage | None = None
    incident: IncidentRef | None = None
    resolved_by: str | None = None
    """a person resolved it (or its incident) before it cleared"""
    resolved_at: datetime | None = None
    resolved_note: str | None = None
    repage_of_by: str | None = None
    """it fires again: a person resolved it at ``repage_of_at`` and the engine never cleared it"""
    repage_of_at: datetime | None = None
    repage_of_note: str | None = None

    @property
    def episode_id(self) -> str:
        return self.event.episode_id

    @property
    def began(self) -> datetime:
        """When the problem began: an outage's first failed probe, else the signal's first point."""
        if self.outage is not None and self.outage.since is not None:
            return min(self.outage.since, m.since(self.event))
        return m.since(self.event)

    def context_points(self) -> tuple[ContextPoint, ...]:
        """Telemetry context when we have it, else the points that formed the pattern."""
        if self.context:
            return self.context
        ev = self.event
        ts: tuple[datetime | None, ...] = ev.point_ts or (None,) * len(ev.point_values)
        return tuple(
            ContextPoint(ts=t, value=v, point_id=pid, in_pattern=True)
            for pid, v, t in zip(ev.point_ids, ev.point_values, ts, strict=False)
        )


@dataclass(frozen=True, slots=True)
class Notification:
    """One grouped message for one channel; ``id`` is its idempotency key."""

    id: str
    created_at: datetime
    reason: NotifyReason
    route: str
    group_key: str
    channel: str
    firing: tuple[AlertView, ...] = ()
    resolved: tuple[AlertView, ...] = ()
    group_labels: Mapping[str, str] = field(default_factory=dict)
    public_url: str = "http://127.0.0.1:8000"
    lead_episode_id: str = ""
    incident: IncidentRef | None = None
    """the incident the group belongs to (a cascade names every model in it)"""
    merged_into: IncidentRef | None = None
    """reason ``merged``: the incident ``incident`` was folded into (its thread carries on there)"""
    told_before: Mapping[str, datetime] = field(default_factory=dict)
    """firing episodes this channel was already told by a warning message folded into this
    incident's group (episode id -> when): referred to, not repeated"""
    follows: str | None = None
    """the id of the first message a group folded into this one sent on this channel (the
    degradation's warning): the thread this group's messages carry on"""
    paged_again: frozenset[str] = frozenset()
    """firing episodes paged again after a hand resolution that this message is the first of
    the group to tell this channel: the title leads with them (``STILL FAILING``)"""

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "firing" if self.firing else "resolved"

    def details_url(self, episode_id: str) -> str:
        if self.reason == "test":
            # The sample violation is not stored: link to the list, which exists.
            return f"{self.public_url.rstrip('/')}/violations"
        return f"{self.public_url.rstrip('/')}/violations/{episode_id}"

    def incident_url(self) -> str | None:
        return m.incident_url(self.public_url, self.incident.id) if self.incident else None

    def merged_url(self) -> str | None:
        return m.incident_url(self.public_url, self.merged_into.id) if self.merged_into else None

    def merge_line(self) -> str | None:
        """The closing line of an incident merged away: which incident carries on, and where."""
        into = self.merged_into
        if into is None:
            return None
        was = f"Incident {self.incident.id} " if self.incident else "This incident "
        return (
            f"{was}was merged into incident {into.id} ({into.title}); its updates and resolution"
            f" follow there, nothing more is sent here: {self.merged_url()}"
        )

    @property
    def alerts(self) -> tuple[AlertView, ...]:
        return self.firing + self.resolved

    @property
    def cascade(self) -> bool:
        return self.incident is not None and self.incident.cascade

    @property
    def scope(self) -> str:
        """The models this message is about: ``ollama/llama3.1:8b`` or ``gpu-1: a, b``."""
        events = [a.event for a in self.alerts]
        if self.cascade and self.incident is not None:
            where = self.incident.host or (events[0].provider if events else "")
            return f"{where}: {', '.join(self.incident.models)}"
        models = sorted({f"{e.provider}/{e.model}" for e in events})
        if not models:
            return "LLMscope"
        hosts = sorted({e.host for e in events if e.host})
        return ", ".join(models) + (f" on {', '.join(hosts)}" if hosts else "")

    @property
    def tone(self) -> m.Tone:
        return m.tone([a.event for a in self.firing])

    @property
    def title(self) -> str:
        """The state in words: what fires, how bad, and whether it is getting better."""
        if self.reason == "test":
            return "[LLMscope] Test notification (sample data, nothing is wrong)"
        if self.merged_into is not None:
            what = f"incident {self.incident.id}" if self.incident else "incident"
            into = self.merged_into
            return f"[LLMscope] MERGED: {what} merged into incident {into.id}: {into.title}"
        by_hand = sorted({a.resolved_by for a in self.resolved if a.resolved_by})
        if not self.firing and by_hand:
            what = "cascade " if self.cascade else ""
            return f"[LLMscope] RESOLVED by {', '.join(by_hand)}: {what}{self.scope}"
        if not self.firing:
            lasted = ""
            if len(self.resolved) == 1:
                a = self.resolved[0]
                end = a.cleared.ts if a.cleared else self.created_at
                lasted = f" after {m.duration(end - a.began)}"
            what = "cascade " if self.cascade else ""
            return f"[LLMscope] RESOLVED: {what}{self.scope}{lasted}"
        events = [a.event for a in self.firing]
        lead = self.lead_event()
        tone = self.tone
        label = "IMPROVED" if tone == "improved" else m.worst(events).upper()
        if self.cascade and self.incident is not None:
            where = self.incident.host or events[0].provider
            models = self.incident.models
            head = f"Cascade on {where}: {len(models)} models degraded ({', '.join(models)})"
        elif len(events) == 1:
            head = f"{m.subject(lead)}: {m.movement(lead)}"
            outage = self.firing[0].outage
            if outage is not None and outage.recent:
                last = outage.recent[0]
                http = f", HTTP {last.http_status}" if last.http_status is not None else ""
                head += f"; last failure {last.status}{http}"
        else:
            head = f"{len(events)} violations on {self.scope}: {m.movement(lead)}"
        if self.told_before:
            head += f" (follows the message of {m.clock(min(self.told_before.values()))})"
        if self.resolved:
            # An update where most has cleared says so first, not "CRITICAL: 1 violation".
            label = f"UPDATE, still {label}"
            head += f" [{len(self.firing)} still firing, {len(self.resolved)} resolved]"
        reminder = " (reminder)" if self.reason == "repeat" else ""
        return f"[LLMscope] {label}: {self.still_failing()}{head}{reminder}"

    def still_failing(self) -> str:
        """``STILL FAILING after resolved by ana at 12:03:10 UTC: `` when this message tells a
        page again (a firing violation resolved by hand that the engine never cleared), else ""
        (the group's later messages are about something else: their own news, or a reminder)."""
        again = [
            (at, by)
            for a in self.firing
            if a.episode_id in self.paged_again
            and (at := a.repage_of_at) is not None
            and (by := a.repage_of_by)
        ]
        if not again:
            return ""
        who = ", ".join(sorted({by for _, by in again}))
        return f"STILL FAILING after resolved by {who} at {m.clock(min(at for at, _ in again))}: "

    def lead_event(self) -> ViolationEvent:
        """What the title names: the most severe firing violation this channel was not told yet
        (a critical leads, not the warning that came first), the earliest among equals."""
        fresh = [a.event for a in self.firing if a.episode_id not in self.told_before]
        events = fresh or [a.event for a in self.firing]
        rank = {sev: i for i, sev in enumerate(("critical", "warning", "info"))}
        return min(events, key=lambda e: rank.get(e.severity, len(rank)))

    def facts(self, a: AlertView) -> list[tuple[str, str]]:
        """The first lines of every message about one alert: what, since when, how sure, what
        else, where to look."""
        ev = a.event
        if a.episode_id in self.told_before and a.cleared is None:
            # Already told in full by the folded warning message: one line and the link.
            told = m.clock(self.told_before[a.episode_id])
            return [
                ("What", m.one_line(ev)),
                ("Already sent", f"{ev.severity} message of {told}; not repeated here"),
                ("Violation", self.details_url(ev.episode_id)),
            ]
        rows = [("What", m.one_line(ev))]
        began = a.began
        if a.cleared is not None:
            rows.append(
                (
                    "Lasted",
                    f"{m.duration(a.cleared.ts - began)} ({m.clock(began)} to {m.clock(a.cleared.ts)})",
                )
            )
        elif a.resolved_by and a.resolved_at is not None:
            note = f": {a.resolved_note}" if a.resolved_note else ""
            rows.append(("Resolved by", f"{a.resolved_by} at {m.clock(a.resolved_at)}{note}"))
            rows.append(("Since", f"{m.clock(began)} (not yet cleared by the engine when resolved by hand)"))
        else:
            rows.append(("Since", f"{m.clock(began)} ({m.duration(self.created_at - began)} ago)"))
            if a.repage_of_by and a.repage_of_at is not None:
                note = f" ({a.repage_of_note})" if a.repage_of_note else ""
                rows.append(
                    (
                        "Still failing",
                        f"resolved by {a.repage_of_by} at {m.clock(a.repage_of_at)}{note}, but the"
                        f" engine has not cleared it since: paged again",
                    )
                )
        rows.append(("How sure", m.how_sure(ev)))
        rows.extend(("Outage", line) for line in m.outage_lines(a.outage, self.created_at))
        incident = a.incident or self.incident
        if incident is not None:
            others = [x for x in incident.models if x != ev.model]
            also = f"; also affected: {', '.join(others)}" if others else ""
            rows.append(("Incident", f"{incident.title}{also}"))
            rows.append(("Incident link", m.incident_url(self.public_url, incident.id)))
            if incident.seen_before is not None:
                rows.append(("Seen before", m.seen_before_line(incident.seen_before)))
                rows.append(("Seen before link", m.incident_url(self.public_url, incident.seen_before.id)))
        rows.append(("Violation", self.details_url(ev.episode_id)))
        if self.reason != "test":
            rows.append(("Chart", m.chart_url(self.public_url, ev)))
        if a.acknowledged_by:
            rows.append(("Acknowledged by", a.acknowledged_by))
        return rows


@runtime_checkable
class Notifier(Protocol):
    """A channel: a pure payload builder and an I/O sender that raises DeliveryError."""

    name: str
    kind: str
    send_resolved: bool

    def build_payload(self, notification: Notification) -> Any: ...

    async def send(self, payload: Any) -> str:
        """Deliver; return the channel's answer, raise DeliveryError on failure."""
        ...


def fmt_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def metric_unit(metric: str) -> str:
    if metric.endswith("_ms"):
        return "ms"
    if metric.endswith("_percent"):
        return "%"
    if metric == "tokens_per_s":
        return "tok/s"
    return ""


def describe(event: ViolationEvent) -> str:
    """One line in words: ``ollama/llama3.1:8b on gpu-1 (prompt simple-1): latency 2.4 s, ...``."""
    return m.one_line(event)
