"""The alerter service: consume violations, flush groups, deliver, publish incidents, analyse.

Pipeline per group flush: ``mute -> dedup`` (pure, :func:`grouping.decide`) ``-> claim`` (the
notification row, committed before any I/O) ``-> send_with_retry -> record``. Violations are
acked once recorded in Postgres (alert, group, incident: the message is then durably pending);
delivery happens off the ack path, from the groups' timers, in whichever replica claims them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from msgspec import structs

from llmscope.alerter.analysis import summarize
from llmscope.alerter.api_view import ApiView
from llmscope.alerter.config import AlerterFile, RuntimeConfig, Timings, build_runtime
from llmscope.alerter.grouping import ChannelView
from llmscope.alerter.incidents import search_text
from llmscope.alerter.llm import LlmConfig, LlmResult, analyze
from llmscope.alerter.messages import IncidentRef
from llmscope.alerter.metrics import AlerterMetrics
from llmscope.alerter.model import Alert
from llmscope.alerter.notifiers.base import AlertView, Notification, Notifier
from llmscope.alerter.notifiers.registry import build_notifier
from llmscope.alerter.notifiers.slack import ThreadStore
from llmscope.alerter.retention import RetentionPolicy
from llmscope.alerter.retry import Attempt, DeliveryError, Outcome, RetryPolicy, send_with_retry
from llmscope.alerter.store import AnalysisJob, Claim, Store
from llmscope.alerter.tickets.base import TicketConfig
from llmscope.alerter.tickets.from_settings import ticket_config_from
from llmscope.alerter.tickets.settings import build_tracker
from llmscope.alerter.tickets.sync import TicketSync
from llmscope.bus.consumer import ConsumerOptions, Delivery
from llmscope.bus.publisher import Publisher, PublishFailed
from llmscope.config.env import ConfigError, Env
from llmscope.config.logs import BoundLogger, get_logger
from llmscope.config.startup import log_failure, postgres_unavailable
from llmscope.proto.incident import IncidentAnalysis
from llmscope.proto.violation import SEVERITIES, Severity, ViolationEvent
from llmscope.proto.violation_action import ViolationActionEvent

log = get_logger("llmscope.alerter")

NotifierFactory = Callable[[str, RuntimeConfig, aiohttp.ClientSession], Notifier]


def default_notifier_factory(
    name: str, runtime: RuntimeConfig, session: aiohttp.ClientSession, threads: ThreadStore | None = None
) -> Notifier:
    return build_notifier(runtime.channels[name], session, threads=threads)


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


@dataclass
class AlerterOptions:
    """What the service needs beyond the store; every field has a test-friendly override."""

    public_url: str = "http://127.0.0.1:8000"
    severities: tuple[Severity, ...] = ("critical",)
    tick_s: float = 1.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = 16
    settings_refresh_s: float = 10.0
    llm: LlmConfig | None = None
    config_file: AlerterFile | None = None
    timings: Timings = field(default_factory=Timings)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    gauges_s: float = 10.0
    """How often the incident gauges are read from Postgres."""
    tickets: TicketConfig | None = None
    """Where critical incidents open tickets; None: no tickets."""


class Alerter:
    """Wires the store, the channels and the loops; knows nothing of NATS but the Publisher."""

    def __init__(
        self,
        store: Store,
        *,
        env: Env,
        session: aiohttp.ClientSession,
        publisher: Publisher | None,
        options: AlerterOptions,
        notifier_factory: NotifierFactory = default_notifier_factory,
        rng: random.Random | None = None,
        metrics: AlerterMetrics | None = None,
        api: ApiView | None = None,
    ) -> None:
        self.store = store
        # The API's settings and telemetry, over the bus (None: no API, every read empty).
        self.api = api or ApiView(None)
        self.metrics = metrics or AlerterMetrics()
        self._env = env
        self._session = session
        self._publisher = publisher
        self._opts = options
        # The product's channels keep Slack threads in Postgres; a test's factory brings its own.
        self._factory: NotifierFactory = (
            functools.partial(default_notifier_factory, threads=store)
            if notifier_factory is default_notifier_factory
            else notifier_factory
        )
        self._resent: dict[tuple[int, str], datetime] = {}
        self._rng = rng or random.Random()
        self._runtime: RuntimeConfig | None = None
        self._runtime_at = 0.0
        self._sem = asyncio.Semaphore(options.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._live: set[str] = set()  # notification ids this process is delivering
        self._started = False  # the first dispatch pass has run
        self._wake_outbox = asyncio.Event()
        self.tickets: TicketSync | None = None
        self._tickets_cfg: TicketConfig | None = None
        self._tickets_error = ""
        self._use_tickets(options.tickets)
        self.ready = False

    # -- configuration ----------------------------------------------------------------------

    async def runtime(self) -> RuntimeConfig:
        """File + environment + the API's settings, re-read every ``settings_refresh_s``."""
        loop = asyncio.get_running_loop()
        if self._runtime is None or loop.time() - self._runtime_at >= self._opts.settings_refresh_s:
            settings = await self.api.settings()
            self._runtime = build_runtime(
                self._opts.config_file,
                self._env,
                settings,
                timings=self._opts.timings,
                severities=self._opts.severities,
                timeout=self._opts.retry.attempt_timeout,
            )
            self._runtime_at = loop.time()
            self._tickets_from(settings)
        return self._runtime

    def _tickets_from(self, settings: Mapping[str, object]) -> None:
        """The tracker the settings choose (else the environment's): the ticket worker follows
        a change of the settings page without a restart."""
        try:
            config, error = ticket_config_from(settings, self._opts.tickets), ""
        except ConfigError as exc:
            config, error = None, str(exc)
        if error != self._tickets_error:
            self._tickets_error = error
            if error:
                log.warning("ticket settings unusable: no tickets until they are fixed", error=error)
        if config != self._tickets_cfg:
            self._use_tickets(config)
            log.info("ticket tracker configured", tracker=config.kind if config else "none")

    def _use_tickets(self, config: TicketConfig | None) -> None:
        self._tickets_cfg = config
        self.tickets = (
            None
            if config is None
            else TicketSync(self.store, build_tracker(config, self._session), config, self._opts.public_url)
        )

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

    # -- analysis ---------------------------------------------------------------------------

    async def analyze_once(self) -> bool:
        """Analyse one due incident; False when none is due. Never raises for the LLM's sake."""
        job = await self.store.claim_analysis()
        if job is None:
            return False
        analysis, similar = await self.analysis_for(job)
        await self.store.save_analysis(job, analysis, similar)
        self._wake_outbox.set()
        return True

    async def analysis_for(self, job: AnalysisJob) -> tuple[IncidentAnalysis, list[tuple[str, float]]]:
        telemetry = await self.api.telemetry_points(job.events)
        now = self.store.clock()
        # Every failed probe of an outage, not only the few that tripped its rule (kinds of the
        # latest 200 read: enough to name them, bounded for an outage of days).
        alerts = [
            Alert(e, cleared=structs.replace(e, state="cleared", ts=job.cleared_at[e.episode_id]))
            if e.episode_id in job.cleared_at
            else Alert(e)
            for e in job.events
        ]
        outages = await self.api.outages_for(alerts, now, recent=200)
        summary, moves, rules = summarize(
            job.events, cleared=job.cleared, telemetry=telemetry, outages=outages
        )
        llm = self._opts.llm
        if llm is None:
            result = LlmResult("disabled")
        else:
            result = await analyze(
                self._session, llm, job.title, summary, critical=job.severity == "critical"
            )
        if result.status != "ok" and llm is not None:
            log.warning(
                "LLM analysis unavailable; the deterministic summary stands",
                incident=job.incident_id,
                status=result.status,
                error=(result.error or "")[:200],
            )
        text = search_text(job.title, rules, job.events)
        similar = await self.store.similar_incidents(job.incident_id, text, job.opened_at)
        marked = (
            summary
            if result.status == "ok"
            else f"{summary}\n(Deterministic analysis only: LLM {result.status}.)"
        )
        analysis = IncidentAnalysis(
            summary=marked,
            moves=moves,
            rules=rules,
            llm_status=result.status,
            llm_error=result.error,
            llm_model=llm.model if llm else None,
            hypothesis=result.hypothesis,
            engineering_email=result.engineering_email,
            customer_notice=result.customer_notice,
        )
        return analysis, similar

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
        if self._opts.retention.enabled:
            # A failed sweep is logged by _every and tried again a period later.
            loops.append(self._every(stop, self._opts.retention.every_s, self.sweep_once, "retention"))
        self.ready = True
        try:
            await asyncio.gather(*loops)
        finally:
            self.ready = False

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
