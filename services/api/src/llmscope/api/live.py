"""Feeds the dashboard's live updates (:class:`llmscope.web.live.Broadcaster`) from the bus.

A plain core-NATS subscription to the violation and incident subjects, not a durable consumer:
every API process pushes to its own open tabs, and a tab that was closed needs no replay (it
re-reads its page when it opens). The JetStream-published events reach core subscribers too.
"""

from __future__ import annotations

from collections.abc import Sequence

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llmscope.bus.connection import subscriptions_in_place
from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.proto.charts import is_traffic_chart
from llmscope.proto.codec import DecodeError, decode
from llmscope.proto.incident import IncidentEvent
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.web.live import Broadcaster, LiveEvent, point_event, traffic_event

log = get_logger("llmscope.api.live")


def live_events(event: object) -> list[LiveEvent]:
    """What one bus event tells the open tabs; nothing for events they do not show."""
    match event:
        case ViolationEvent():
            what: dict[str, object] = {
                "id": event.id,
                "episode_id": event.episode_id,
                "state": event.state,
                "provider": event.provider,
                "model": event.model,
                "rule": event.rule,
                "severity": event.severity,
                "ts": event.ts.isoformat(),
            }
            return [LiveEvent(f"violation-{event.severity}", what), LiveEvent("status", what)]
        case IncidentEvent():
            what = {
                "id": event.incident_id,
                "change": event.change,
                "state": event.state,
                "severity": event.severity,
                "provider": event.provider,
                "models": list(event.models),
                "title": event.title,
            }
            return [LiveEvent("incident", what), LiveEvent("status", what)]
    return []


def stored_events(kind: str, events: Sequence[object]) -> list[LiveEvent]:
    """What a committed persister write tells the open tabs: one ``point-<key>`` event per model
    with new probes (the chart re-reads them from Postgres, so only after they are stored)."""
    if kind != "telemetry":
        return []
    latest: dict[tuple[str, str], TelemetryEvent] = {}
    for ev in events:
        if isinstance(ev, TelemetryEvent):
            key = (ev.provider, ev.model)
            if key not in latest or ev.ts > latest[key].ts:
                latest[key] = ev
    return [
        LiveEvent(point_event(p, m), {"provider": p, "model": m, "ts": ev.ts.isoformat()})
        for (p, m), ev in latest.items()
    ]


def chart_events(key: str) -> list[LiveEvent]:
    """What a chart record written by the engine tells the open tabs: a traffic chart's page and
    the traffic list re-read (its record changes when a minute closes or on a re-baseline); a
    probe chart's record changes with every point, and its panel listens to stored points."""
    if not is_traffic_chart(key):
        return []
    return [LiveEvent(traffic_event(key), {"chart": key}), LiveEvent("traffic", {"chart": key})]


class LiveFeed:
    """Subscribes the process's NATS connection and republishes to the broadcaster."""

    def __init__(self, broadcaster: Broadcaster) -> None:
        self.broadcaster = broadcaster
        self._subs: list[Subscription] = []

    async def start(self, nc: NATS) -> None:
        self.broadcaster.open()
        for subject in (subjects.VIOLATIONS_ALL, subjects.INCIDENTS_ALL):
            self._subs.append(await nc.subscribe(subject, cb=self._on_message))
        await subscriptions_in_place(nc)  # subscribed on the server before the first tab can connect

    async def _on_message(self, msg: Msg) -> None:
        try:
            event = decode(msg.data)
        except DecodeError as exc:
            log.debug("live feed skips an undecodable message", subject=msg.subject, error=str(exc))
            return
        for live in live_events(event):
            self.broadcaster.publish(live)

    def on_stored(self, kind: str, events: Sequence[object]) -> None:
        """The persister's hook (:class:`llmscope.api.persister.Persister`'s ``on_stored``)."""
        for live in stored_events(kind, events):
            self.broadcaster.publish(live)

    def on_chart(self, key: str) -> None:
        """The chart bucket watch's hook (:class:`llmscope.api.baseline_history.BaselineHistory`)."""
        for live in chart_events(key):
            self.broadcaster.publish(live)

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may be closing already
                log.debug("live feed unsubscribe failed", error=repr(exc))
        self.broadcaster.close_all()
