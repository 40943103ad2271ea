"""The Notifier protocol and the message every channel renders.

A channel keeps a pure ``build_payload(notification)`` apart from the I/O ``send(payload)``, so
payloads are tested without a network and ``send`` is tested against real local servers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

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


@dataclass(frozen=True, slots=True)
class AlertView:
    """A violation as a message shows it."""

    event: ViolationEvent
    cleared: ViolationEvent | None = None
    acknowledged_by: str | None = None
    context: tuple[ContextPoint, ...] = ()

    @property
    def episode_id(self) -> str:
        return self.event.episode_id

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

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "firing" if self.firing else "resolved"

    def details_url(self, episode_id: str) -> str:
        return f"{self.public_url.rstrip('/')}/violations/{episode_id}"

    @property
    def scope(self) -> str:
        labels = {k: v for k, v in self.group_labels.items() if v}
        return "/".join(labels.values()) or self.group_key or "LLMscope"

    @property
    def title(self) -> str:
        if self.reason == "test":
            return "[LLMscope] Test notification"
        if not self.firing:
            return f"[LLMscope] RESOLVED: {len(self.resolved)} violation(s) on {self.scope}"
        rules = sorted({a.event.rule for a in self.firing})
        reminder = " (reminder)" if self.reason == "repeat" else ""
        return (
            f"[LLMscope] {self.firing[0].event.severity.upper()}: {len(self.firing)} violation(s) "
            f"on {self.scope} ({', '.join(rules)}){reminder}"
        )


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
    """One line: ``R1 Beyond limits on latency_ms: 2,480.0 ms (+4.2 sigma)``."""
    unit = metric_unit(event.metric)
    name = f" {event.rule_name}" if event.rule_name else ""
    return (
        f"{event.rule}{name} on {event.metric}: {fmt_value(event.value, unit)} "
        f"({event.deviation_sigma:+.1f} sigma) [{event.provider}/{event.model}]"
    )
