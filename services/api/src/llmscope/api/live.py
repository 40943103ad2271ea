"""Feeds the dashboard's live updates (:class:`llmscope.web.live.Broadcaster`) from the bus.

A plain core-NATS subscription to the violation and incident subjects, not a durable consumer:
every API process pushes to its own open tabs, and a tab that was closed needs no replay (it
re-reads its page when it opens). The JetStream-published events reach core subscribers too.
What only the process running the persister knows (a batch of probes committed, a traffic
chart's record written) it publishes as a :class:`~llmscope.proto.live.LiveNotice` on core
NATS (:class:`LiveNotices`), which every API process, itself included, hears the same way; the
process may be an API process or a standalone persister.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Sequence

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llmscope.bus.connection import subscriptions_in_place
from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.proto.charts import is_traffic_chart
from llmscope.proto.codec import DecodeError, decode
from llmscope.proto.incident import IncidentEvent
from llmscope.proto.live import POINTS_PER_NOTICE, LiveNotice, StoredPoint
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent
from llmscope.web.live import Broadcaster, LiveEvent, point_event, traffic_event

log = get_logger("llmscope.api.live")
_notice_encoder = msgspec.json.Encoder()
_notice_decoder = msgspec.json.Decoder(LiveNotice)


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


def stored_notices(kind: str, events: Sequence[object]) -> list[LiveNotice]:
    """What a committed persister write tells the other API processes: ``stored`` notices naming
    each model with new probes and its latest probe (the chart re-reads them from Postgres, so
    only after they are stored). One notice per batch, not per model: with many models each
    batch of a trickle names a model or two per event, and a message per model was two NATS
    messages per probe event (published, delivered back)."""
    if kind != "telemetry":
        return []
    latest: dict[tuple[str, str], TelemetryEvent] = {}
    for ev in events:
        if isinstance(ev, TelemetryEvent):
            key = (ev.provider, ev.model)
            if key not in latest or ev.ts > latest[key].ts:
                latest[key] = ev
    points = [StoredPoint(p, m, ev.ts) for (p, m), ev in latest.items()]
    return [
        LiveNotice(kind="stored", points=points[i : i + POINTS_PER_NOTICE])
        for i in range(0, len(points), POINTS_PER_NOTICE)
    ]


def notice_events(notice: LiveNotice) -> list[LiveEvent]:
    """What a notice tells the open tabs: ``point-<key>`` for stored probes of one model (the
    chart panel of that model re-reads); for a traffic chart's new record (a minute closed, or a
    re-baseline), its page re-reads on ``traffic-<key>`` and the traffic list on ``traffic``. A
    probe chart's record changes with every point, and its panel listens to stored points."""
    match notice.kind:
        case "stored" if notice.points:
            return [
                LiveEvent(
                    point_event(p.provider, p.model),
                    {"provider": p.provider, "model": p.model, "ts": p.ts.isoformat()},
                )
                for p in notice.points
            ]
        case "stored" if notice.ts is not None:  # from an API process of the version before
            data = {"provider": notice.provider, "model": notice.model, "ts": notice.ts.isoformat()}
            return [LiveEvent(point_event(notice.provider, notice.model), data)]
        case "chart" if is_traffic_chart(notice.chart):
            what = {"chart": notice.chart}
            return [LiveEvent(traffic_event(notice.chart), what), LiveEvent("traffic", what)]
    return []


STORED_NOTICE_GAP_S = 0.1
"""Least time between two ``stored`` notices of one process. A trickle's batch is told at once;
batches committed within the gap after it are told together when it ends (each model's latest
probe). At 100 probe events/s a notice per one-event batch was a publish, its delivery back to
every API process, a decode and a task each: about a tenth of the API process's CPU per event."""


class LiveNotices:
    """Publishes what the persister stored or saw as :class:`~llmscope.proto.live.LiveNotice` on
    core NATS, for the open tabs of every API process: the API process running the persister
    (through its :class:`LiveFeed`) and the standalone persister (``python -m
    llmscope.api.persister``, beside API processes with ``LLMSCOPE_PERSISTER=false``) alike."""

    def __init__(
        self, on_lost: Callable[[], None] | None = None, stored_gap_s: float = STORED_NOTICE_GAP_S
    ) -> None:
        # What to do when a notice could not be published: an API process ends its own tabs'
        # streams (they reconnect and re-read); a standalone persister has no tabs of its own.
        self._on_lost = on_lost
        self._nc: NATS | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._gap_s = stored_gap_s
        # Probes committed since the last stored notice, each model's latest, told when the gap ends.
        self._held: dict[tuple[str, str], TelemetryEvent] = {}
        self._last_told = -math.inf
        self._flush: asyncio.TimerHandle | None = None

    def attach(self, nc: NATS | None) -> None:
        self._nc = nc

    def _send(self, notices: list[LiveNotice]) -> None:
        # Every API process hears it, the publishing one too: one path, so no tab sees an event twice.
        nc = self._nc
        if nc is None or not notices:
            return
        task = asyncio.get_running_loop().create_task(self._publish(nc, notices))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, nc: NATS, notices: list[LiveNotice]) -> None:
        try:
            for notice in notices:
                await nc.publish(subjects.api_live(), _notice_encoder.encode(notice))
        except Exception as exc:
            # A lost notice delays a chart until the model's next one (each makes it re-read
            # Postgres); an API process also ends its tabs' streams, which re-read at once.
            log.debug("live notice not published", error=repr(exc))
            if self._on_lost is not None:
                self._on_lost()

    def on_stored(self, kind: str, events: Sequence[object]) -> None:
        """The persister's hook (:class:`llmscope.api.persister.Persister`'s ``on_stored``)."""
        if kind != "telemetry" or self._nc is None:
            return
        held = self._held
        for ev in events:
            if isinstance(ev, TelemetryEvent):
                key = (ev.provider, ev.model)
                seen = held.get(key)
                if seen is None or ev.ts > seen.ts:
                    held[key] = ev
        if self._flush is not None or not held:
            return  # told when the gap ends
        loop = asyncio.get_running_loop()
        wait = self._last_told + self._gap_s - loop.time()
        if wait <= 0:
            self._tell_held()
        else:
            self._flush = loop.call_later(wait, self._tell_held)

    def _tell_held(self) -> None:
        self._flush = None
        held, self._held = self._held, {}
        self._last_told = asyncio.get_running_loop().time()
        self._send(stored_notices("telemetry", list(held.values())))

    def on_chart(self, key: str) -> None:
        """The chart bucket watch's hook (:class:`llmscope.api.baseline_history.BaselineHistory`)."""
        if is_traffic_chart(key):
            self._send([LiveNotice(kind="chart", chart=key)])

    async def stop(self) -> None:
        """Detach, letting the notices in flight go out first (before the connection drains)."""
        if self._flush is not None:
            self._flush.cancel()
            self._tell_held()
        self._nc = None
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=2)


class LiveFeed:
    """Subscribes the process's NATS connection and republishes to the broadcaster; in the
    process running the persister, also publishes what it stored for every API process."""

    def __init__(self, broadcaster: Broadcaster) -> None:
        self.broadcaster = broadcaster
        self.notices = LiveNotices(on_lost=broadcaster.drop_all)
        self._subs: list[Subscription] = []
        self._watch: asyncio.Task[None] | None = None

    async def start(self, nc: NATS) -> None:
        self.broadcaster.open()
        self.notices.attach(nc)
        for subject in (subjects.VIOLATIONS_ALL, subjects.INCIDENTS_ALL):
            self._subs.append(await nc.subscribe(subject, cb=self._on_message))
        self._subs.append(await nc.subscribe(subjects.api_live(), cb=self._on_notice))
        await subscriptions_in_place(nc)  # subscribed on the server before the first tab can connect
        self._watch = asyncio.get_running_loop().create_task(self._watch_reconnects(nc))

    async def _watch_reconnects(self, nc: NATS, every_s: float = 1.0) -> None:
        """After a reconnect the process may have missed events (core NATS keeps none for it):
        every open tab's stream ends, so each reconnects and re-reads (tabs with their stream up
        do not poll)."""
        seen = nc.stats["reconnects"]
        while True:
            await asyncio.sleep(every_s)
            if nc.stats["reconnects"] != seen:
                seen = nc.stats["reconnects"]
                log.info("live feed reconnected to NATS: open tabs re-read", tabs=self.broadcaster.listeners)
                self.broadcaster.drop_all()

    async def _on_message(self, msg: Msg) -> None:
        if not self.broadcaster.listeners:
            return  # no tab open here: nothing to decode (a tab opened later reads its page first)
        try:
            event = decode(msg.data)
        except DecodeError as exc:
            log.debug("live feed skips an undecodable message", subject=msg.subject, error=str(exc))
            return
        for live in live_events(event):
            self.broadcaster.publish(live)

    async def _on_notice(self, msg: Msg) -> None:
        if not self.broadcaster.listeners:
            # No tab open here: a notice of 200 models was 200 events built for nobody, ten
            # times a second (a twentieth of this process's CPU per probe event at 1,000/s).
            return
        try:
            notice = _notice_decoder.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.debug("live feed skips an undecodable notice", error=str(exc))
            return
        for live in notice_events(notice):
            self.broadcaster.publish(live)

    def on_stored(self, kind: str, events: Sequence[object]) -> None:
        self.notices.on_stored(kind, events)

    def on_chart(self, key: str) -> None:
        self.notices.on_chart(key)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        subs, self._subs = self._subs, []
        await self.notices.stop()
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may be closing already
                log.debug("live feed unsubscribe failed", error=repr(exc))
        self.broadcaster.close_all()
