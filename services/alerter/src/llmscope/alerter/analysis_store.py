"""The incidents' analyses, written off the ack path: a job claimed with a lease once an incident has
been quiet for ``analysis_delay``, past incidents that resemble it, the analysis saved and
published. A part of ``Store`` (store.py), on ``incident_store.IncidentStore``."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from llmscope.alerter.incident_store import IncidentStore
from llmscope.proto import codec
from llmscope.proto.incident import IncidentAnalysis
from llmscope.proto.violation import ViolationEvent


@dataclass(frozen=True, slots=True)
class AnalysisJob:
    incident_id: str
    title: str
    severity: str
    events: tuple[ViolationEvent, ...]
    cleared: frozenset[str]
    due_at: datetime
    opened_at: datetime
    cleared_at: Mapping[str, datetime] = field(default_factory=dict)
    """when each cleared episode cleared (an outage's failed probes are counted up to then)"""


class AnalysisStore(IncidentStore):
    """Analysis jobs of incidents: claimed, compared with past incidents, saved."""

    async def claim_analysis(self) -> AnalysisJob | None:
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            r = await conn.fetchrow(
                "SELECT id, title, severity, analysis_due_at, opened_at FROM alerter_incidents"
                " WHERE analysis_status = 'pending' AND analysis_due_at <= $1"
                " AND (analysis_lease_until IS NULL OR analysis_lease_until < $1)"
                " ORDER BY analysis_due_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                now,
            )
            if r is None:
                return None
            await conn.execute(
                "UPDATE alerter_incidents SET analysis_lease_until = $2 WHERE id = $1",
                r["id"],
                now + self.analysis_lease,
            )
            events, cleared = await self._incident_events(conn, r["id"])
            ends = await conn.fetch(
                "SELECT episode_id, cleared_at FROM alerter_alerts WHERE episode_id = ANY($1::text[])"
                " AND cleared_at IS NOT NULL",
                sorted(cleared),
            )
        return AnalysisJob(
            r["id"],
            r["title"],
            r["severity"],
            tuple(events),
            cleared,
            r["analysis_due_at"],
            r["opened_at"],
            {e["episode_id"]: e["cleared_at"] for e in ends},
        )

    async def similar_incidents(
        self, incident_id: str, text: str, before: datetime, limit: int = 5
    ) -> list[tuple[str, float]]:
        """Past incidents whose text resembles ``text``: pg_trgm similarity, else full-text rank."""
        async with self.pool.acquire() as conn:
            trgm = await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
            if trgm:
                rows = await conn.fetch(
                    "SELECT id, similarity(search_text, $2) AS score FROM alerter_incidents"
                    " WHERE id <> $1 AND opened_at < $3 AND merged_into IS NULL"
                    " AND similarity(search_text, $2) >= 0.3"
                    " ORDER BY score DESC LIMIT $4",
                    incident_id,
                    text,
                    before,
                    limit,
                )
            else:
                rows = await conn.fetch(
                    "SELECT id, score FROM (SELECT id, ts_rank_cd(to_tsvector('english', search_text),"
                    " to_tsquery('english', $2), 32) AS score FROM alerter_incidents WHERE id <> $1"
                    " AND opened_at < $3 AND merged_into IS NULL) s"
                    " WHERE score >= 0.1 ORDER BY score DESC LIMIT $4",
                    incident_id,
                    " | ".join(w for w in _words(text)) or "nothing",
                    before,
                    limit,
                )
        return [(r["id"], float(r["score"])) for r in rows]

    async def save_analysis(
        self, job: AnalysisJob, analysis: IncidentAnalysis, similar: Sequence[tuple[str, float]]
    ) -> None:
        data = json.loads(codec.encode(analysis))
        data.pop("summary", None)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                # KEY SHARE: a past incident that retention deletes meanwhile is left out, no FK error.
                "INSERT INTO alerter_incident_similar (incident_id, similar_id, score) SELECT $1, i.id, sc"
                " FROM unnest($2::text[], $3::float8[]) AS t(s, sc) JOIN alerter_incidents i ON i.id = t.s"
                " FOR KEY SHARE OF i ON CONFLICT (incident_id, similar_id)"
                " DO UPDATE SET score = EXCLUDED.score",
                job.incident_id,
                [s for s, _ in similar],
                [sc for _, sc in similar],
            )
            # Still 'pending' if a violation arrived meanwhile (due time moved): analysed again later.
            await conn.execute(
                "UPDATE alerter_incidents SET analysis = $2::jsonb, summary = $3, revision = revision + 1,"
                " analysis_lease_until = NULL,"
                " analysis_status = CASE WHEN analysis_due_at = $4 THEN 'done' ELSE 'pending' END"
                " WHERE id = $1",
                job.incident_id,
                json.dumps(data),
                analysis.summary,
                job.due_at,
            )
            await self._outbox_incident(conn, job.incident_id, "analyzed")


def _words(text: str) -> list[str]:
    return sorted({w.lower() for w in re.findall(r"[A-Za-z][A-Za-z0-9]{2,}", text)})[:32]
