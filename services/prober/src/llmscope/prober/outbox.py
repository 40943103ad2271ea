"""A bounded outbox between probing and publishing: probes never wait for NATS.

Events queue here and one worker publishes them in order, retrying while NATS is away: whatever
is queued goes out together (:meth:`Publisher.publish_many`, pipelined, the acks awaited once),
and an event that finds the outbox empty waits ``linger`` seconds for others to go with it. At a
prober's usual rates (a few to a few hundred probes a second) that turns one publish, one ack and
one delivery to each consumer per event into one per burst, for every service downstream too
(issue 13: nats-server, the persister and the engine each pay per wake-up). When
the outbox is full the oldest event is dropped (counted and logged): recent telemetry matters
more than old. Re-publishing an event is safe: JetStream de-duplicates on its id. With a
:class:`~llmscope.prober.journal.Journal` the events also go to a file and a restarted prober
publishes what its predecessor had not (:meth:`Outbox.recover`, before the first put).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from llmscope.bus.publisher import PublishFailed
from llmscope.config.logs import get_logger
from llmscope.config.startup import Stopped
from llmscope.prober.journal import Journal
from llmscope.prober.metrics import ProberMetrics
from llmscope.proto.base import Event

log = get_logger("llmscope.prober.outbox")


class EventPublisher(Protocol):
    async def publish_many(
        self, events: Sequence[tuple[str, Event]], *, deadline: float | None = None
    ) -> Sequence[object]: ...


class Outbox:
    """Holds up to ``maxsize`` events; :meth:`run` publishes them until stopped."""

    def __init__(
        self,
        publisher: EventPublisher | None,
        metrics: ProberMetrics,
        *,
        maxsize: int = 10_000,
        publish_deadline: float = 5.0,
        retry_delay: float = 1.0,
        journal: Journal | None = None,
        linger: float = 0.0,
        max_batch: int = 256,
    ) -> None:
        self._publisher = publisher
        self._metrics = metrics
        self._maxsize = maxsize
        self._deadline = publish_deadline
        self._retry_delay = retry_delay
        self._linger = linger
        self._max_batch = max_batch
        self._since = 0.0
        """When the oldest event the worker has not taken yet was put (monotonic seconds)."""
        self._queue: deque[tuple[str, Event]] = deque()
        self._ready = asyncio.Event()
        self.dropped = 0
        self.published = 0
        self._journal = journal
        self.recovered = 0
        """Events read back from the journal at start (left by a previous process)."""

    async def recover(self) -> int:
        """Queue what the journal's file holds (a previous process's outbox); before any put.

        The file is read, rewritten and fsynced in a thread: never on the event loop."""
        if self._journal is not None:
            for subject, event in await asyncio.to_thread(self._journal.load):
                self.put(subject, event, journaled=True)
            self.recovered = len(self._queue)
        return self.recovered

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, subject: str, event: Event, *, journaled: bool = False) -> None:
        """Queue an event; never blocks. Drops the oldest when full."""
        if len(self._queue) >= self._maxsize:
            self._drop_oldest()
        if self._journal is not None and not journaled:
            self._journal.put(subject, event)
        if not self._queue:
            self._since = time.monotonic()
        self._queue.append((subject, event))
        self._metrics.outbox_size.set(len(self._queue))
        self._ready.set()

    def _done(self, event: Event) -> None:
        if self._journal is not None:
            self._journal.done(event.id)

    def _drop_oldest(self) -> None:
        _, event = self._queue.popleft()
        self._done(event)
        self.dropped += 1
        self._metrics.dropped.inc()
        # One line per thousand drops: an outage of NATS must not flood the log as well.
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "outbox full: dropped the oldest telemetry", dropped_total=self.dropped, size=self._maxsize
            )

    async def run(
        self, stop: asyncio.Event, connect: Callable[[], Awaitable[EventPublisher]] | None = None
    ) -> None:
        """Publish until ``stop``; ``connect`` (NATS, streams) gives the publisher, retried until it works."""
        if connect is not None:
            await self._retry(connect, stop)
        while not stop.is_set():
            if not self._queue:
                self._ready.clear()
                await _wait_either(self._ready, stop)
                continue
            wait = self._since + self._linger - time.monotonic()
            if wait > 0 and len(self._queue) < self._max_batch:
                # Short and bounded: a stop meanwhile is seen right after, and what is queued
                # then is flushed by the caller.
                await asyncio.sleep(wait)
                continue
            if not await self._publish_next():
                await _sleep_or_stop(self._retry_delay, stop)

    async def _retry(self, connect: Callable[[], Awaitable[EventPublisher]], stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                self._publisher = await connect()
                return
            except Stopped:  # connect() saw ``stop`` itself: no failure, nothing to log
                return
            except Exception as exc:
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    log.warning("NATS not ready; retrying", error=repr(exc)[:200], attempts=failures)
                await _sleep_or_stop(self._retry_delay, stop)

    async def _publish_next(self) -> bool:
        """Publish the oldest queued events, up to ``max_batch``, in one go; False if they failed."""
        if self._publisher is None:
            return False
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
        try:
            await self._publisher.publish_many(batch, deadline=self._deadline)
        except asyncio.CancelledError:
            self._queue.extendleft(reversed(batch))
            raise
        except (PublishFailed, OSError, TimeoutError) as exc:
            # Some may be stored already: sent again, their ids make JetStream keep them once.
            self._metrics.publish_failures.inc()
            self._queue.extendleft(reversed(batch))
            # Newer events filled the outbox meanwhile: the oldest (the batch's first) go.
            while len(self._queue) > self._maxsize:
                self._drop_oldest()
            log.warning(
                "publish failed; will retry",
                subject=batch[0][0],
                events=len(batch),
                waiting=len(self._queue),
                error=str(exc)[:200],
            )
            return False
        for _, event in batch:
            self._done(event)
        self.published += len(batch)
        self._metrics.published.inc(len(batch))
        self._metrics.outbox_size.set(len(self._queue))
        return True

    async def flush(self, within_s: float) -> int:
        """Publish what is left, for at most ``within_s`` seconds; returns how many remain."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + within_s
        while self._queue and loop.time() < give_up:
            if not await self._publish_next():
                break
        return len(self._queue)


async def _wait_either(a: asyncio.Event, b: asyncio.Event) -> None:
    tasks = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _sleep_or_stop(delay: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)
