"""Linking a new incident to the resolved one it closely resembles (see resemblance.py)."""

from __future__ import annotations

from collections.abc import Sequence

from llmscope.alerter.resemblance import most_resembling, signature
from llmscope.alerter.store_base import Conn, decode_event
from llmscope.proto.incident import ResembledIncident
from llmscope.proto.violation import ViolationEvent

CANDIDATES = 20
"""Resolved incidents compared, most recently resolved first: this runs on the ingest path."""


async def link_resembling(conn: Conn, incident_id: str, events: Sequence[ViolationEvent]) -> None:
    """Store (or clear) the incident's link to the resolved incident it resembles best."""
    if not events:
        return
    new = signature(events)
    rows = await conn.fetch(
        # An incident merged into a cascade was not resolved by anyone: nothing to learn from it.
        "SELECT id FROM alerter_incidents WHERE state = 'resolved' AND merged_into IS NULL AND id <> $1"
        " AND models && $2::text[]"
        " AND CASE WHEN $3 <> '' THEN host = $3 ELSE provider = $4 AND host = '' END"
        " ORDER BY resolved_at DESC NULLS LAST, id LIMIT $5",
        incident_id,
        sorted({e.model for e in events}),
        new.host,
        new.provider,
        CANDIDATES,
    )
    ids = [r["id"] for r in rows]
    by_incident: dict[str, list[ViolationEvent]] = {i: [] for i in ids}
    if ids:
        for r in await conn.fetch(
            "SELECT e.incident_id, a.open_event::text AS ev FROM alerter_incident_episodes e"
            " JOIN alerter_alerts a USING (episode_id) WHERE e.incident_id = ANY($1::text[])",
            ids,
        ):
            ev = decode_event(r["ev"])
            if ev is not None:
                by_incident[r["incident_id"]].append(ev)
    best = most_resembling(new, ((i, signature(by_incident[i])) for i in ids if by_incident[i]))
    await conn.execute(
        "UPDATE alerter_incidents SET resembles_id = $2, resembles_score = $3 WHERE id = $1",
        incident_id,
        best[0] if best else None,
        best[1] if best else None,
    )


async def resembled(conn: Conn, incident_id: str) -> ResembledIncident | None:
    r = await conn.fetchrow(
        "SELECT p.id, p.title, p.resolved_at, p.resolved_by, p.resolved_note, i.resembles_score"
        " FROM alerter_incidents i JOIN alerter_incidents p ON p.id = i.resembles_id WHERE i.id = $1",
        incident_id,
    )
    if r is None:
        return None
    return ResembledIncident(
        incident_id=r["id"],
        title=r["title"],
        score=min(1.0, max(0.0, float(r["resembles_score"] or 0.0))),
        resolved_at=r["resolved_at"],
        resolved_by=r["resolved_by"],
        resolved_note=r["resolved_note"],
    )
