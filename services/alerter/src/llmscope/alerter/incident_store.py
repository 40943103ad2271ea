"""The alerter's incidents: violations correlated into incidents (opened, joined, refreshed,
resolved when their last violation clears), and the one order every path takes row locks in
(``lock_rows``). A part of ``Store`` (store.py), on ``incident_outbox_store.IncidentOutboxStore``;
hand resolution (``hand_resolution_store``) and analyses (``analysis_store``) build on it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from llmscope.alerter.analysis import summarize
from llmscope.alerter.incident_outbox_store import IncidentOutboxStore
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
from llmscope.alerter.resemblance_store import link_resembling
from llmscope.alerter.store_base import Conn
from llmscope.alerter.store_base import decode_event as _event
from llmscope.proto.incident import IncidentChange
from llmscope.proto.violation import ViolationEvent


class IncidentStore(IncidentOutboxStore):
    """Incidents opened, joined and cleared by the violations they correlate."""

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
