"""The ticket of each incident in ``alerter_incident_tickets`` (the worker: tickets/sync.py).

A row is created, and committed, before the tracker is asked for anything; each create attempt
is counted, committed, before the call. So after a crash between the tracker's answer and the
row's update, the next holder sees ``create_tries > 0`` and looks the ticket up by its marker
first: one incident never gets two tickets. Rows are claimed with ``FOR UPDATE SKIP LOCKED`` and a
lease (replicas never work one incident at once); ``claim_gen`` fences off a holder whose lease
ran out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from llmscope.alerter.store_base import Conn, StoreBase
from llmscope.alerter.tickets.base import Ticket
from llmscope.alerter.tickets.text import marker_for
from llmscope.proto import codec, subjects
from llmscope.proto.incident import IncidentEvent, TicketRef


@dataclass(frozen=True, slots=True)
class TicketJob:
    """An incident whose ticket needs creating, a comment, or closing; claimed by this replica."""

    incident_id: str
    marker: str
    ticket: Ticket | None
    create_tries: int
    synced: dict[str, Any]
    resolve_commented: bool
    attempts: int
    created_at: datetime
    generation: int
    incident: IncidentEvent
    closed: bool = False
    """the ticket was closed with its incident's resolution, and the incident is open again (a
    violation paged again after a hand resolution): the ticket is reopened"""


async def ticket_ref(conn: Conn, incident_id: str) -> TicketRef | None:
    r = await conn.fetchrow(
        "SELECT tracker, ticket_key, url, state FROM alerter_incident_tickets"
        " WHERE incident_id = $1 AND ticket_key IS NOT NULL",
        incident_id,
    )
    if r is None:
        return None
    return TicketRef(
        tracker=r["tracker"],
        key=r["ticket_key"],
        url=r["url"] or "",
        state="closed" if r["state"] == "closed" else "open",
    )


class _ClaimLost(Exception):
    """Another holder took the ticket's claim: the transaction is rolled back."""


class TicketStore(StoreBase):
    """SQL of the ticket worker."""

    async def claim_ticket(
        self, tracker: str, severities: Sequence[str], wait: float, lease: float
    ) -> TicketJob | None:
        """Open a row for each incident that now deserves a ticket, then claim one row with work
        due: no ticket yet, an incident revision the ticket has not seen, or a resolution."""
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            # An unresolved incident at or above the severity, once analysed (its analysis is
            # the ticket's body) or after ``wait`` without one.
            for new in await conn.fetch(
                "SELECT i.id FROM alerter_incidents i WHERE i.state <> 'resolved'"
                " AND i.severity = ANY($1::text[]) AND (i.analysis ? 'llm_status' OR i.opened_at < $2)"
                # A held incident (a lone point, merging.py) may yet be merged: no ticket of its own.
                " AND (i.held_until IS NULL OR i.held_until <= $3)"
                " AND NOT EXISTS (SELECT 1 FROM alerter_incident_tickets t WHERE t.incident_id = i.id)",
                list(severities),
                now - timedelta(seconds=wait),
                now,
            ):
                await conn.execute(
                    "INSERT INTO alerter_incident_tickets (incident_id, tracker, marker, next_try_at,"
                    " created_at, updated_at) VALUES ($1, $2, $3, $4, $4, $4) ON CONFLICT DO NOTHING",
                    new["id"],
                    tracker,
                    marker_for(new["id"]),
                    now,
                )
            # An incident open again (a violation paged again after a hand resolution) whose
            # ticket was skipped (resolved before it was opened) deserves one as a new incident
            # does; one whose ticket was closed with the resolution has it reopened (below).
            await conn.execute(
                "UPDATE alerter_incident_tickets t SET state = 'pending', next_try_at = $2, updated_at = $2"
                " FROM alerter_incidents i WHERE i.id = t.incident_id AND t.tracker = $1"
                " AND t.state = 'skipped' AND i.state <> 'resolved' AND i.merged_into IS NULL",
                tracker,
                now,
            )
            # A change is told once the analysis after it has settled (it goes in the comment),
            # or after ``wait`` if it never does; a closed ticket of an incident open again at once.
            r = await conn.fetchrow(
                "SELECT t.* FROM alerter_incident_tickets t JOIN alerter_incidents i ON i.id = t.incident_id"
                " WHERE t.tracker = $1 AND t.next_try_at <= $2"
                " AND (t.state IN ('pending', 'open') OR (t.state = 'closed' AND i.state <> 'resolved'))"
                " AND (t.lease_until IS NULL OR t.lease_until < $2)"
                " AND (t.state IN ('pending', 'closed') OR i.state = 'resolved'"
                "  OR (t.synced_revision < i.revision"
                "  AND (i.analysis_status = 'done' OR i.last_violation_at < $3)))"
                " ORDER BY t.next_try_at LIMIT 1 FOR UPDATE OF t SKIP LOCKED",
                tracker,
                now,
                now - timedelta(seconds=wait),
            )
            if r is None:
                return None
            generation = await conn.fetchval(
                "UPDATE alerter_incident_tickets SET lease_until = $2, claimed_by = $3,"
                " claim_gen = claim_gen + 1, updated_at = $4 WHERE incident_id = $1 RETURNING claim_gen",
                r["incident_id"],
                now + timedelta(seconds=lease),
                self.instance,
                now,
            )
            incident = await self.incident_event(conn, r["incident_id"], "updated")
        return TicketJob(
            incident_id=r["incident_id"],
            marker=r["marker"],
            ticket=Ticket(r["ticket_key"], r["url"] or "") if r["ticket_key"] else None,
            create_tries=r["create_tries"],
            synced=json.loads(r["synced"]),
            resolve_commented=r["resolve_commented"],
            attempts=r["attempts"],
            created_at=r["created_at"],
            generation=int(generation),
            incident=incident,
            closed=r["state"] == "closed",
        )

    async def _ticket_update(self, job: TicketJob, sets: str, *args: Any) -> bool:
        done = await self.pool.fetchval(
            f"UPDATE alerter_incident_tickets SET {sets}, updated_at = $3"
            " WHERE incident_id = $1 AND claim_gen = $2 RETURNING 1",
            job.incident_id,
            job.generation,
            self.clock(),
            *args,
        )
        return done is not None

    async def ticket_create_try(self, job: TicketJob) -> bool:
        """Count a create attempt before it is made; False when the claim was lost."""
        return await self._ticket_update(job, "create_tries = create_tries + 1")

    async def ticket_opened(
        self, job: TicketJob, ticket: Ticket, synced: dict[str, Any], revision: int
    ) -> bool:
        return await self._ticket_update(
            job,
            "ticket_key = $4, url = $5, state = 'open', synced = $6::jsonb, synced_revision = $7",
            ticket.key,
            ticket.url,
            json.dumps(synced),
            revision,
        )

    async def ticket_progress(
        self,
        job: TicketJob,
        synced: dict[str, Any],
        revision: int,
        *,
        resolve_commented: bool = False,
        closed: bool = False,
    ) -> bool:
        return await self._ticket_update(
            job,
            "synced = $4::jsonb, synced_revision = greatest(synced_revision, $5),"
            " resolve_commented = resolve_commented OR $6,"
            " state = CASE WHEN $7 THEN 'closed' ELSE state END",
            json.dumps(synced),
            revision,
            resolve_commented,
            closed,
        )

    async def ticket_reopened(self, job: TicketJob, synced: dict[str, Any]) -> bool:
        """The closed ticket was reopened (its incident fires again): followed as an open one,
        its resolution to be commented and closed again in its turn. The incident is published
        again (a revision more) with its ticket open: the event of its page again said closed.
        False when the claim was lost (nothing changed)."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                # The incident's row first, as merges do before its ticket's (merge_store.py).
                revision = await conn.fetchval(
                    "UPDATE alerter_incidents SET revision = revision + 1 WHERE id = $1 RETURNING revision",
                    job.incident_id,
                )
                done = await conn.fetchval(
                    "UPDATE alerter_incident_tickets SET state = 'open', resolve_commented = false,"
                    " synced = $4::jsonb, synced_revision = $5, updated_at = $3"
                    " WHERE incident_id = $1 AND claim_gen = $2 RETURNING 1",
                    job.incident_id,
                    job.generation,
                    self.clock(),
                    json.dumps(synced),
                    revision,
                )
                if done is None:
                    raise _ClaimLost
                event = await self.incident_event(conn, job.incident_id, "updated")
                await conn.execute(
                    "INSERT INTO alerter_outbox (subject, msg_id, payload) VALUES ($1, $2, $3)",
                    subjects.incidents(event.provider, "updated"),
                    event.id,
                    codec.encode(event),
                )
        except _ClaimLost:
            return False
        return True

    async def ticket_skipped(self, job: TicketJob) -> bool:
        """The incident resolved before its ticket was opened: none will be."""
        return await self._ticket_update(job, "state = 'skipped', lease_until = NULL")

    async def ticket_done(self, job: TicketJob) -> bool:
        """This round's work is done: release the claim, clear the error count."""
        return await self._ticket_update(
            job, "lease_until = NULL, attempts = 0, last_error = NULL, next_try_at = $3"
        )

    async def ticket_failed(self, job: TicketJob, error: str, delay: float) -> bool:
        return await self._ticket_update(
            job,
            "lease_until = NULL, attempts = attempts + 1, last_error = $4,"
            " next_try_at = $3::timestamptz + $5::interval",
            error[:2000],
            timedelta(seconds=delay),
        )
