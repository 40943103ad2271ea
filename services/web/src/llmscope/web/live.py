"""Live updates for open dashboard tabs: server-sent events instead of every tab polling whole
fragments every few seconds.

One :class:`Broadcaster` per process holds a small queue per open tab; the API feeds it from
the bus (:mod:`llmscope.api.live`) with one :class:`LiveEvent` per violation or incident change.
``GET /events`` streams them to a tab as ``text/event-stream``; pages listen with the htmx SSE
extension (``hx-trigger="sse:violation-critical delay:1s"``: a burst becomes one refresh) and
keep a slow poll as the fallback for a tab whose stream is down.

Event names: ``violation-<severity>`` (opened or cleared), ``incident`` (any change),
``status`` (either: the overview and the status page read both), ``point-<key>`` (new probes
of one model are stored: :func:`point_event`; the control chart of that model re-reads itself),
``traffic-<key>`` (the engine wrote one traffic chart's record, a minute closed or it was
re-baselined: :func:`traffic_event`; that chart's page re-reads it) and ``traffic`` (any traffic
chart's record: the list of traffic charts re-reads).
The data is a small JSON object naming what changed; the pages re-read the fragment rather
than trust a pushed copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.params import Depends
from fastapi.responses import StreamingResponse

# A tab that falls this far behind (a stalled connection) is dropped; its EventSource reconnects
# and the page's fallback poll covers what it missed. A slow reader never holds the others back.
QUEUE_SIZE = 256
HEARTBEAT_S = 15.0
# Tells EventSource how long to wait before reconnecting after the stream ends.
RETRY_MS = 3000


def point_event(provider: str, model: str) -> str:
    """The event name for new stored probes of one model: a tab listens only to its chart's
    model. Hashed: model names hold characters (spaces, commas, colons) that an ``hx-trigger``
    would split on."""
    digest = hashlib.sha256(f"{provider}\0{model}".encode()).hexdigest()[:16]
    return f"point-{digest}"


def chart_pace_s(bucket_s: int) -> int:
    """The least time between two re-reads of a control chart on its model's stored probes: 2 s
    for raw probes, a quarter bucket for a long window (its last bucket moves a little with
    each probe: a 24 h chart of 4-minute buckets re-reads once a minute, not every 2 s)."""
    return max(2, bucket_s // 4)


def traffic_event(chart_key: str) -> str:
    """The event name for a new record of one traffic chart (hashed like :func:`point_event`)."""
    return f"traffic-{hashlib.sha256(chart_key.encode()).hexdigest()[:16]}"


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One server-sent event: its name (the ``event:`` line) and a JSON-able payload."""

    name: str
    data: dict[str, Any]

    def frame(self) -> bytes:
        payload = json.dumps(self.data, separators=(",", ":"), default=str)
        return f"event: {self.name}\ndata: {payload}\n\n".encode()


class Broadcaster:
    """Fans events out to every subscribed tab; never blocks the publisher."""

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self._queues: set[asyncio.Queue[LiveEvent | None]] = set()
        self._queue_size = queue_size
        self._closed = False
        self.dropped = 0

    def open(self) -> None:
        """Accept streams again (the runtime started, or restarted, its bus connection)."""
        self._closed = False

    @property
    def listeners(self) -> int:
        return len(self._queues)

    def publish(self, event: LiveEvent) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # Ends that tab's stream (None below); it reconnects and re-reads its page.
                self._queues.discard(queue)
                self.dropped += 1
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    def drop_all(self) -> None:
        """End every open stream, accepting new ones: each tab reconnects and re-reads what it
        shows (``static/live.js``: ``live-resumed``). For events the process may have missed
        (its bus connection came back): a tab with its stream up does not poll."""
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    queue.get_nowait()  # what is queued is re-read anyway
            queue.put_nowait(None)
        self._queues.clear()

    def close_all(self) -> None:
        """End every stream (shutdown): a stream never outlives the process's bus connection."""
        self._closed = True
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._queues.clear()

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[LiveEvent | None]]:
        queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue(self._queue_size)
        if self._closed:
            queue.put_nowait(None)  # shutting down: a stream opened now ends at once
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)


async def stream(
    feed: Broadcaster,
    still_allowed: Callable[[], Awaitable[bool]],
    heartbeat_s: float = HEARTBEAT_S,
) -> AsyncIterator[bytes]:
    """The bytes of one tab's stream: a retry hint, then events and heartbeats until the feed
    drops the tab or its session ends (checked at every heartbeat: a revoked or expired session
    stops receiving)."""
    with feed.subscribe() as queue:
        yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), heartbeat_s)
            except TimeoutError:
                if not await still_allowed():
                    return
                yield b": heartbeat\n\n"
                continue
            if event is None:
                return
            yield event.frame()


def add_live_routes(
    router: APIRouter, feed: Broadcaster, session: Depends, check: Callable[[Request], Awaitable[bool]]
) -> None:
    """Register ``GET /events`` behind the session dependency."""

    @router.get("/events", dependencies=[session])
    async def events(request: Request) -> StreamingResponse:
        return StreamingResponse(
            stream(feed, lambda: check(request)),
            media_type="text/event-stream",
            # No proxy buffering (nginx honours X-Accel-Buffering): events must arrive as sent.
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
