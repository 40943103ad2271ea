"""Postgres state of the alerter: alerts, groups, the notification log, incidents, outbox.

``Store`` is assembled from one part per concern on ``store_base.StoreBase``: this module (ingest:
alerts into groups and incidents), ``delivery_store`` (flushing groups into notifications, claims,
attempts and outcomes), ``log_store`` (reads of the notification log and channel threads),
``action_store`` (acknowledgements, hand resolutions and notes from the API), ``incident_store``
(violations correlated into incidents, the row lock order), ``hand_resolution_store`` (incidents
acknowledged and resolved by a person), ``incident_outbox_store`` (incidents as events, the
outbox), ``analysis_store`` (the incidents' analyses), ``merge_store`` and
``ticket_store``, ``silence_store`` and ``retention_store``. It holds the
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

import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta

from llmscope.alerter.analysis_store import (
    AnalysisJob as AnalysisJob,  # re-exported: callers import it from here
)
from llmscope.alerter.analysis_store import AnalysisStore
from llmscope.alerter.delivery_store import DeliveryStore
from llmscope.alerter.grouping import first_flush_at
from llmscope.alerter.incidents import (
    forms_incidents,
)
from llmscope.alerter.log_store import NotificationLogStore
from llmscope.alerter.merge_store import lock_key
from llmscope.alerter.model import labels_of
from llmscope.alerter.retention_store import RetentionStore
from llmscope.alerter.routing import Route, group_key, group_labels, route_alert
from llmscope.alerter.store_base import Claim as Claim  # re-exported: callers import it from here
from llmscope.alerter.store_base import Conn as Conn  # re-exported: tests and callers import it from here
from llmscope.alerter.store_base import decode_event as _event
from llmscope.alerter.store_base import encode_event as _json
from llmscope.proto.violation import ViolationEvent


class Store(DeliveryStore, AnalysisStore, NotificationLogStore, RetentionStore):
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
