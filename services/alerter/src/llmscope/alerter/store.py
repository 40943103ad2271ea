"""Postgres state of the alerter: alerts, groups, the notification log, incidents, outbox.

``Store`` is assembled from one part per concern on ``store_base.StoreBase``: this module (ingest,
grouping and delivery claims), ``incident_store`` (incidents, hand resolution, the incident outbox
and analyses), ``merge_store`` and ``ticket_store``, ``silence_store`` and ``retention_store``. It holds the
alerter's own tables only: what it needs of the API comes over the bus (``api_view``,
``violation_action.v1``).

Every decision that leads to a message is taken in a transaction that also claims the
notification row (status ``sending`` with a lease); the message is sent only after that commit.
Two replicas never claim the same group at once (``FOR UPDATE SKIP LOCKED``) and never reuse a
notification id (unique ``group, channel, seq``); a claim whose sender died is taken over when its
lease runs out, so a crash between claim and send delays a message but never drops it.

Row locks are taken in one order on every path, so no two transactions deadlock on them: the
advisory locks of ingest and merges (provider, host), then incidents (by id), then active groups
(by id), then alerts (by episode id); ``IncidentStore.lock_rows`` takes them so at the start of a
change (a flush holds its group before its alerts; a clear its incident before its alert). One
exception, made safe another way: an ingest batch holds its alerts before it joins a group (which
group is known only then), so a flush, holding its groups, writes only alerts no one else holds
(``SKIP LOCKED``; what it skips is written on a later flush, and decided by as if written).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta

import asyncpg

from llmscope.alerter.dedup import LastNotification
from llmscope.alerter.grouping import ChannelView, decide, first_flush_at
from llmscope.alerter.incident_store import (
    AnalysisJob as AnalysisJob,  # re-exported: callers import it from here
)
from llmscope.alerter.incident_store import IncidentStore
from llmscope.alerter.incidents import (
    forms_incidents,
)
from llmscope.alerter.merge_store import MergeStore, lock_key
from llmscope.alerter.model import labels_of
from llmscope.alerter.retention_store import RetentionStore
from llmscope.alerter.retry import Attempt, Outcome
from llmscope.alerter.routing import Route, group_key, group_labels, route_alert
from llmscope.alerter.silence_store import SilenceStore
from llmscope.alerter.silences import Silence
from llmscope.alerter.store_base import Claim as Claim  # re-exported: callers import it from here
from llmscope.alerter.store_base import Conn as Conn  # re-exported: tests and callers import it from here
from llmscope.alerter.store_base import alert_from_row as _alert
from llmscope.alerter.store_base import decode_event as _event
from llmscope.alerter.store_base import encode_event as _json
from llmscope.proto.violation import ViolationEvent
from llmscope.proto.violation_action import ViolationActionEvent

_INSERT_ACTION = (
    "INSERT INTO alerter_violation_actions AS v (episode_id, acknowledged_by, acknowledged_at,"
    " resolved_by, resolved_at, note, seq, note_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    " ON CONFLICT (episode_id)"
)
# A note's time is the event's that changed it (the same note in a later state keeps its time).
_NOTE_AT = (
    " note_at = CASE WHEN v.note IS NOT DISTINCT FROM EXCLUDED.note THEN v.note_at ELSE EXCLUDED.note_at END,"
)
# A violation_action.v1 event is the episode's whole state at the API, numbered by ``seq``: it
# replaces the row only when it is newer (an older one delivered late, a redelivery, a replay or
# the second of two API replicas' publishes, changes nothing), every column of it. A row with no
# seq holds only events of an API from before seq: all older.
_NEWER_ACTION = (
    _INSERT_ACTION + " DO UPDATE SET acknowledged_by = EXCLUDED.acknowledged_by,"
    " acknowledged_at = EXCLUDED.acknowledged_at, resolved_by = EXCLUDED.resolved_by,"
    " resolved_at = EXCLUDED.resolved_at," + _NOTE_AT + " note = EXCLUDED.note, seq = EXCLUDED.seq"
    " WHERE v.seq IS NULL OR v.seq < EXCLUDED.seq"
)
# An event without seq (an API from before it; still in the stream, or replayed) is older than
# any with one: it changes nothing of a row a numbered event wrote. Among themselves they merge
# as before seq: the first acknowledgement and resolution kept (the API never changes them), the
# note of the one that came last (their order is unknown).
_UNSEQUENCED_ACTION = (
    _INSERT_ACTION + " DO UPDATE SET"
    " acknowledged_by = coalesce(v.acknowledged_by, EXCLUDED.acknowledged_by),"
    " acknowledged_at = coalesce(v.acknowledged_at, EXCLUDED.acknowledged_at),"
    " resolved_by = coalesce(v.resolved_by, EXCLUDED.resolved_by),"
    " resolved_at = coalesce(v.resolved_at, EXCLUDED.resolved_at),"
    " note_at = CASE WHEN EXCLUDED.note IS NULL OR EXCLUDED.note IS NOT DISTINCT FROM v.note THEN v.note_at"
    " ELSE EXCLUDED.note_at END,"
    " note = coalesce(EXCLUDED.note, v.note) WHERE v.seq IS NULL"
)


class Store(IncidentStore, MergeStore, SilenceStore, RetentionStore):
    """All of the alerter's SQL. ``clock`` gives aware UTC datetimes (injected for tests)."""

    # -- ingest (on the JetStream ack path) ---------------------------------------------------

    async def ingest(
        self, events: Sequence[ViolationEvent], routes: Sequence[Route], allowed_rules: frozenset[str] | None
    ) -> None:
        """Record violations, place them in groups and incidents; one transaction for the batch."""
        async with self.pool.acquire() as conn, conn.transaction():
            # Incidents are correlated per provider and per host (a cascade on one GPU host spans
            # providers); replicas take these locks first and in order, so their transactions
            # cannot deadlock on them.
            providers = frozenset(ev.provider for ev in events)
            keys = {lock_key("provider", p) for p in providers} | {
                lock_key("host", ev.host) for ev in events if ev.host
            }
            for key in sorted(keys):
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('llmscope-incident:' || $1))", key)
            # Then the rows the batch changes, in the order every path takes them (lock_rows): a
            # clear locks its incident before its alert, as a person resolving the incident does,
            # and so do the incidents its new violations may join (_incident_open's candidates):
            # taken later, a person resolving one (holding it, then waiting on an alert of the
            # batch, a warning grouped under it) deadlocked with the batch, and a violation could
            # join an incident resolved meanwhile.
            await self.lock_rows(
                conn, [ev.episode_id for ev in events], incidents=await self._joinable_incidents(conn, events)
            )
            for ev in events:
                if ev.state == "open":
                    await self._ingest_open(conn, ev, routes, allowed_rules, providers)
                else:
                    await self._ingest_clear(conn, ev)

    async def _joinable_incidents(self, conn: Conn, events: Sequence[ViolationEvent]) -> list[str]:
        """The unresolved incidents the batch's new violations may join: the candidates
        ``_incident_open`` reads (by provider or host, within the window). No other transaction
        makes new ones meanwhile: they are made under the advisory locks this batch holds."""
        opens = [
            ev
            for ev in events
            if ev.state == "open" and forms_incidents(ev.severity, self.incident_min_severity)
        ]
        if not opens:
            return []
        since = min(ev.opened_at or ev.ts for ev in opens) - timedelta(seconds=self.incident_window)
        rows = await conn.fetch(
            "SELECT id FROM alerter_incidents WHERE state <> 'resolved'"
            " AND (provider = ANY($1::text[]) OR (host <> '' AND host = ANY($2::text[])))"
            " AND last_violation_at >= $3",
            sorted({ev.provider for ev in opens}),
            sorted({ev.host for ev in opens if ev.host}),
            since,
        )
        return [str(r["id"]) for r in rows]

    async def _ingest_open(
        self,
        conn: Conn,
        ev: ViolationEvent,
        routes: Sequence[Route],
        allowed_rules: frozenset[str] | None,
        locked_providers: Collection[str],
    ) -> None:
        opened = ev.opened_at or ev.ts
        inserted = await conn.fetchval(
            "INSERT INTO alerter_alerts (episode_id, provider, model, host, rule, severity, metric,"
            " opened_at, open_event) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9::jsonb)"
            " ON CONFLICT (episode_id) DO NOTHING RETURNING episode_id",
            ev.episode_id,
            ev.provider,
            ev.model,
            ev.host,
            ev.rule,
            ev.severity,
            ev.metric,
            opened,
            _json(ev),
        )
        if inserted is None:
            return  # a redelivery: everything below happened already
        early = await conn.fetchval(
            "DELETE FROM alerter_early_clears WHERE episode_id = $1 RETURNING event::text", ev.episode_id
        )
        if early is not None:
            cleared = _event(early)
            assert cleared is not None
            await conn.execute(
                "UPDATE alerter_alerts SET cleared_at = $2, cleared_event = $3::jsonb WHERE episode_id = $1",
                ev.episode_id,
                cleared.ts,
                early,
            )
        incident_id, held = "", None
        forms = forms_incidents(ev.severity, self.incident_min_severity)
        if forms:
            incident_id, held = await self._incident_open(conn, ev)
            if early is not None:
                await self._incident_clear(conn, ev.episode_id)
        else:
            # A warning of a model in an unresolved incident is news in that incident's thread,
            # not a page of its own (it stays out of the incident's episodes).
            incident_id = await self._unresolved_incident_of(conn, ev)
        # The incident is a label, so grouping by it makes one cascade one message per channel.
        labels = {**labels_of(ev), "incident": incident_id}
        for route in route_alert(routes, labels, allowed_rules=allowed_rules):
            group_id = await self._join_group(conn, route, labels, ev.episode_id, not_before=held)
            await conn.execute(
                "INSERT INTO alerter_group_alerts (group_id, episode_id) VALUES ($1, $2) ON CONFLICT"
                " DO NOTHING",
                group_id,
                ev.episode_id,
            )
            if forms and incident_id:
                await self._fold_model_group(conn, route, labels, group_id)
        if forms and incident_id and ev.host:
            # This violation may have made the host a cascade: its models' own incidents join it.
            await self.merge_host(conn, ev.host, routes, locked=locked_providers, when=opened)
        # What a person did through the API before this violation reached us (the two come in
        # separate streams) applies now, before its group can first flush.
        if await conn.fetchval(
            "SELECT 1 FROM alerter_violation_actions WHERE episode_id = $1", ev.episode_id
        ):
            await self._sync_acks(conn, [ev.episode_id])
            await self._apply_hand_resolutions(conn, [ev.episode_id])

    async def _join_group(
        self,
        conn: Conn,
        route: Route,
        labels: Mapping[str, str],
        episode_id: str,
        *,
        not_before: datetime | None = None,
    ) -> int:
        """The route's active group for ``labels``; a new one first flushes after ``group_wait``,
        and not before ``not_before`` (a held incident, merging.py)."""
        key = group_key(route, labels)
        while True:
            # FOR SHARE waits for a flush holding the group; a group it closed is then skipped.
            group_id = await conn.fetchval(
                "SELECT id FROM alerter_groups WHERE route = $1 AND group_key = $2 AND state ="
                " 'active' FOR SHARE",
                route.name,
                key,
            )
            if group_id is not None:
                return int(group_id)
            now = self.clock()
            group_id = await conn.fetchval(
                "INSERT INTO alerter_groups (route, group_key, labels, lead_episode_id, created_at,"
                " next_flush_at)"
                " VALUES ($1, $2, $3::jsonb, $4, $5, $6)"
                " ON CONFLICT (route, group_key) WHERE state = 'active' DO NOTHING RETURNING id",
                route.name,
                key,
                json.dumps(list(group_labels(route, labels).items())),  # pairs keep group_by order
                episode_id,
                now,
                max(first_flush_at(route, now), not_before or now),
            )
            if group_id is not None:
                return int(group_id)

    async def _unresolved_incident_of(self, conn: Conn, ev: ViolationEvent) -> str:
        """The newest unresolved incident naming this provider/model, or ""."""
        found = await conn.fetchval(
            "SELECT id FROM alerter_incidents WHERE state <> 'resolved' AND provider = $1"
            " AND $2 = ANY(models) AND merged_into IS NULL ORDER BY opened_at DESC LIMIT 1",
            ev.provider,
            ev.model,
        )
        return "" if found is None else str(found)

    async def _fold_model_group(
        self, conn: Conn, route: Route, labels: Mapping[str, str], target: int
    ) -> None:
        """One page per degradation: the model's group of warnings on this route (grouped by
        provider/model while outside any incident) joins the critical's incident group.

        Its alerts move there and it closes without sending anything more. If it told nobody
        yet, its warnings go out in the critical's message (which keeps its own timing, never
        later); if it told a channel, that channel's first message of the incident group counts
        it as already told (no "first" page again: an escalation of what it knows) and refers
        to it instead of repeating it; the resolution of all comes once, from the incident group.
        """
        if "incident" not in route.group_by:
            return
        key = group_key(route, {**labels, "incident": ""})
        if key == group_key(route, labels):
            return
        # FOR UPDATE waits for a flush of that group in progress: what it sent is then recorded.
        folded = await conn.fetchval(
            "SELECT id FROM alerter_groups WHERE route = $1 AND group_key = $2 AND state = 'active'"
            " AND merged_into IS NULL AND id <> $3 FOR UPDATE",
            route.name,
            key,
            target,
        )
        if folded is None:
            return
        await conn.execute(
            "INSERT INTO alerter_group_alerts (group_id, episode_id) SELECT $2, episode_id"
            " FROM alerter_group_alerts WHERE group_id = $1 ON CONFLICT DO NOTHING",
            folded,
            target,
        )
        await conn.execute("DELETE FROM alerter_group_alerts WHERE group_id = $1", folded)
        await conn.execute(
            "UPDATE alerter_groups SET state = 'closed', closed_at = $2, folded_into = $3 WHERE id = $1",
            folded,
            self.clock(),
            target,
        )
        # The Slack thread its warning started carries on as the incident's (where it has none).
        await conn.execute(
            "INSERT INTO alerter_threads (channel, thread_key, ref, created_at)"
            " SELECT channel, 'incident:' || $2, ref, created_at FROM alerter_threads"
            " WHERE thread_key = 'group:' || $1::bigint ON CONFLICT (channel, thread_key) DO NOTHING",
            folded,
            labels["incident"],
        )
        self._log.info("warnings of the model folded into its incident's group", group=folded, into=target)

    async def folded_thread(self, group_id: int, channel: str) -> str | None:
        """The first message a group folded into this one sent on ``channel`` (the warning of the
        degradation): this group's messages on that channel are replies in its thread."""
        found = await self.pool.fetchval(
            "SELECT n.id FROM alerter_notifications n JOIN alerter_groups f ON f.id = n.group_id"
            " WHERE f.folded_into = $1 AND n.channel = $2 AND n.status IN ('sent', 'sending')"
            " ORDER BY coalesce(n.sent_at, n.created_at), n.seq LIMIT 1",
            group_id,
            channel,
        )
        return None if found is None else str(found)

    async def told_before(self, group_id: int, channel: str, notification_id: str) -> dict[str, datetime]:
        """Episodes a group folded into this one had told ``channel`` firing, and when, for the
        channel's first message of this group (later ones are updates of that first one)."""
        rows = await self.pool.fetch(
            "SELECT n.firing, coalesce(n.sent_at, n.created_at) AS at FROM alerter_notifications n"
            " JOIN alerter_groups f ON f.id = n.group_id WHERE f.folded_into = $1 AND n.channel = $2"
            " AND n.status IN ('sent', 'sending') ORDER BY at",
            group_id,
            channel,
        )
        if not rows:
            return {}
        earlier = await self.pool.fetchval(
            "SELECT 1 FROM alerter_notifications WHERE group_id = $1 AND channel = $2 AND id <> $3"
            " AND status IN ('sent', 'sending') AND seq < (SELECT seq FROM alerter_notifications"
            " WHERE id = $3) LIMIT 1",
            group_id,
            channel,
            notification_id,
        )
        if earlier:
            return {}
        told: dict[str, datetime] = {}
        for r in rows:
            for episode in r["firing"]:
                told.setdefault(episode, r["at"])
        return told

    async def _ingest_clear(self, conn: Conn, ev: ViolationEvent) -> None:
        updated = await conn.fetchval(
            "UPDATE alerter_alerts SET cleared_at = $2, cleared_event = $3::jsonb"
            " WHERE episode_id = $1 AND cleared_at IS NULL RETURNING episode_id",
            ev.episode_id,
            ev.ts,
            _json(ev),
        )
        if updated is None:
            known = await conn.fetchval("SELECT 1 FROM alerter_alerts WHERE episode_id = $1", ev.episode_id)
            if known is None:
                await conn.execute(
                    "INSERT INTO alerter_early_clears (episode_id, event) VALUES ($1, $2::jsonb)"
                    " ON CONFLICT DO NOTHING",
                    ev.episode_id,
                    _json(ev),
                )
            return
        await self._incident_clear(conn, ev.episode_id)

    # -- flushing groups ----------------------------------------------------------------------

    async def claim_due(
        self,
        routes: Sequence[Route],
        channels: Mapping[str, ChannelView],
        silences: Sequence[Silence],
        limit: int = 50,
    ) -> list[Claim]:
        """Flush due groups: mute -> dedup, then claim a notification row per message to send."""
        now = self.clock()
        by_name = {r.name: r for r in routes}
        claims: list[Claim] = []
        async with self.pool.acquire() as conn, conn.transaction():
            groups = await conn.fetch(
                "SELECT * FROM alerter_groups WHERE state = 'active' AND next_flush_at <= $1"
                " ORDER BY next_flush_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                now,
                limit,
            )
            if not groups:
                return []
            all_silences = [*silences, *await self._db_silences(conn, now)]
            for g in groups:
                claims.extend(
                    await self._flush_group(conn, g, by_name.get(g["route"]), channels, all_silences, now)
                )
        return claims

    async def _flush_group(
        self,
        conn: Conn,
        g: asyncpg.Record,
        route: Route | None,
        channels: Mapping[str, ChannelView],
        silences: Sequence[Silence],
        now: datetime,
    ) -> list[Claim]:
        if route is None:
            self._log.warning(
                "route no longer configured; closing its group", route=g["route"], group=g["group_key"]
            )
            await conn.execute(
                "UPDATE alerter_groups SET state = 'closed', closed_at = $2 WHERE id = $1", g["id"], now
            )
            return []
        if g["merged_into"] is not None:
            return await self._flush_merged(conn, g, route, channels, now)
        rows = await conn.fetch(
            "SELECT a.* FROM alerter_alerts a JOIN alerter_group_alerts ga USING (episode_id)"
            " WHERE ga.group_id = $1 ORDER BY a.opened_at, a.episode_id",
            g["id"],
        )
        # The flush holds its group; an ingest batch may hold one of its alerts (a clear) and wait
        # for this group (a new violation joining it): the alerts it writes are only those free
        # now (SKIP LOCKED), or the two would deadlock. What it skips it still decides by here
        # (the acknowledgement is read from where the API's event left it, the mute below is
        # recomputed each flush) and writes on a later flush or by the batch's own sync.
        await self._sync_acks(
            conn, [r["episode_id"] for r in rows if r["acknowledged_at"] is None], skip_locked=True
        )
        rows = await conn.fetch(
            "SELECT a.*, v.acknowledged_at AS api_acknowledged_at, v.acknowledged_by AS api_acknowledged_by"
            " FROM alerter_alerts a JOIN alerter_group_alerts ga USING (episode_id)"
            " LEFT JOIN alerter_violation_actions v ON v.episode_id = a.episode_id"
            " WHERE ga.group_id = $1 ORDER BY a.opened_at, a.episode_id",
            g["id"],
        )
        alerts = [
            _alert(r)
            if r["acknowledged_at"] is not None or r["api_acknowledged_at"] is None
            else dataclasses.replace(
                _alert(r), acknowledged_at=r["api_acknowledged_at"], acknowledged_by=r["api_acknowledged_by"]
            )
            for r in rows
        ]
        latest = await conn.fetch(
            "SELECT DISTINCT ON (channel) channel, status, created_at, firing, resolved"
            " FROM alerter_notifications WHERE group_id = $1 AND status <> 'expired'"
            " ORDER BY channel, seq DESC",
            g["id"],
        )
        last = {
            r["channel"]: LastNotification(r["created_at"], frozenset(r["firing"]), frozenset(r["resolved"]))
            for r in latest
        }
        in_flight = frozenset(r["channel"] for r in latest if r["status"] == "sending")
        # A channel told by a folded warning group (_fold_model_group) and not yet by this one was
        # told those warnings: the critical is news to it, and their resolution is owed to it.
        for r in await conn.fetch(
            "SELECT DISTINCT ON (n.group_id, n.channel) n.channel, n.created_at, n.firing, n.resolved"
            " FROM alerter_notifications n JOIN alerter_groups f ON f.id = n.group_id"
            " WHERE f.folded_into = $1 AND n.status IN ('sent', 'sending')"
            " ORDER BY n.group_id, n.channel, n.seq DESC",
            g["id"],
        ):
            if any(x["channel"] == r["channel"] for x in latest):
                continue
            prev = last.get(r["channel"])
            told = LastNotification(r["created_at"], frozenset(r["firing"]), frozenset(r["resolved"]))
            last[r["channel"]] = (
                told
                if prev is None
                else LastNotification(
                    max(prev.sent_at, told.sent_at), prev.firing | told.firing, prev.resolved | told.resolved
                )
            )
        views = [channels[c] for c in route.channels if c in channels]
        decision = decide(
            route=route,
            alerts=alerts,
            channels=views,
            last=last,
            in_flight=in_flight,
            silences=silences,
            now=now,
        )
        if decision.muted:
            await conn.execute(
                "UPDATE alerter_alerts a SET muted_by = m.silence FROM"
                " (SELECT unnest($1::text[]) AS episode_id, unnest($2::text[]) AS silence) m"
                " WHERE a.episode_id = m.episode_id AND a.muted_by IS DISTINCT FROM m.silence"
                " AND a.episode_id IN (SELECT episode_id FROM alerter_alerts WHERE episode_id ="
                " ANY($1::text[]) FOR NO KEY UPDATE SKIP LOCKED)",
                list(decision.muted),
                list(decision.muted.values()),
            )
        claims = []
        labels = dict(json.loads(g["labels"]))
        for plan in decision.plans:
            seq = await conn.fetchval(
                "SELECT coalesce(max(seq), 0) + 1 FROM alerter_notifications WHERE group_id = $1 AND"
                " channel = $2",
                g["id"],
                plan.channel,
            )
            nid = f"{g['id']}:{plan.channel}:{seq}"
            await conn.execute(
                "INSERT INTO alerter_notifications (id, group_id, route, group_key, channel,"
                " channel_kind, seq,"
                " reason, status, firing, resolved, announce_resolved, claimed_by, lease_until, created_at)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,'sending',$9,$10,$11,$12,$13,$14)",
                nid,
                g["id"],
                route.name,
                g["group_key"],
                plan.channel,
                channels[plan.channel].kind,
                seq,
                plan.reason,
                sorted(plan.record_firing),
                sorted(plan.record_resolved),
                [a.episode_id for a in plan.resolved],
                self.instance,
                now + self.lease,
                now,
            )
            claims.append(
                Claim(
                    id=nid,
                    group_id=g["id"],
                    route=route.name,
                    group_key=g["group_key"],
                    group_labels=labels,
                    channel=plan.channel,
                    channel_kind=channels[plan.channel].kind,
                    reason=plan.reason,
                    firing=plan.firing,
                    resolved=plan.resolved,
                    lead_episode_id=g["lead_episode_id"],
                    created_at=now,
                )
            )
        if decision.close:
            await conn.execute(
                "UPDATE alerter_groups SET state = 'closed', closed_at = $2 WHERE id = $1", g["id"], now
            )
        else:
            await conn.execute(
                "UPDATE alerter_groups SET next_flush_at = $2 WHERE id = $1", g["id"], decision.next_flush_at
            )
        return claims

    async def reclaim_expired(
        self, limit: int = 50, *, skip: Collection[str] = (), own: bool = False
    ) -> list[Claim]:
        """Take over claims whose sender died (lease expired): they are sent again, same id.

        ``skip``: ids this process is still delivering (a heartbeat that could not renew in time
        does not mean the sender died). ``own`` (at start only): claims held under this instance's
        own name are taken at once, lease or not, since instance names are unique among live
        replicas and this process has sent nothing yet. Each take-over bumps the claim's
        generation, which fences off whatever the previous holder still does, and marks the
        attempts it left in flight as interrupted.
        """
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT n.*, g.labels, g.lead_episode_id, g.merged_into FROM alerter_notifications n"
                " JOIN alerter_groups g ON g.id = n.group_id"
                " WHERE n.status = 'sending' AND (n.lease_until < $1 OR ($4 AND n.claimed_by = $5))"
                " AND NOT (n.id = ANY($3::text[]))"
                " ORDER BY n.created_at LIMIT $2"
                " FOR UPDATE OF n SKIP LOCKED",
                now,
                limit,
                list(skip),
                own,
                self.instance,
            )
            claims = []
            for r in rows:
                generation = await conn.fetchval(
                    "UPDATE alerter_notifications SET claimed_by = $2, lease_until = $3, updated_at"
                    " = $4, claim_gen = claim_gen + 1 WHERE id = $1 RETURNING claim_gen",
                    r["id"],
                    self.instance,
                    now + self.lease,
                    now,
                )
                interrupted = await conn.execute(
                    "UPDATE alerter_delivery_attempts SET state = 'interrupted', detail = 'the sender ('"
                    " || instance || ') stopped during this attempt; the receiver may have got it'"
                    " WHERE notification_id = $1 AND state = 'in_flight'",
                    r["id"],
                )
                ids = list(r["firing"]) + list(r["announce_resolved"])
                alerts = {
                    a.episode_id: a
                    for a in map(
                        _alert,
                        await conn.fetch("SELECT * FROM alerter_alerts WHERE episode_id = ANY($1)", ids),
                    )
                }
                self._log.warning(
                    "taking over a notification whose sender died",
                    notification=r["id"],
                    previous=r["claimed_by"],
                    interrupted_attempts=int(interrupted.split()[-1]),
                )
                claims.append(
                    Claim(
                        id=r["id"],
                        group_id=r["group_id"],
                        route=r["route"],
                        group_key=r["group_key"],
                        group_labels=dict(json.loads(r["labels"])),
                        channel=r["channel"],
                        channel_kind=r["channel_kind"],
                        reason=r["reason"],
                        firing=tuple(alerts[i] for i in r["firing"] if i in alerts),
                        resolved=tuple(alerts[i] for i in r["announce_resolved"] if i in alerts),
                        lead_episode_id=r["lead_episode_id"],
                        created_at=r["created_at"],
                        generation=int(generation),
                        merged_into=(r["merged_into"] or "") if r["reason"] == "merged" else "",
                    )
                )
            return claims

    async def renew(self, notification_id: str, generation: int) -> bool:
        """Extend the lease of this claim; False when it was taken over (even by this instance)."""
        now = self.clock()
        ok = await self.pool.fetchval(
            "UPDATE alerter_notifications SET lease_until = $3, updated_at = $4"
            " WHERE id = $1 AND claim_gen = $2 AND status = 'sending' RETURNING 1",
            notification_id,
            generation,
            now + self.lease,
            now,
        )
        return ok is not None

    async def begin_attempt(self, notification_id: str, generation: int) -> int | None:
        """Write an 'in_flight' attempt before the send; its number, or None when the claim is lost.

        Committed before any I/O: a process killed while the receiver holds the request leaves
        this row, and the take-over marks it interrupted (reclaim_expired).
        """
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            number = await conn.fetchval(
                "UPDATE alerter_notifications SET attempts = attempts + 1, updated_at = $2"
                " WHERE id = $1 AND claim_gen = $3 AND status = 'sending' RETURNING attempts",
                notification_id,
                now,
                generation,
            )
            if number is None:
                return None
            await conn.execute(
                "INSERT INTO alerter_delivery_attempts (notification_id, attempt, at, ok, retryable,"
                " detail, instance, state) VALUES ($1, $2, $3, false, true, 'in flight', $4, 'in_flight')",
                notification_id,
                number,
                now,
                self.instance,
            )
        return int(number)

    async def record_attempt(
        self, notification_id: str, generation: int, attempt: Attempt, *, number: int | None = None
    ) -> bool:
        """Record an attempt; False when the claim was taken over meanwhile.

        ``number``: the row begin_attempt wrote, completed here; without it a new row is added.
        The attempt is kept in the history either way (it happened); only the current holder
        sets ``last_error``.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE alerter_notifications SET attempts = attempts + $6::int, updated_at = $2,"
                " last_error = CASE WHEN $3 OR claim_gen <> $5 OR status <> 'sending' THEN last_error"
                " ELSE $4 END WHERE id = $1"
                " RETURNING attempts, claim_gen = $5 AND status = 'sending' AS current",
                notification_id,
                attempt.at,
                attempt.ok,
                attempt.detail[:2000],
                generation,
                0 if number is not None else 1,
            )
            if row is None:
                return False  # deleted meanwhile
            if number is not None:
                # A take-over may have marked the row interrupted meanwhile; the real outcome wins.
                await conn.execute(
                    "UPDATE alerter_delivery_attempts SET at = $3, ok = $4, retryable = $5,"
                    " status_code = $6, detail = $7, state = 'done'"
                    " WHERE notification_id = $1 AND attempt = $2",
                    notification_id,
                    number,
                    attempt.at,
                    attempt.ok,
                    attempt.retryable,
                    attempt.status_code,
                    attempt.detail[:2000],
                )
            else:
                await conn.execute(
                    "INSERT INTO alerter_delivery_attempts (notification_id, attempt, at, ok, retryable,"
                    " status_code, detail, instance) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                    notification_id,
                    row["attempts"],
                    attempt.at,
                    attempt.ok,
                    attempt.retryable,
                    attempt.status_code,
                    attempt.detail[:2000],
                    self.instance,
                )
        return bool(row["current"])

    async def finish(self, notification_id: str, generation: int, outcome: Outcome) -> bool:
        """Record the outcome; False (nothing written) when the claim was taken over."""
        now = self.clock()
        done = await self.pool.fetchval(
            "UPDATE alerter_notifications SET status = $3::text, sent_at = CASE WHEN $3::text ="
            " 'sent' THEN $4::timestamptz END,"
            " detail = $5, lease_until = NULL, updated_at = $4"
            " WHERE id = $1 AND claim_gen = $2 AND status = 'sending' RETURNING 1",
            notification_id,
            generation,
            outcome.status,
            now,
            outcome.detail[:2000],
        )
        return done is not None

    async def fail_unbuildable(self, notification_id: str, generation: int, error: str) -> None:
        """A message that cannot even be rendered (template error, bad address): permanent."""
        await self.record_attempt(notification_id, generation, Attempt(1, self.clock(), False, error, False))
        await self.finish(
            notification_id, generation, Outcome("failed", (Attempt(1, self.clock(), False, error),))
        )

    # -- acknowledgements -----------------------------------------------------------------------

    async def _sync_acks(self, conn: Conn, episode_ids: Sequence[str], *, skip_locked: bool = False) -> None:
        """Copy acknowledgements made through the API, as its violation_action.v1 events brought
        them (the alerter's own ``alerter_violation_actions``; never the API's tables). With
        ``skip_locked``, only to alerts no other transaction holds (a flush holding its group)."""
        if not episode_ids:
            return
        await conn.execute(
            "UPDATE alerter_alerts a SET acknowledged_at = v.acknowledged_at,"
            " acknowledged_by = v.acknowledged_by"
            " FROM alerter_violation_actions v WHERE v.episode_id = a.episode_id AND a.episode_id = ANY($1)"
            " AND v.acknowledged_at IS NOT NULL AND a.acknowledged_at IS NULL"
            + (
                " AND a.episode_id IN (SELECT episode_id FROM alerter_alerts WHERE episode_id = ANY($1)"
                " FOR NO KEY UPDATE SKIP LOCKED)"
                if skip_locked
                else ""
            ),
            list(episode_ids),
        )

    async def _sync_resolution_notes(self, conn: Conn, episode_ids: Sequence[str]) -> None:
        """A newer note on a resolution already applied (a later action event, higher ``seq``)
        replaces the one copied when the alert was resolved: the alert's record, and any message
        built from it afterwards, show the person's latest word. Nothing is sent for the change
        itself: the channels were told of the resolution. Only alerts this resolution resolved
        (the same ``resolved_at``): one resolved otherwise (an incident, a merge) keeps its note."""
        if not episode_ids:
            return
        await conn.execute(
            "UPDATE alerter_alerts a SET resolved_note = v.note"
            " FROM alerter_violation_actions v WHERE v.episode_id = a.episode_id AND a.episode_id = ANY($1)"
            " AND a.resolved_at = v.resolved_at AND a.resolved_note IS DISTINCT FROM v.note",
            list(episode_ids),
        )

    async def record_violation_actions(self, events: Sequence[ViolationActionEvent]) -> int:
        """Keep what people did through the API (violation_action.v1) and apply it to the alerts
        this alerter holds: acknowledgements stop reminders, a hand resolution tells the paged
        channels at once. Committed before the events are acked; how many alerts were resolved.
        An action whose violation has not come yet waits in ``alerter_violation_actions``.

        Each event is the episode's whole state; the one with the highest ``seq`` stands, every
        column of it, whatever order they come in (``_NEWER_ACTION``)."""
        if not events:
            return 0
        async with self.pool.acquire() as conn, conn.transaction():
            # In episode order: concurrent batches of replicas lock the rows in the same order.
            for ev in sorted(events, key=lambda e: e.episode_id):
                await conn.execute(
                    _NEWER_ACTION if ev.seq is not None else _UNSEQUENCED_ACTION,
                    ev.episode_id,
                    ev.acknowledged_by,
                    ev.acknowledged_at,
                    ev.resolved_by,
                    ev.resolved_at,
                    ev.note,
                    ev.seq,
                    ev.ts if ev.note is not None else None,
                )
            episodes = sorted({ev.episode_id for ev in events})
            # The episodes' incidents, groups and alerts, in the one order (lock_rows): the note
            # synced to a resolved incident below must not take its row after its alerts.
            await self.lock_rows(conn, episodes, groups=True)
            # Activity, applied or not (an old event may come again): retention counts from it.
            await conn.execute(
                "UPDATE alerter_violation_actions SET last_event_at = now() WHERE episode_id = ANY($1)",
                episodes,
            )
            await self._sync_acks(conn, episodes)
            await self._sync_resolution_notes(conn, episodes)
            resolved = await self._apply_hand_resolutions(conn, episodes)
            await self._sync_incident_notes(conn, episodes)
            return resolved

    async def acknowledge(self, episode_ids: Iterable[str], by: str) -> int:
        """Acknowledge episodes: reminders stop; new violations and resolutions still notify."""
        result = await self.pool.execute(
            "UPDATE alerter_alerts SET acknowledged_at = $2, acknowledged_by = $3"
            " WHERE episode_id = ANY($1) AND acknowledged_at IS NULL",
            list(episode_ids),
            self.clock(),
            by,
        )
        return int(result.split()[-1])

    # -- the notification log, for the API ------------------------------------------------------

    async def notifications(
        self,
        *,
        status: str | None = None,
        channel: str | None = None,
        since: datetime | None = None,
        before: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> list[tuple[asyncpg.Record, list[asyncpg.Record]]]:
        """Notifications newest first (keyset ``before`` = (created_at, id)), each with its attempts."""
        rows = await self.pool.fetch(
            "SELECT id, route, group_key, channel, channel_kind, reason, status, attempts, last_error,"
            " detail, firing, resolved, created_at, sent_at FROM alerter_notifications"
            " WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR channel = $2)"
            " AND ($3::timestamptz IS NULL OR created_at >= $3)"
            " AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::text))"
            " ORDER BY created_at DESC, id DESC LIMIT $6",
            status,
            channel,
            since,
            before[0] if before else None,
            before[1] if before else None,
            limit,
        )
        attempts: dict[str, list[asyncpg.Record]] = {r["id"]: [] for r in rows}
        if rows:
            for a in await self.pool.fetch(
                "SELECT * FROM alerter_delivery_attempts WHERE notification_id = ANY($1)"
                " ORDER BY notification_id, attempt",
                list(attempts),
            ):
                attempts[a["notification_id"]].append(a)
        return [(r, attempts[r["id"]]) for r in rows]

    # -- channel threads (Slack's thread_ts per incident) ----------------------------------------

    async def thread_get(self, channel: str, key: str) -> str | None:
        ref = await self.pool.fetchval(
            "SELECT ref FROM alerter_threads WHERE channel = $1 AND thread_key = $2", channel, key
        )
        return None if ref is None else str(ref)

    async def thread_put(self, channel: str, key: str, ref: str) -> str:
        """Keep ``ref`` as the thread's first message unless one is kept; the kept one."""
        kept = await self.pool.fetchval(
            "INSERT INTO alerter_threads (channel, thread_key, ref) VALUES ($1, $2, $3)"
            " ON CONFLICT (channel, thread_key) DO UPDATE SET ref = alerter_threads.ref RETURNING ref",
            channel,
            key,
            ref,
        )
        return str(kept)

    # -- re-sends (Alertmanager) -----------------------------------------------------------------

    async def resend_candidates(self, channels: Collection[str]) -> list[tuple[Claim, datetime]]:
        """What each of ``channels`` was last told per active group, as it stands now: alerts
        still firing, and those that have cleared since (to be told resolved), with when that
        message was sent. Nothing is claimed or recorded: a re-send repeats what the receiver
        has (Alertmanager drops alerts that are not re-sent; it de-duplicates by labels)."""
        if not channels:
            return []
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT ON (n.group_id, n.channel) n.id, n.group_id, n.route, n.group_key,"
                " n.channel, n.channel_kind, n.firing, n.sent_at, g.labels, g.lead_episode_id"
                " FROM alerter_notifications n JOIN alerter_groups g ON g.id = n.group_id"
                " WHERE g.state = 'active' AND n.status = 'sent' AND n.channel = ANY($1::text[])"
                " ORDER BY n.group_id, n.channel, n.seq DESC",
                list(channels),
            )
            out = []
            now = self.clock()
            for r in rows:
                if not r["firing"]:
                    continue
                alerts = [
                    _alert(a)
                    for a in await conn.fetch(
                        "SELECT * FROM alerter_alerts WHERE episode_id = ANY($1::text[])"
                        " ORDER BY opened_at, episode_id",
                        list(r["firing"]),
                    )
                ]
                claim = Claim(
                    id=f"{r['id']}:resend",
                    group_id=r["group_id"],
                    route=r["route"],
                    group_key=r["group_key"],
                    group_labels=dict(json.loads(r["labels"])),
                    channel=r["channel"],
                    channel_kind=r["channel_kind"],
                    reason="repeat",
                    firing=tuple(a for a in alerts if a.firing),
                    resolved=tuple(a for a in alerts if not a.firing),
                    lead_episode_id=r["lead_episode_id"],
                    created_at=now,
                    generation=0,
                )
                out.append((claim, r["sent_at"]))
        return out
