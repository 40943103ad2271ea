"""The alerter's incidents: correlating violations into incidents, their acknowledgement and
resolution by hand (told to the channels that were paged), the outbox of incident events and the
analysis jobs. A part of ``Store`` (store.py), on ``store_base.StoreBase``."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from llmscope.alerter.analysis import summarize
from llmscope.alerter.incidents import (
    OpenIncident,
    OpenSignal,
    correlate,
    forms_incidents,
    incident_id_for,
    search_text,
    sustained,
    sustained_models,
    title_for,
    worst_severity,
)
from llmscope.alerter.merging import hold_until
from llmscope.alerter.messages import IncidentRef, PastIncident
from llmscope.alerter.resemblance_store import link_resembling, resembled
from llmscope.alerter.store_base import Conn, StoreBase
from llmscope.alerter.store_base import decode_event as _event
from llmscope.alerter.ticket_store import ticket_ref
from llmscope.proto import codec, subjects
from llmscope.proto.incident import IncidentAnalysis, IncidentChange, IncidentEvent, SimilarIncident
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


class IncidentStore(StoreBase):
    """Incidents, their hand acknowledgement and resolution, the incident outbox and analyses."""

    async def incidents_for(self, episode_ids: Sequence[str]) -> dict[str, IncidentRef]:
        """episode id -> the incident it belongs to, as messages name it."""
        if not episode_ids:
            return {}
        rows = await self.pool.fetch(
            "SELECT e.episode_id, i.id, i.title, i.models, i.cascade, i.host, p.id AS p_id,"
            " p.title AS p_title, p.resolved_at AS p_resolved_at, p.resolved_by AS p_resolved_by,"
            " p.resolved_note AS p_note FROM alerter_incident_episodes e"
            " JOIN alerter_incidents i ON i.id = e.incident_id"
            " LEFT JOIN alerter_incidents p ON p.id = i.resembles_id WHERE e.episode_id = ANY($1::text[])",
            list(episode_ids),
        )
        return {
            r["episode_id"]: IncidentRef(
                r["id"],
                r["title"],
                tuple(r["models"]),
                r["cascade"],
                r["host"],
                seen_before=None
                if r["p_id"] is None
                else PastIncident(
                    r["p_id"], r["p_title"], r["p_resolved_at"], r["p_resolved_by"], r["p_note"]
                ),
            )
            for r in rows
        }

    # -- incidents ------------------------------------------------------------------------------

    async def _incident_open(self, conn: Conn, ev: ViolationEvent) -> tuple[str, datetime | None]:
        """Open or join an incident; its id, and until when a new one holds its first message."""
        # ingest() holds this provider's and this host's advisory locks: one correlator at a time,
        # no twin incidents. Candidates: the provider's incidents, and any on the same host.
        since = (ev.opened_at or ev.ts) - timedelta(seconds=self.incident_window)
        rows = await conn.fetch(
            "SELECT id, provider, host, models, last_violation_at FROM alerter_incidents"
            " WHERE state <> 'resolved' AND (provider = $1 OR ($3 <> '' AND host = $3))"
            " AND last_violation_at >= $2",
            ev.provider,
            since,
            ev.host,
        )
        when = ev.opened_at or ev.ts
        # The host's models with a sustained open signal at this violation's time: they confirm
        # their own one-point episodes (a shift that opened with a jump is still one SPIKE).
        confirmed: frozenset[str] = frozenset()
        others: list[OpenSignal] = []  # other models' open signals in the host's open incidents
        if ev.host:
            host_signals = [
                (OpenSignal(r["model"], r["rule"], r["n"] or 0, r["opened_at"]), bool(r["in_open"]))
                for r in await conn.fetch(
                    "SELECT a.model, a.rule, a.severity, a.opened_at,"
                    " jsonb_array_length(a.open_event->'point_ids') AS n,"
                    " i.state <> 'resolved' AND i.last_violation_at >= $3 AS in_open"
                    " FROM alerter_alerts a LEFT JOIN alerter_incident_episodes e USING (episode_id)"
                    " LEFT JOIN alerter_incidents i ON i.id = e.incident_id"
                    " WHERE a.host = $1 AND a.cleared_at IS NULL AND a.opened_at <= $2",
                    ev.host,
                    when,
                    since,
                )
                if forms_incidents(r["severity"], self.incident_min_severity)
            ]
            confirmed = sustained_models((s for s, _ in host_signals), when, self.sustain_after)
            others = [s for s, in_open in host_signals if in_open and s.model != ev.model]
        live: dict[str, set[str]] = {}
        for r in await conn.fetch(
            "SELECT e.incident_id, a.model, a.rule, a.opened_at,"
            " jsonb_array_length(a.open_event->'point_ids') AS n"
            " FROM alerter_incident_episodes e JOIN alerter_alerts a USING (episode_id)"
            " WHERE e.incident_id = ANY($1::text[]) AND a.cleared_at IS NULL",
            [r["id"] for r in rows],
        ):
            age = (when - r["opened_at"]).total_seconds()
            if r["model"] in confirmed or sustained(
                r["rule"], r["n"] or 0, open_for_s=age, sustain_s=self.sustain_after
            ):
                live.setdefault(r["incident_id"], set()).add(r["model"])
        candidates = [
            OpenIncident(
                r["id"],
                r["provider"],
                r["host"],
                tuple(r["models"]),
                r["last_violation_at"],
                tuple(sorted(live.get(r["id"], ()))),
            )
            for r in rows
        ]
        match = correlate(ev, candidates, self.incident_window, confirmed)
        held: datetime | None = None
        if match is None:
            incident_id = incident_id_for(ev)
            held = hold_until(
                OpenSignal(ev.model, ev.rule, len(ev.point_ids), when),
                others=others,
                confirmed=confirmed,
                sustain_s=self.sustain_after,
            )
            await conn.execute(
                "INSERT INTO alerter_incidents (id, state, title, severity, provider, host, models,"
                " opened_at,"
                " last_violation_at, revision, held_until) VALUES ($1,'open','',$2,$3,$4,$5,$6,$6,0,$7)"
                " ON CONFLICT DO NOTHING",
                incident_id,
                ev.severity,
                ev.provider,
                ev.host,
                [ev.model],
                when,
                held,
            )
            change: IncidentChange = "opened"
        else:
            incident_id, change = match.id, "updated"
        await conn.execute(
            "INSERT INTO alerter_incident_episodes (episode_id, incident_id) VALUES ($1, $2) ON"
            " CONFLICT DO NOTHING",
            ev.episode_id,
            incident_id,
        )
        await self._refresh_incident(conn, incident_id, change, last_violation_at=when)
        return str(incident_id), held

    async def _incident_events(
        self, conn: Conn, incident_id: str
    ) -> tuple[list[ViolationEvent], frozenset[str]]:
        rows = await conn.fetch(
            "SELECT a.open_event, a.episode_id, a.cleared_at FROM alerter_alerts a"
            " JOIN alerter_incident_episodes e USING (episode_id) WHERE e.incident_id = $1 ORDER BY"
            " a.opened_at",
            incident_id,
        )
        events = [e for e in (_event(r["open_event"]) for r in rows) if e is not None]
        cleared = frozenset(r["episode_id"] for r in rows if r["cleared_at"] is not None)
        return events, cleared

    async def _refresh_incident(
        self,
        conn: Conn,
        incident_id: str,
        change: IncidentChange,
        *,
        last_violation_at: datetime,
    ) -> None:
        events, cleared = await self._incident_events(conn, incident_id)
        summary, _, rules = summarize(events, cleared=cleared)
        title = title_for(events)
        models = sorted({e.model for e in events})
        hosts = sorted({e.host for e in events if e.host})
        search = search_text(title, rules, events)
        await conn.execute(
            "UPDATE alerter_incidents SET title = $2, severity = $3, models = $4, cascade = $5,"
            " host = CASE WHEN host = '' THEN $6 ELSE host END,"
            " last_violation_at = greatest(last_violation_at, $7), summary = $8, search_text = $9,"
            " revision = revision + 1, analysis_status = 'pending', analysis_due_at = $10,"
            " analysis = jsonb_set(coalesce(analysis, '{}'::jsonb), '{summary}', to_jsonb($8::text))"
            " WHERE id = $1",
            incident_id,
            title,
            worst_severity(e.severity for e in events),
            models,
            len(models) > 1,
            hosts[0] if hosts else "",
            last_violation_at,
            summary,
            search,
            self.clock() + self.analysis_delay,
        )
        await link_resembling(conn, incident_id, events)
        await self._outbox_incident(conn, incident_id, change)

    async def _incident_clear(self, conn: Conn, episode_id: str) -> None:
        incident_id = await conn.fetchval(
            "SELECT incident_id FROM alerter_incident_episodes WHERE episode_id = $1", episode_id
        )
        if incident_id is None:
            return
        still_open = await conn.fetchval(
            "SELECT count(*) FROM alerter_alerts a JOIN alerter_incident_episodes e USING (episode_id)"
            " WHERE e.incident_id = $1 AND a.cleared_at IS NULL",
            incident_id,
        )
        if still_open:
            return
        # The analysis is written again once resolved: its counts of open violations and failed
        # probes were those of the time it was written.
        done = await conn.fetchval(
            "UPDATE alerter_incidents SET state = 'resolved', resolved_at = $2, resolved_by ="
            " 'llmscope (all violations cleared)', analysis_status = 'pending', analysis_due_at = $2,"
            " revision = revision + 1 WHERE id = $1 AND state <> 'resolved' RETURNING 1",
            incident_id,
            self.clock(),
        )
        if done:
            # Its violations' latest note, if any, in the "resolved" event itself.
            await self._sync_incident_notes(
                conn, await self._incident_episodes(conn, incident_id), publish=False
            )
            await self._outbox_incident(conn, incident_id, "resolved")

    async def _sync_incident_notes(
        self, conn: Conn, episode_ids: Sequence[str], *, publish: bool = True
    ) -> None:
        """A resolved incident shows the latest resolution note by time, as its alerts do: its
        own resolution's, or a later one on one of its violations (that note's action event
        time). A resolution without a note erases none; a merged incident keeps the note naming
        the incident it went into. A changed note publishes the incident (``updated``) unless
        the caller publishes it (``publish=False``)."""
        if not episode_ids:
            return
        changed = await conn.fetch(
            "WITH latest AS ("
            " SELECT DISTINCT ON (e.incident_id) e.incident_id, v.note, v.note_at"
            " FROM alerter_incident_episodes e JOIN alerter_violation_actions v USING (episode_id)"
            " WHERE e.incident_id IN (SELECT incident_id FROM alerter_incident_episodes"
            "                         WHERE episode_id = ANY($1::text[]))"
            " AND v.resolved_at IS NOT NULL AND v.note IS NOT NULL AND v.note_at IS NOT NULL"
            " ORDER BY e.incident_id, v.note_at DESC, v.episode_id DESC)"
            " UPDATE alerter_incidents i SET resolved_note = l.note, resolved_note_at = l.note_at,"
            " revision = i.revision + 1 FROM latest l"
            " WHERE i.id = l.incident_id AND i.state = 'resolved' AND i.merged_into IS NULL"
            " AND (i.resolved_note_at IS NULL OR l.note_at > i.resolved_note_at)"
            " AND i.resolved_note IS DISTINCT FROM l.note"
            " RETURNING i.id",
            list(episode_ids),
        )
        for r in sorted(changed, key=lambda r: str(r["id"])) if publish else ():
            await self._outbox_incident(conn, r["id"], "updated")

    async def _incident_episodes(self, conn: Conn, incident_id: str) -> list[str]:
        rows = await conn.fetch(
            "SELECT episode_id FROM alerter_incident_episodes WHERE incident_id = $1", incident_id
        )
        return [r["episode_id"] for r in rows]

    async def lock_rows(
        self,
        conn: Conn,
        episode_ids: Sequence[str],
        *,
        incidents: Sequence[str] = (),
        groups: bool = False,
    ) -> None:
        """Take the row locks a change of these episodes needs, in the one order every path of
        the alerter takes them: the advisory locks of ingest and merges (provider, host) come
        first where a path takes them; then the incidents (the episodes' and ``incidents``, by
        id); then, with ``groups``, the active groups holding the episodes (by id; a flush holds
        its group before it touches its alerts); then the alerts (by episode id).

        Postgres holds a row lock to the end of the transaction, so a path that locks here
        first and then updates in any order never waits on a row out of this order: a person
        resolving an incident (incident, then its alerts) and the engine clearing its last
        violation (the alert, then the incident) once deadlocked. ``FOR NO KEY UPDATE`` is what
        the UPDATEs that follow take anyway (a new episode's foreign key check still passes)."""
        ids = sorted(set(episode_ids))
        await conn.execute(
            "SELECT 1 FROM alerter_incidents WHERE id = ANY($2::text[]) OR id IN (SELECT incident_id"
            " FROM alerter_incident_episodes WHERE episode_id = ANY($1::text[]))"
            " ORDER BY id FOR NO KEY UPDATE",
            ids,
            sorted(set(incidents)),
        )
        if groups:
            await conn.execute(
                "SELECT 1 FROM alerter_groups WHERE state = 'active' AND id IN (SELECT group_id"
                " FROM alerter_group_alerts WHERE episode_id = ANY($1::text[]))"
                " ORDER BY id FOR NO KEY UPDATE",
                ids,
            )
        await conn.execute(
            "SELECT 1 FROM alerter_alerts WHERE episode_id = ANY($1::text[]) ORDER BY episode_id"
            " FOR NO KEY UPDATE",
            ids,
        )

    async def acknowledge_incident(self, incident_id: str, by: str, note: str | None = None) -> bool:
        """Acknowledge an incident and all its violations (reminders stop)."""
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            ok = await conn.fetchval(
                "UPDATE alerter_incidents SET state = 'acknowledged', acknowledged_at = $2,"
                " acknowledged_by = $3, acknowledged_note = $4,"
                " revision = revision + 1 WHERE id = $1 AND state = 'open' RETURNING 1",
                incident_id,
                now,
                by,
                note,
            )
            if not ok:
                return False
            # The incident's row is held (the UPDATE above); its alerts next, in order (lock_rows).
            await self.lock_rows(
                conn, await self._incident_episodes(conn, incident_id), incidents=[incident_id]
            )
            await conn.execute(
                "UPDATE alerter_alerts SET acknowledged_at = $2, acknowledged_by = $3 WHERE"
                " acknowledged_at IS NULL"
                " AND episode_id IN (SELECT episode_id FROM alerter_incident_episodes WHERE"
                " incident_id = $1)",
                incident_id,
                now,
                by,
            )
            await self._outbox_incident(conn, incident_id, "acknowledged")
            return True

    async def resolve_incident(self, incident_id: str, by: str, note: str | None = None) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            ok = await conn.fetchval(
                "UPDATE alerter_incidents SET state = 'resolved', resolved_at = $2, resolved_by = $3,"
                " resolved_note = $4,"
                " resolved_note_at = CASE WHEN $4::text IS NULL THEN NULL ELSE $2::timestamptz END,"
                " analysis_status = 'pending', analysis_due_at = $2,"
                " revision = revision + 1 WHERE id = $1 AND state <> 'resolved' RETURNING 1",
                incident_id,
                self.clock(),
                by,
                note,
            )
            if ok:
                # Its violations (and the warnings grouped under it) that still fire are resolved
                # by this person: the channels they paged are told so now (_hand_resolved).
                episodes = await conn.fetch(
                    "SELECT episode_id FROM alerter_incident_episodes WHERE incident_id = $1"
                    " UNION SELECT ga.episode_id FROM alerter_group_alerts ga"
                    " JOIN alerter_groups g ON g.id = ga.group_id WHERE g.state = 'active'"
                    " AND g.labels @> jsonb_build_array(jsonb_build_array('incident', $1::text))",
                    incident_id,
                )
                await self._hand_resolved(conn, [r["episode_id"] for r in episodes], by, note)
                # Resolved without a note: a later note on one of its violations stands.
                await self._sync_incident_notes(
                    conn, await self._incident_episodes(conn, incident_id), publish=False
                )
                await self._outbox_incident(conn, incident_id, "resolved")
            return bool(ok)

    async def _hand_resolved(
        self, conn: Conn, episode_ids: Sequence[str], by: str, note: str | None, at: datetime | None = None
    ) -> int:
        """Mark still-firing episodes resolved by a person and flush their groups at once.

        The flush sends the usual ``resolved`` message to each channel told of them (naming who),
        and records them as told resolved: their later clear sends nothing more. A channel that
        was never told (the group still in group_wait) gets nothing: the group closes silently.
        """
        now = self.clock()
        # The caller holds the episodes' incidents; their groups, then the alerts (lock_rows).
        await self.lock_rows(conn, episode_ids, groups=True)
        marked = [
            r["episode_id"]
            for r in await conn.fetch(
                "UPDATE alerter_alerts SET resolved_at = $2, resolved_by = $3, resolved_note = $4"
                " WHERE episode_id = ANY($1::text[]) AND cleared_at IS NULL AND resolved_at IS NULL"
                " RETURNING episode_id",
                list(episode_ids),
                at or now,
                by,
                note,
            )
        ]
        if marked:
            await conn.execute(
                "UPDATE alerter_groups SET next_flush_at = least(next_flush_at, $2) WHERE state = 'active'"
                " AND id IN (SELECT group_id FROM alerter_group_alerts WHERE episode_id = ANY($1::text[]))",
                marked,
                now,
            )
        return len(marked)

    async def sync_hand_resolutions(self) -> int:
        """Violations a person resolved through the API while they still fire here (their
        action came before the violation); how many."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._apply_hand_resolutions(conn, None)

    async def _apply_hand_resolutions(self, conn: Conn, episode_ids: Sequence[str] | None) -> int:
        rows = await conn.fetch(
            "SELECT a.episode_id, v.resolved_by, v.resolved_at, v.note FROM alerter_alerts a"
            " JOIN alerter_violation_actions v ON v.episode_id = a.episode_id"
            " WHERE a.cleared_at IS NULL AND a.resolved_at IS NULL AND v.resolved_at IS NOT NULL"
            " AND ($1::text[] IS NULL OR a.episode_id = ANY($1::text[]))"
            " ORDER BY a.episode_id",
            None if episode_ids is None else list(episode_ids),
        )
        # All of them at once, in order (lock_rows): one by one, two episodes' incidents would
        # be locked in episode order, not in the incidents' own.
        await self.lock_rows(conn, [r["episode_id"] for r in rows], groups=True)
        done = 0
        for r in rows:
            done += await self._hand_resolved(
                conn, [r["episode_id"]], r["resolved_by"] or "someone", r["note"], r["resolved_at"]
            )
        return done

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
            "SELECT episode_id FROM alerter_incident_episodes e JOIN alerter_alerts a USING (episode_id)"
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

    # -- analysis (off the ack path) ------------------------------------------------------------

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
