"""The alerter's deliveries: take over dead claims, flush due groups, deliver each claimed
notification (send_with_retry -> record) under a lease kept by a heartbeat; re-send to receivers
that expire alerts. A part of ``Alerter`` (service.py), on ``service_base.AlerterBase``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time

from llmscope.alerter.config import RuntimeConfig
from llmscope.alerter.grouping import ChannelView, paged_again_since
from llmscope.alerter.messages import IncidentRef
from llmscope.alerter.model import Alert
from llmscope.alerter.notifiers.base import AlertView, Notification
from llmscope.alerter.retry import Attempt, DeliveryError, Outcome, send_with_retry
from llmscope.alerter.service_base import AlerterBase
from llmscope.alerter.store import Claim
from llmscope.config.logs import BoundLogger, get_logger
from llmscope.config.startup import log_failure

log = get_logger("llmscope.alerter")


class Dispatcher(AlerterBase):
    """Claims, deliveries and re-sends of notifications."""

    # -- dispatch ---------------------------------------------------------------------------

    async def dispatch_once(self) -> list[asyncio.Task[None]]:
        """Take over dead claims, flush due groups; start a delivery task per claimed message."""
        runtime = await self.runtime()
        views = {
            name: ChannelView(name, spec.send_resolved, spec.kind)
            for name, spec in runtime.channels.items()
            if spec.enabled
        }
        # Merges first: a held incident whose point became sustained is folded into the host's
        # cascade before its group's first flush could page on its own.
        try:
            if await self.store.merge_cascades(runtime.routes):
                self._wake_outbox.set()
        except Exception:
            # Deliveries go on; the next tick tries the merge again.
            log_failure(log, "incident merge pass failed")
        try:
            await self.store.sync_hand_resolutions()
        except Exception:
            log_failure(log, "reading hand resolutions failed")
        if self._opts.repage_after_resolve_s > 0:
            try:
                await self.store.repage_hand_resolved(self._opts.repage_after_resolve_s)
            except Exception:
                # Nothing is lost: the next tick finds them still due.
                log_failure(log, "paging again violations resolved by hand failed")
        # The first pass takes back at once what a dead predecessor of the same instance name held.
        claims = await self.store.reclaim_expired(skip=frozenset(self._live), own=not self._started)
        self._started = True
        claims += await self.store.claim_due(runtime.routes, views, runtime.silences)
        started = []
        for claim in claims:
            task = asyncio.create_task(self._deliver_bounded(claim, runtime), name=f"deliver {claim.id}")
            self._tasks.add(task)
            self._live.add(claim.id)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(functools.partial(self._forget, claim.id))
            started.append(task)
        return started

    def _forget(self, notification_id: str, _: asyncio.Task[None]) -> None:
        self._live.discard(notification_id)

    async def _deliver_bounded(self, claim: Claim, runtime: RuntimeConfig) -> None:
        async with self._sem:
            try:
                await self.deliver(claim, runtime)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The claim stays 'sending'; its lease runs out and a replica tries again.
                log.exception("delivery crashed", notification=claim.id)

    async def _follows(self, claim: Claim) -> str | None:
        """The folded warning's first message the group's emails reply under; only mail threads
        by the messages it refers to (Slack's thread is copied when the group folds)."""
        if claim.channel_kind != "email":
            return None
        return await self.store.folded_thread(claim.group_id, claim.channel)

    async def notification_for(self, claim: Claim, runtime: RuntimeConfig | None = None) -> Notification:
        if claim.merged_into:
            absorbed = claim.group_labels.get("incident", "")
            refs = await self.store.incident_refs({absorbed, claim.merged_into})
            was = refs.get(absorbed) or IncidentRef(absorbed, f"incident {absorbed}")
            return Notification(
                id=claim.id,
                created_at=claim.created_at,
                reason="merged",
                route=claim.route,
                group_key=claim.group_key,
                channel=claim.channel,
                group_labels=claim.group_labels,
                public_url=(runtime.public_url if runtime else None) or self._opts.public_url,
                lead_episode_id=claim.lead_episode_id,
                incident=was,
                # An Alertmanager's: the alerts it holds under the absorbed incident's labels (their
                # episodes now belong to the survivor), to be told resolved.
                resolved=tuple(AlertView(a.event, a.cleared, incident=was) for a in claim.resolved),
                merged_into=refs.get(claim.merged_into)
                or IncidentRef(claim.merged_into, f"incident {claim.merged_into}"),
                follows=await self._follows(claim),
            )
        events = [a.event for a in (*claim.firing, *claim.resolved)]
        context = await self.api.context_for(events)
        outages = await self.api.outages_for([*claim.firing, *claim.resolved], claim.created_at)
        incidents = await self.store.incidents_for([e.episode_id for e in events])
        lead = incidents.get(claim.lead_episode_id) or next(
            (incidents[e.episode_id] for e in events if e.episode_id in incidents), None
        )

        def view(a: Alert) -> AlertView:
            return AlertView(
                a.event,
                a.cleared,
                a.acknowledged_by,
                context.get(a.episode_id, ()),
                outage=outages.get(a.episode_id),
                incident=incidents.get(a.episode_id),
                resolved_by=a.resolved_by if a.cleared is None else None,
                resolved_at=a.resolved_at if a.cleared is None else None,
                resolved_note=a.resolved_note if a.cleared is None else None,
                repage_of_by=a.repage_of_by if a.cleared is None else None,
                repage_of_at=a.repage_of_at if a.cleared is None else None,
                repage_of_note=a.repage_of_note if a.cleared is None else None,
            )

        return Notification(
            id=claim.id,
            created_at=claim.created_at,
            reason=claim.reason,  # type: ignore[arg-type]
            route=claim.route,
            group_key=claim.group_key,
            channel=claim.channel,
            firing=tuple(view(a) for a in claim.firing),
            resolved=tuple(view(a) for a in claim.resolved),
            group_labels=claim.group_labels,
            public_url=(runtime.public_url if runtime else None) or self._opts.public_url,
            lead_episode_id=claim.lead_episode_id,
            incident=lead,
            # An Alertmanager is sent every alert in full each time (it de-duplicates by labels).
            told_before={}
            if claim.channel_kind == "alertmanager"
            else await self.store.told_before(claim.group_id, claim.channel, claim.id),
            follows=await self._follows(claim),
            # The title says STILL FAILING only in the message that tells the page again: not in
            # the group's later ones, about something else (what the channel was told before).
            paged_again=paged_again_since(
                claim.firing, await self.store.previous_message_at(claim.group_id, claim.channel, claim.id)
            ),
        )

    async def deliver(self, claim: Claim, runtime: RuntimeConfig) -> Outcome:
        """send_with_retry -> record, for one claimed notification."""
        bound = log.bind(
            notification=claim.id, channel=claim.channel, group=claim.group_key, reason=claim.reason
        )
        if claim.channel not in runtime.channels:
            outcome = Outcome(
                "failed", (Attempt(1, self.store.clock(), False, "channel no longer configured"),)
            )
            await self.store.fail_unbuildable(claim.id, claim.generation, "channel no longer configured")
            self.metrics.notifications.labels(claim.channel, "failed").inc()
            return outcome
        notifier = self._factory(claim.channel, runtime, self._session)
        notification = await self.notification_for(claim, runtime)
        try:
            payload = notifier.build_payload(notification)
        except DeliveryError as exc:
            await self.store.fail_unbuildable(claim.id, claim.generation, str(exc))
            bound.error("cannot build the message", error=str(exc))
            self.metrics.notifications.labels(claim.channel, "failed").inc()
            return Outcome("failed", (Attempt(1, self.store.clock(), False, str(exc)),))

        # The lease is renewed on a heartbeat for the whole delivery, attempts and backoff sleeps
        # alike; once it is lost (taken over), no further attempt starts and no sleep runs on.
        lost = asyncio.Event()

        in_flight: int | None = None  # the attempt row written before the send

        async def on_attempt(attempt: Attempt) -> None:
            self.metrics.attempts.labels(claim.channel, str(attempt.ok).lower()).inc()
            if not await self.store.record_attempt(claim.id, claim.generation, attempt, number=in_flight):
                lost.set()
            if not attempt.ok:
                bound.warning("delivery attempt failed", attempt=attempt.number, error=attempt.detail[:200])

        async def send() -> str:
            started = time.perf_counter()
            try:
                return await notifier.send(payload)
            finally:
                self.metrics.delivery_seconds.labels(claim.channel).observe(time.perf_counter() - started)

        async def before_attempt() -> bool:
            nonlocal in_flight
            if lost.is_set() or not await self.store.renew(claim.id, claim.generation):
                return False
            in_flight = await self.store.begin_attempt(claim.id, claim.generation)
            return in_flight is not None

        async def sleep(delay: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), delay)

        heartbeat = asyncio.create_task(self._heartbeat(claim, lost, bound), name=f"lease {claim.id}")
        try:
            outcome = await send_with_retry(
                send,
                policy=self._opts.retry,
                rng=self._rng,
                now=self.store.clock,
                sleep=sleep,
                on_attempt=on_attempt,
                before_attempt=before_attempt,
            )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        if lost.is_set() or not await self.store.finish(claim.id, claim.generation, outcome):
            bound.warning("claim taken over during delivery; its holder records it", status=outcome.status)
            return outcome
        self.metrics.notifications.labels(claim.channel, outcome.status).inc()
        bound.info("notification finished", status=outcome.status, attempts=len(outcome.attempts))
        return outcome

    async def _heartbeat(self, claim: Claim, lost: asyncio.Event, bound: BoundLogger) -> None:
        """Renew the claim's lease every third of it until cancelled or the claim is lost."""
        period = self.store.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(period)
            try:
                ok = await self.store.renew(claim.id, claim.generation)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The lease may still hold; the next beat tries again, and the generation fences
                # this loop off if another took the claim over meanwhile.
                bound.warning("cannot renew the lease", error=type(exc).__name__)
                continue
            if not ok:
                lost.set()
                return

    async def drain_deliveries(self, grace: float) -> None:
        """Give in-flight deliveries ``grace`` seconds; unfinished ones are taken over after their lease."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)

    # -- re-sends: receivers that expire alerts not sent again (Alertmanager) ----------------

    async def resend_once(self) -> int:
        """Re-send what each re-sending channel was last told per active group, once its
        ``resend_s`` passed since that message or the last re-send; the number re-sent.

        A re-send is not a notification: not claimed, not recorded in the log (Alertmanager
        de-duplicates by labels, so replicas re-sending the same alerts do no harm); a failure
        is logged and counted, and the next period tries again.
        """
        runtime = await self.runtime()
        every = {n: c.resend_s for n, c in runtime.channels.items() if c.enabled and c.resend_s > 0}
        candidates = await self.store.resend_candidates(every)
        now = self.store.clock()
        live = {(claim.group_id, claim.channel) for claim, _ in candidates}
        self._resent = {k: v for k, v in self._resent.items() if k in live}  # closed groups
        due = []
        for claim, sent_at in candidates:
            last = max(sent_at, self._resent.get((claim.group_id, claim.channel), sent_at))
            if (now - last).total_seconds() >= every[claim.channel]:
                due.append(claim)
        results = await asyncio.gather(*(self._resend(claim, runtime) for claim in due))
        return sum(results)

    async def _resend(self, claim: Claim, runtime: RuntimeConfig) -> bool:
        async with self._sem:
            bound = log.bind(channel=claim.channel, group=claim.group_key)
            try:
                notifier = self._factory(claim.channel, runtime, self._session)
                payload = notifier.build_payload(await self.notification_for(claim, runtime))
                await asyncio.wait_for(notifier.send(payload), self._opts.retry.attempt_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = str(exc) if isinstance(exc, DeliveryError) else type(exc).__name__
                self.metrics.attempts.labels(claim.channel, "false").inc()
                bound.warning("re-send failed; tried again next period", error=error[:200])
                return False
            self.metrics.attempts.labels(claim.channel, "true").inc()
            self._resent[(claim.group_id, claim.channel)] = self.store.clock()
            return True
