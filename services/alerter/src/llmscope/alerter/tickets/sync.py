"""The ticket worker: opens one ticket per qualifying incident, comments its changes, closes it,
and reopens it when the incident fires again (a violation paged again after a hand resolution).

Each round claims one incident with work due (ticket_store.py) and brings its ticket up to date:
create it (after looking it up by marker when an earlier create may have succeeded unseen),
comment what changed since the ticket was last told, and on resolution comment how it ended
and close it. A failure is retried later with backoff; comments are at least once (a crash
between a comment and its record repeats it), the ticket itself exactly once.
"""

from __future__ import annotations

from datetime import timedelta

from llmscope.alerter.retry import DeliveryError
from llmscope.alerter.ticket_store import TicketJob, TicketStore
from llmscope.alerter.tickets import text
from llmscope.alerter.tickets.base import TicketConfig, Tracker
from llmscope.config.logs import get_logger
from llmscope.proto.violation import SEVERITIES

log = get_logger("llmscope.alerter.tickets")

CLOCK_SKEW = timedelta(minutes=10)
"""How far the tracker's clock may lag ours when listing issues updated since a row was written."""
MAX_BACKOFF_S = 600.0


def backoff(attempts: int, initial: float = 5.0) -> float:
    """5 s, 10 s, 20 s ... up to 10 minutes between tries."""
    return min(MAX_BACKOFF_S, initial * 2.0 ** min(attempts, 10))


class TicketSync:
    """Keeps each qualifying incident's ticket in step with the incident."""

    def __init__(self, store: TicketStore, tracker: Tracker, config: TicketConfig, public_url: str) -> None:
        self._store = store
        self._tracker = tracker
        self._cfg = config
        self._public_url = public_url
        self._severities = SEVERITIES[: SEVERITIES.index(config.min_severity) + 1]
        # Every round makes at most a handful of calls (the look-up pages, create, two comments,
        # the transition); the lease outlasts all of them timing out.
        self._lease = 12 * config.timeout_s + 30

    async def run_once(self) -> bool:
        """Work one incident's ticket; False when none has work due."""
        job = await self._store.claim_ticket(self._cfg.kind, self._severities, self._cfg.wait_s, self._lease)
        if job is None:
            return False
        bound = log.bind(incident=job.incident_id, tracker=self._cfg.kind)
        try:
            await self._work(job)
        except DeliveryError as exc:
            delay = backoff(job.attempts, self._cfg.retry_initial_s)
            await self._store.ticket_failed(job, str(exc), delay)
            bound.warning(
                "ticket not brought up to date; trying again later",
                error=str(exc)[:300],
                retryable=exc.retryable,
                retry_in_s=delay,
            )
        return True

    async def run_all(self) -> None:
        while await self.run_once():
            pass

    async def _work(self, job: TicketJob) -> None:
        ev = job.incident
        ticket = job.ticket
        bound = log.bind(incident=job.incident_id, tracker=self._cfg.kind)
        if ticket is None:
            if job.create_tries:
                # An earlier try may have created it and died before recording it.
                ticket = await self._tracker.find(job.marker, job.created_at - CLOCK_SKEW)
            if ticket is None:
                if ev.state == "resolved":
                    await self._store.ticket_skipped(job)
                    bound.info("incident resolved before its ticket was opened; none opened")
                    return
                if not await self._store.ticket_create_try(job):
                    return  # taken over
                ticket = await self._tracker.create(
                    text.title(ev), text.body(ev, self._public_url), job.marker
                )
                bound.info("ticket opened", ticket=ticket.key, url=ticket.url)
            else:
                bound.info("ticket found again by its marker", ticket=ticket.key)
            if not await self._store.ticket_opened(job, ticket, text.snapshot(ev), ev.revision):
                return
            told = text.snapshot(ev)
        elif job.closed:
            if ev.state == "resolved":  # resolved again since the claim: it stays closed
                await self._store.ticket_done(job)
                return
            # Its incident fires again (paged again after a hand resolution): so does the
            # ticket, as it was, never a second one. A crash before the record reopens again
            # (nothing to do on an open ticket) and repeats the comment (at least once).
            await self._tracker.reopen(ticket)
            await self._tracker.comment(ticket, text.reopen_comment(ev))
            told = text.snapshot(ev)
            if not await self._store.ticket_reopened(job, told):
                return
            bound.info("ticket reopened", ticket=ticket.key)
        else:
            told = job.synced
            comment = text.update_comment(told, ev)
            if comment is not None:
                await self._tracker.comment(ticket, comment)
            told = text.snapshot(ev)
            if not await self._store.ticket_progress(job, told, ev.revision):
                return
        if ev.state == "resolved":
            if not job.resolve_commented:
                await self._tracker.comment(ticket, text.resolution_comment(ev))
                if not await self._store.ticket_progress(job, told, ev.revision, resolve_commented=True):
                    return
            await self._tracker.close(ticket)
            await self._store.ticket_progress(job, told, ev.revision, closed=True)
            bound.info("ticket closed", ticket=ticket.key)
        await self._store.ticket_done(job)
