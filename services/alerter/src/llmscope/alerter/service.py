"""The alerter service: consume violations, flush groups, deliver, publish incidents, analyse.

Pipeline per group flush: ``mute -> dedup`` (pure, :func:`grouping.decide`) ``-> claim`` (the
notification row, committed before any I/O) ``-> send_with_retry -> record``. Violations are
acked once recorded in Postgres (alert, group, incident: the message is then durably pending);
delivery happens off the ack path, from the groups' timers, in whichever replica claims them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from llmscope.alerter.analysis_worker import AnalysisWorker
from llmscope.alerter.dispatch import Dispatcher
from llmscope.alerter.service_base import (
    AlerterOptions as AlerterOptions,  # re-exported: callers import it from here
)
from llmscope.alerter.service_base import NotifierFactory as NotifierFactory  # re-exported
from llmscope.alerter.service_base import default_notifier_factory as default_notifier_factory  # re-exported
from llmscope.bus.consumer import ConsumerOptions, Delivery
from llmscope.bus.publisher import PublishFailed
from llmscope.config.logs import get_logger
from llmscope.config.startup import log_failure, postgres_unavailable
from llmscope.proto.repage import MAX_EPISODES
from llmscope.proto.violation import SEVERITIES, ViolationEvent
from llmscope.proto.violation_action import ViolationActionEvent

log = get_logger("llmscope.alerter")


REPAGE_TELL_RETRY_S = 5.0
"""After the API did not answer for violations paged again, the wait before it is asked again."""
PULL_EXPIRES_S = 5.0
"""How long the alerter's open pull request lasts before it is sent again (``fetch_timeout``)."""


def violation_consumer_options(**overrides: Any) -> ConsumerOptions:
    """How the alerter consumes violations: while Postgres is unreachable a violation is not
    processed and is tried again (capped backoff, for as long as the outage lasts) instead of
    being dead-lettered after ``max_deliver`` tries; undecodable or otherwise failing events still
    are.

    One pull request stays open (``standing``), expiring after :data:`PULL_EXPIRES_S`: a
    violation is delivered the moment it is stored, as before. Idle, each of the two consumers
    (violations, people's actions) costs one request per 5 s; with a ``no_wait`` pull and a long
    poll expiring every second they cost two a second each, a dozen nats-server wake-ups a
    request: most of what the idle alerter cost nats-server. The trade-off: a request lost with
    the connection (a NATS restart) is given up after its expiry and half a second, so the
    alerter resumes at most 5.5 s after NATS is back (1.5 s before); nothing is lost meanwhile,
    the violations wait in their stream."""
    return replace(
        ConsumerOptions(
            batch_size=64, transient=postgres_unavailable, standing=True, fetch_timeout=PULL_EXPIRES_S
        ),
        **overrides,
    )


def actions_durable(durable: str) -> str:
    """The durable consumer of people's actions on violations, beside the violations' own."""
    return f"{durable}-actions"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Alerter(Dispatcher, AnalysisWorker):
    """Wires the store, the channels and the loops; knows nothing of NATS but the Publisher."""

    # -- ingest: the JetStream handler ------------------------------------------------------

    async def on_violations(self, deliveries: Sequence[Delivery[ViolationEvent]]) -> None:
        """Record a batch; returning acks it (the store committed), raising naks it."""
        runtime = await self.runtime()
        events = [d.event for d in deliveries]
        await self.store.ingest(events, runtime.routes, runtime.allowed_rules)
        for ev in events:
            self.metrics.violations.labels(ev.state).inc()
        self._wake_outbox.set()

    async def on_violation_actions(self, deliveries: Sequence[Delivery[ViolationActionEvent]]) -> None:
        """Keep what people did through the API (acknowledged, resolved by hand) and apply it;
        returning acks the batch (the store committed), raising naks it."""
        await self.store.record_violation_actions([d.event for d in deliveries])

    # -- outbox: incident events ------------------------------------------------------------

    async def publish_outbox(self) -> int:
        if self._publisher is None:
            return 0
        published = 0
        for row in await self.store.pending_outbox():
            try:
                await self._publisher.publish_raw(row["subject"], bytes(row["payload"]), msg_id=row["msg_id"])
            except PublishFailed as exc:
                log.warning("incident event not published yet", subject=row["subject"], error=str(exc))
                return published
            await self.store.mark_published(row["id"])
            published += 1
        return published

    def wake_outbox(self) -> None:
        """Publish pending incident events now rather than at the next tick."""
        self._wake_outbox.set()

    # -- retention --------------------------------------------------------------------------

    async def sweep_once(self) -> dict[str, int] | None:
        """Delete finished records past retention (see retention.py); rows deleted per table."""
        cutoffs = self._opts.retention.cutoffs(self.store.clock())
        if cutoffs is None:
            return None
        counts = await self.store.sweep(cutoffs)
        if counts is None:
            log.info("retention sweep skipped: another replica is sweeping")
        else:
            log.info(
                "retention sweep done",
                records_before=cutoffs.records.isoformat(),
                alerts_before=cutoffs.replay.isoformat(),
                **{table.removeprefix("alerter_"): n for table, n in counts.items()},
            )
        return counts

    # -- metrics ----------------------------------------------------------------------------

    async def sample_gauges(self) -> None:
        """Set the incident gauges from Postgres (every state and severity, 0 when none)."""
        counts = await self.store.unresolved_incidents()
        for state in ("open", "acknowledged"):
            for severity in SEVERITIES:
                self.metrics.incidents.labels(state, severity).set(counts.get((state, severity), 0))

    # -- loops ------------------------------------------------------------------------------

    async def run_loops(self, stop: asyncio.Event) -> None:
        """Dispatcher, outbox publisher, analysis worker and retention sweep until ``stop``."""
        loops = [
            self._every(stop, self._opts.tick_s, self.dispatch_once, "dispatch"),
            self._outbox_loop(stop),
            self._every(stop, self._opts.tick_s, self._analyze_all, "analysis"),
        ]
        loops.append(self._every(stop, self._opts.gauges_s, self.sample_gauges, "incident gauges"))
        loops.append(self._every(stop, self._opts.tick_s, self.resend_once, "re-send"))
        loops.append(self._every(stop, self._opts.tick_s, self._tickets_round, "tickets"))
        loops.append(
            self._every(stop, self._opts.tick_s, self.tell_api_repages, "telling the API of pages again")
        )
        if self._opts.retention.enabled:
            # A failed sweep is logged by _every and tried again a period later.
            loops.append(self._every(stop, self._opts.retention.every_s, self.sweep_once, "retention"))
        self.ready = True
        try:
            await asyncio.gather(*loops)
        finally:
            self.ready = False

    async def tell_api_repages(self) -> int:
        """Tell the API of the violations paged again it has not heard of (``repages_untold``),
        in an incident or not: one outside any incident has no incident.v1 event to reopen its
        copy there. Told until an API answers (a failure waits ``REPAGE_TELL_RETRY_S``); how many
        were told. A repeat (another replica, a restart before the record) reopens nothing twice."""
        if time.monotonic() < self._repage_tell_after:
            return 0
        told = 0
        while episodes := await self.store.repages_untold():
            if not await self.api.tell_repaged(episodes):
                self._repage_tell_after = time.monotonic() + REPAGE_TELL_RETRY_S
                return told
            told += await self.store.repages_told(episodes)
            if len(episodes) < MAX_EPISODES:
                break
        return told

    async def _tickets_round(self) -> None:
        if self.tickets is not None:
            await self.tickets.run_all()

    async def _analyze_all(self) -> None:
        while await self.analyze_once():
            pass

    async def _outbox_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.publish_outbox()
            except Exception:
                log_failure(log, "outbox publishing failed")
            self._wake_outbox.clear()
            waiter = asyncio.ensure_future(self._wake_outbox.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait(
                {waiter, stopper}, timeout=max(self._opts.tick_s, 1.0), return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            stopper.cancel()

    @staticmethod
    async def _every(stop: asyncio.Event, period: float, fn: Callable[[], object], what: str) -> None:
        while not stop.is_set():
            try:
                res = fn()
                if asyncio.iscoroutine(res):
                    await res
            except asyncio.CancelledError:
                raise
            except Exception:
                log_failure(log, f"{what} loop iteration failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period)
