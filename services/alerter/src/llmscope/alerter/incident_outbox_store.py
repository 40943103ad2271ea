"""The alerter's incidents as ``incident.v1`` events: built from their rows, written to the outbox in
the transaction that changes them, published from there (``pending_outbox``, ``mark_published``).
A part of ``Store`` (store.py), on ``store_base.StoreBase``."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from llmscope.alerter.resemblance_store import resembled
from llmscope.alerter.store_base import Conn, StoreBase
from llmscope.alerter.ticket_store import ticket_ref
from llmscope.proto import codec, subjects
from llmscope.proto.incident import (
    IncidentAnalysis,
    IncidentChange,
    IncidentEvent,
    RepagedEpisode,
    SimilarIncident,
)


class IncidentOutboxStore(StoreBase):
    """Incidents as events, and the outbox (``alerter_outbox``) they are published from."""

    async def incident(self, incident_id: str, change: IncidentChange = "updated") -> IncidentEvent | None:
        """The incident as it stands, or None when there is no such incident."""
        async with self.pool.acquire() as conn:
            if await conn.fetchval("SELECT 1 FROM alerter_incidents WHERE id = $1", incident_id) is None:
                return None
            return await self.incident_event(conn, incident_id, change)

    async def incident_event(self, conn: Conn, incident_id: str, change: IncidentChange) -> IncidentEvent:
        r = await conn.fetchrow("SELECT * FROM alerter_incidents WHERE id = $1", incident_id)
        assert r is not None
        episodes = await conn.fetch(
            "SELECT episode_id, a.repaged_at, a.repage_of_by, a.repage_of_at,"
            # Paged again and still firing: neither resolved again since nor cleared.
            " a.repaged_at IS NOT NULL AND a.resolved_at IS NULL AND a.cleared_at IS NULL AS repaged"
            " FROM alerter_incident_episodes e JOIN alerter_alerts a USING (episode_id)"
            " WHERE incident_id = $1 ORDER BY a.opened_at",
            incident_id,
        )
        similar = await conn.fetch(
            "SELECT s.similar_id, s.score, i.title, i.opened_at FROM alerter_incident_similar s"
            " JOIN alerter_incidents i ON i.id = s.similar_id WHERE s.incident_id = $1 ORDER BY s.score DESC",
            incident_id,
        )
        analysis = None
        if r["analysis"] is not None:
            data: dict[str, Any] = json.loads(r["analysis"])
            analysis = codec.decode_as(
                json.dumps({"summary": r["summary"], **data}).encode(), IncidentAnalysis
            )
        return IncidentEvent(
            id=f"{incident_id}:{r['revision']}",
            ts=self.clock(),
            incident_id=incident_id,
            revision=max(1, r["revision"]),
            change=change,
            state=r["state"],
            title=r["title"],
            severity=r["severity"],
            provider=r["provider"],
            host=r["host"],
            models=tuple(r["models"]),
            cascade=r["cascade"],
            episode_ids=tuple(e["episode_id"] for e in episodes),
            violation_count=len(episodes),
            opened_at=r["opened_at"],
            last_violation_at=r["last_violation_at"],
            acknowledged_at=r["acknowledged_at"],
            acknowledged_by=r["acknowledged_by"],
            resolved_at=r["resolved_at"],
            resolved_by=r["resolved_by"],
            acknowledged_note=r["acknowledged_note"],
            resolved_note=r["resolved_note"],
            analysis=analysis,
            similar=tuple(
                SimilarIncident(
                    incident_id=s["similar_id"],
                    title=s["title"],
                    score=min(1.0, s["score"]),
                    opened_at=s["opened_at"],
                )
                for s in similar
            ),
            resembles=await resembled(conn, incident_id),
            ticket=await ticket_ref(conn, incident_id),
            merged_into=r["merged_into"],
            repaged=tuple(
                RepagedEpisode(
                    episode_id=e["episode_id"],
                    repaged_at=e["repaged_at"],
                    resolved_by=e["repage_of_by"],
                    resolved_at=e["repage_of_at"],
                )
                for e in episodes
                if e["repaged"]
            ),
        )

    async def _outbox_incident(self, conn: Conn, incident_id: str, change: IncidentChange) -> None:
        event = await self.incident_event(conn, incident_id, change)
        await conn.execute(
            "INSERT INTO alerter_outbox (subject, msg_id, payload) VALUES ($1, $2, $3)",
            subjects.incidents(event.provider, change),
            event.id,
            codec.encode(event),
        )

    async def pending_outbox(self, limit: int = 100) -> list[asyncpg.Record]:
        return list(
            await self.pool.fetch(
                "SELECT id, subject, msg_id, payload FROM alerter_outbox WHERE published_at IS NULL"
                " ORDER BY id LIMIT $1",
                limit,
            )
        )

    async def unresolved_incidents(self) -> dict[tuple[str, str], int]:
        """How many incidents are open or acknowledged, by (state, severity)."""
        rows = await self.pool.fetch(
            "SELECT state, severity, count(*) AS n FROM alerter_incidents"
            " WHERE state <> 'resolved' GROUP BY state, severity"
        )
        return {(r["state"], r["severity"]): r["n"] for r in rows}

    async def mark_published(self, outbox_id: int) -> None:
        await self.pool.execute(
            "UPDATE alerter_outbox SET published_at = $2 WHERE id = $1", outbox_id, self.clock()
        )
