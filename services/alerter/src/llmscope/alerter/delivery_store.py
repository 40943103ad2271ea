"""Flushing groups into notifications, and each notification's delivery: claims with a lease, attempts,
the outcome, a dead sender's claims taken over (see ``store``'s docstring for the lock order)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

import asyncpg

from llmscope.alerter.action_store import ActionStore
from llmscope.alerter.dedup import LastNotification
from llmscope.alerter.grouping import ChannelView, decide
from llmscope.alerter.merge_store import MergeStore
from llmscope.alerter.retry import Attempt, Outcome
from llmscope.alerter.routing import Route
from llmscope.alerter.silence_store import SilenceStore
from llmscope.alerter.silences import Silence
from llmscope.alerter.store_base import Claim, Conn
from llmscope.alerter.store_base import alert_from_row as _alert


class DeliveryStore(ActionStore, MergeStore, SilenceStore):
    """Claims, attempts and outcomes of the notification log (``alerter_notifications``)."""

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
            " AND (a.repaged_at IS NULL OR v.acknowledged_at > a.repaged_at)"
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
