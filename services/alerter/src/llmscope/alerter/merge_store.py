"""Folding a host's incidents into its cascade in Postgres (the decision: merging.py).

A merge runs under the host's advisory lock (the one ingest takes), at ingest right after a
violation of the host was placed, and from the dispatcher every tick (a one-point episode becomes
sustained with time alone, no new violation needed). The incidents' providers are locked too, but
only if free at once: a replica correlating one of them meanwhile makes this pass skip the host,
and the next tick tries again (no lock is ever waited for out of order).

What an absorbed incident had moves to the survivor: its violations, their places in the
active alert groups (so the survivor's group tells of them as news in its own thread, and the
absorbed group, left empty, closes without paging again), its Slack threads (copied: its closing
message still replies in them) and its ticket where the survivor has none. It is then resolved,
``merged_into`` naming the survivor.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

import asyncpg

from llmscope.alerter.grouping import ChannelView
from llmscope.alerter.incidents import OpenSignal, forms_incidents
from llmscope.alerter.merging import HostIncident, plan_merge
from llmscope.alerter.messages import IncidentRef
from llmscope.alerter.model import labels_of
from llmscope.alerter.routing import Route, group_key
from llmscope.alerter.store_base import Claim, Conn, alert_from_row, decode_event
from llmscope.alerter.ticket_store import TicketStore
from llmscope.proto.incident import IncidentChange


def lock_key(kind: str, name: str) -> str:
    """The advisory lock ingest and merges take per provider and per host."""
    return f"{kind}:{name}"


class MergeStore(TicketStore):
    """SQL of incident merges; the incident and group parts are Store's (store.py)."""

    async def merge_cascades(self, routes: Sequence[Route]) -> int:
        """One merge pass over every host with several unresolved incidents; incidents merged."""
        hosts = await self.pool.fetch(
            "SELECT host FROM alerter_incidents WHERE state <> 'resolved' AND host <> ''"
            " GROUP BY host HAVING count(*) > 1"
        )
        merged = 0
        for r in hosts:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('llmscope-incident:' || $1))",
                    lock_key("host", r["host"]),
                )
                merged += await self.merge_host(conn, r["host"], routes, locked=(), when=self.clock())
        return merged

    async def merge_host(
        self, conn: Conn, host: str, routes: Sequence[Route], *, locked: Collection[str], when: datetime
    ) -> int:
        """Merge the host's incidents if they now form a cascade; incidents merged. The caller
        holds the host's lock; ``locked``: the providers whose locks it holds too."""
        rows = await conn.fetch(
            "SELECT i.id, i.provider, i.opened_at, i.cascade, i.last_violation_at, EXISTS (SELECT 1"
            " FROM alerter_groups g JOIN alerter_notifications n ON n.group_id = g.id"
            " WHERE g.labels @> jsonb_build_array(jsonb_build_array('incident', i.id))) AS told"
            " FROM alerter_incidents i WHERE i.host = $1 AND i.state <> 'resolved' ORDER BY i.id",
            host,
        )
        if len(rows) < 2:
            return 0
        for provider in sorted({r["provider"] for r in rows} - set(locked)):
            if not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtext('llmscope-incident:' || $1))",
                lock_key("provider", provider),
            ):
                return 0  # a replica is correlating this provider; the next pass merges
        signals: dict[str, list[OpenSignal]] = {}
        for s in await conn.fetch(
            "SELECT e.incident_id, a.model, a.rule, a.severity, a.opened_at,"
            " jsonb_array_length(a.open_event->'point_ids') AS n"
            " FROM alerter_incident_episodes e JOIN alerter_alerts a USING (episode_id)"
            " WHERE e.incident_id = ANY($1::text[]) AND a.cleared_at IS NULL AND a.opened_at <= $2",
            [r["id"] for r in rows],
            when,
        ):
            if forms_incidents(s["severity"], self.incident_min_severity):
                signals.setdefault(s["incident_id"], []).append(
                    OpenSignal(s["model"], s["rule"], s["n"] or 0, s["opened_at"])
                )
        plan = plan_merge(
            [
                HostIncident(
                    r["id"],
                    r["opened_at"],
                    r["last_violation_at"],
                    r["cascade"],
                    tuple(signals.get(r["id"], ())),
                    told=r["told"],
                )
                for r in rows
            ],
            when,
            self.sustain_after,
            self.incident_window,
        )
        if plan is None:
            return 0
        told = {r["id"] for r in rows if r["told"]}
        for absorbed in plan.absorbed:
            if absorbed in told:
                # Both paged before the merge (one was held too briefly): its group's closing
                # message (_flush_merged) tells each channel it told where the incident went.
                self._log.warning(
                    "incident merged away had already paged; its threads get a closing message",
                    incident=absorbed,
                    survivor=plan.survivor,
                )
            await self._absorb(conn, absorbed, plan.survivor, {r.name: r for r in routes})
        last = max(r["last_violation_at"] for r in rows if r["id"] in {plan.survivor, *plan.absorbed})
        await self._refresh_incident(conn, plan.survivor, "updated", last_violation_at=last)
        self._log.info(
            "incidents merged into the host's cascade",
            host=host,
            survivor=plan.survivor,
            absorbed=plan.absorbed,
        )
        return len(plan.absorbed)

    async def _absorb(self, conn: Conn, absorbed: str, survivor: str, routes: Mapping[str, Route]) -> None:
        now = self.clock()
        episodes = [
            r["episode_id"]
            for r in await conn.fetch(
                "UPDATE alerter_incident_episodes SET incident_id = $2 WHERE incident_id = $1"
                " RETURNING episode_id",
                absorbed,
                survivor,
            )
        ]
        # Warnings grouped under the absorbed incident (store.py) are not its episodes: they move too.
        episodes += [
            r["episode_id"]
            for r in await conn.fetch(
                "SELECT ga.episode_id FROM alerter_group_alerts ga"
                " JOIN alerter_groups g ON g.id = ga.group_id WHERE g.state = 'active'"
                " AND g.labels @> jsonb_build_array(jsonb_build_array('incident', $1::text))",
                absorbed,
            )
            if r["episode_id"] not in episodes
        ]
        emptied: set[int] = set()
        for r in await conn.fetch(
            "SELECT ga.group_id, g.route, g.group_key, a.episode_id, a.open_event::text AS open_event"
            " FROM alerter_group_alerts ga JOIN alerter_groups g ON g.id = ga.group_id"
            " JOIN alerter_alerts a USING (episode_id)"
            " WHERE ga.episode_id = ANY($1::text[]) AND g.state = 'active' ORDER BY ga.group_id, a.opened_at",
            episodes,
        ):
            route = routes.get(r["route"])
            event = decode_event(r["open_event"])
            if route is None or event is None:
                continue
            labels = {**labels_of(event), "incident": survivor}
            if group_key(route, labels) == r["group_key"]:
                continue  # this route does not group by incident: the group stays as it is
            target = await self._join_group(conn, route, labels, r["episode_id"])
            await conn.execute(
                "INSERT INTO alerter_group_alerts (group_id, episode_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING",
                target,
                r["episode_id"],
            )
            await conn.execute(
                "DELETE FROM alerter_group_alerts WHERE group_id = $1 AND episode_id = $2",
                r["group_id"],
                r["episode_id"],
            )
            emptied.add(r["group_id"])
        if emptied:
            # An emptied group that already told a channel flushes once more, at once: a closing
            # message per such channel (_flush_merged), through the usual claim, retry and record.
            await conn.execute(
                "UPDATE alerter_groups g SET merged_into = $3, next_flush_at = $2"
                " WHERE g.id = ANY($1::bigint[])"
                " AND NOT EXISTS (SELECT 1 FROM alerter_group_alerts ga WHERE ga.group_id = g.id)"
                " AND EXISTS (SELECT 1 FROM alerter_notifications n WHERE n.group_id = g.id"
                " AND n.status IN ('sent', 'sending'))",
                list(emptied),
                now,
                survivor,
            )
            # One that told nobody closes; a message of it still being sent finishes.
            await conn.execute(
                "UPDATE alerter_groups g SET state = 'closed', closed_at = $2 WHERE g.id = ANY($1::bigint[])"
                " AND g.merged_into IS NULL"
                " AND NOT EXISTS (SELECT 1 FROM alerter_group_alerts ga WHERE ga.group_id = g.id)",
                list(emptied),
                now,
            )
        # The thread people already follow carries on where the survivor has none on that channel.
        # Copied, not moved: the absorbed incident's closing message still replies in its thread.
        await conn.execute(
            "INSERT INTO alerter_threads (channel, thread_key, ref, created_at)"
            " SELECT channel, 'incident:' || $2, ref, created_at FROM alerter_threads"
            " WHERE thread_key = 'incident:' || $1 ON CONFLICT (channel, thread_key) DO NOTHING",
            absorbed,
            survivor,
        )
        # Likewise its ticket: one ticket for the cascade. If both have one, the absorbed one is
        # closed by the ticket worker with the resolution note naming the survivor.
        await conn.execute(
            "UPDATE alerter_incident_tickets SET incident_id = $2 WHERE incident_id = $1"
            " AND NOT EXISTS (SELECT 1 FROM alerter_incident_tickets WHERE incident_id = $2)",
            absorbed,
            survivor,
        )
        await conn.execute(
            "UPDATE alerter_incidents SET state = 'resolved', resolved_at = $3,"
            " resolved_by = 'llmscope (merged into ' || $2 || ')',"
            " resolved_note = 'Merged into incident ' || $2 || ', the cascade on its host.',"
            " merged_into = $2, held_until = NULL, analysis_status = 'done', revision = revision + 1"
            " WHERE id = $1",
            absorbed,
            survivor,
            now,
        )
        await self._outbox_incident(conn, absorbed, "resolved")

    async def _flush_merged(
        self, conn: Conn, g: asyncpg.Record, route: Route, channels: Mapping[str, ChannelView], now: datetime
    ) -> list[Claim]:
        """The closing message of a merged incident's group, one per channel it had told (a
        PagerDuty channel's resolves the absorbed incident's key); then the group closes.

        An Alertmanager's carries the alerts it was last told firing, to be told resolved under
        the absorbed incident's labels with an explicit ``endsAt`` (the merged violations fire on
        under the survivor's labels, a different alert to Alertmanager), rather than left to
        expire at its resolve timeout. A channel with ``send_resolved: false`` gets none: the
        closing message ends the absorbed incident as a resolution does, and such a channel
        (PagerDuty's included, whose alerts it leaves for people to resolve) asked for no
        resolutions."""
        told = await conn.fetch(
            "SELECT DISTINCT channel FROM alerter_notifications WHERE group_id = $1"
            " AND status IN ('sent', 'sending') AND reason <> 'merged' ORDER BY channel",
            g["id"],
        )
        claims = []
        labels = dict(json.loads(g["labels"]))
        for r in told:
            view = channels.get(r["channel"])
            if view is None or not view.send_resolved:
                continue
            ended: list[str] = []
            if view.kind == "alertmanager":
                ended = list(
                    await conn.fetchval(
                        "SELECT firing FROM alerter_notifications WHERE group_id = $1 AND channel = $2"
                        " AND status IN ('sent', 'sending') AND reason <> 'merged' ORDER BY seq DESC LIMIT 1",
                        g["id"],
                        view.name,
                    )
                    or ()
                )
                if not ended:
                    continue  # it was last told these alerts resolved: nothing fires there
            seq = await conn.fetchval(
                "SELECT coalesce(max(seq), 0) + 1 FROM alerter_notifications WHERE group_id = $1 AND"
                " channel = $2",
                g["id"],
                view.name,
            )
            nid = f"{g['id']}:{view.name}:{seq}"
            await conn.execute(
                "INSERT INTO alerter_notifications (id, group_id, route, group_key, channel,"
                " channel_kind, seq, reason, status, firing, resolved, announce_resolved, claimed_by,"
                " lease_until, created_at)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,'merged','sending','{}',$11,$11,$8,$9,$10)",
                nid,
                g["id"],
                route.name,
                g["group_key"],
                view.name,
                view.kind,
                seq,
                self.instance,
                now + self.lease,
                now,
                ended,
            )
            rows = await conn.fetch("SELECT * FROM alerter_alerts WHERE episode_id = ANY($1::text[])", ended)
            alerts = {a.episode_id: a for a in map(alert_from_row, rows)}
            claims.append(
                Claim(
                    id=nid,
                    group_id=g["id"],
                    route=route.name,
                    group_key=g["group_key"],
                    group_labels=labels,
                    channel=view.name,
                    channel_kind=view.kind,
                    reason="merged",
                    firing=(),
                    resolved=tuple(alerts[e] for e in ended if e in alerts),
                    lead_episode_id=g["lead_episode_id"],
                    created_at=now,
                    merged_into=g["merged_into"],
                )
            )
        await conn.execute(
            "UPDATE alerter_groups SET state = 'closed', closed_at = $2 WHERE id = $1", g["id"], now
        )
        return claims

    async def incident_refs(self, incident_ids: Collection[str]) -> dict[str, IncidentRef]:
        """Incidents by id, as messages name them (a merged group's and its survivor)."""
        rows = await self.pool.fetch(
            "SELECT id, title, models, cascade, host FROM alerter_incidents WHERE id = ANY($1::text[])",
            list(incident_ids),
        )
        return {
            r["id"]: IncidentRef(r["id"], r["title"], tuple(r["models"]), r["cascade"], r["host"])
            for r in rows
        }

    # Store's group part (store.py) and incident parts (incident_store.py, incident_outbox_store.py); those
    # come first in its MRO.

    async def _join_group(self, conn: Conn, route: Route, labels: Mapping[str, str], episode_id: str) -> int:
        raise NotImplementedError

    async def _refresh_incident(
        self, conn: Conn, incident_id: str, change: IncidentChange, *, last_violation_at: datetime
    ) -> None:
        raise NotImplementedError

    async def _outbox_incident(self, conn: Conn, incident_id: str, change: IncidentChange) -> None:
        raise NotImplementedError
