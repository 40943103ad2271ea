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
from collections.abc import Callable, Sequence
from datetime import datetime

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

NOTICE_EVERY_S = 0.25
"""``stored`` notices go at most this often (s): a batch committed sooner after the last notice
waits, merged with the batches after it, for the next. At a trickle every batch is one probe
event, so a notice per batch was a NATS message published and one delivered back per event (two
of the seven or so messages nats-server handled per probe event at 100/s); the tabs re-read a
chart on a notice, and a quarter of a second later is as good (they throttle re-reads to 2 s)."""


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
    latest: dict[tuple[str, str], datetime] = {}
    _merge_latest(latest, kind, events)
    return _point_notices(latest)


def _merge_latest(latest: dict[tuple[str, str], datetime], kind: str, events: Sequence[object]) -> None:
    """Fold each model's latest stored probe of ``events`` into ``latest``."""
    if kind != "telemetry":
        return
    for ev in events:
        if isinstance(ev, TelemetryEvent):
            key = (ev.provider, ev.model)
            seen = latest.get(key)
            if seen is None or ev.ts > seen:
                latest[key] = ev.ts


def _point_notices(latest: dict[tuple[str, str], datetime]) -> list[LiveNotice]:
    points = [StoredPoint(p, m, ts) for (p, m), ts in latest.items()]
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


class LiveNotices:
    """Publishes what the persister stored or saw as :class:`~llmscope.proto.live.LiveNotice` on
    core NATS, for the open tabs of every API process: the API process running the persister
    (through its :class:`LiveFeed`) and the standalone persister (``python -m
    llmscope.api.persister``, beside API processes with ``LLMSCOPE_PERSISTER=false``) alike.

    ``stored`` notices go at most every ``every_s`` (:data:`NOTICE_EVERY_S`): the first batch
    after a quiet spell is told at once, the batches committed within ``every_s`` of a notice
    in one notice at its end, naming each model's latest probe."""

    def __init__(self, on_lost: Callable[[], None] | None = None, every_s: float = NOTICE_EVERY_S) -> None:
        # What to do when a notice could not be published: an API process ends its own tabs'
        # streams (they reconnect and re-read); a standalone persister has no tabs of its own.
        self._on_lost = on_lost
        self._nc: NATS | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._every_s = every_s
        self._latest: dict[tuple[str, str], datetime] = {}  # stored, not told yet
        self._sent_at = float("-inf")
        self._due: asyncio.TimerHandle | None = None

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
        if self._nc is None:
            return
        _merge_latest(self._latest, kind, events)
        if not self._latest or self._due is not None:
            return  # nothing to tell, or told with the notice already due
        loop = asyncio.get_running_loop()
        wait = self._sent_at + self._every_s - loop.time()
        if wait <= 0:
            self._flush()
        else:
            self._due = loop.call_later(wait, self._flush)

    def _flush(self) -> None:
        self._due = None
        latest, self._latest = self._latest, {}
        self._sent_at = asyncio.get_running_loop().time()
        self._send(_point_notices(latest))

    def on_chart(self, key: str) -> None:
        """The chart bucket watch's hook (:class:`llmscope.api.baseline_history.BaselineHistory`)."""
        if is_traffic_chart(key):
            self._send([LiveNotice(kind="chart", chart=key)])

    async def stop(self) -> None:
        """Detach, letting the notices in flight go out first (before the connection drains)."""
        if self._due is not None:
            self._due.cancel()
            self._flush()  # what was stored and not told yet
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
        try:
            event = decode(msg.data)
        except DecodeError as exc:
            log.debug("live feed skips an undecodable message", subject=msg.subject, error=str(exc))
            return
        for live in live_events(event):
            self.broadcaster.publish(live)

    async def _on_notice(self, msg: Msg) -> None:
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
