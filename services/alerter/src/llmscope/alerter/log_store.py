"""Reads of the notification log: the API's history of notifications, channel threads (Slack's
``thread_ts`` per incident, a folded warning's thread) and Alertmanager's re-send candidates."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime

import asyncpg

from llmscope.alerter.store_base import Claim, StoreBase
from llmscope.alerter.store_base import alert_from_row as _alert


class NotificationLogStore(StoreBase):
    """What was sent, and where its thread is."""

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

    async def previous_message_at(self, group_id: int, channel: str, notification_id: str) -> datetime | None:
        """When the group's message to ``channel`` before this one was made (None: this is its
        first), as the flush that planned this one read it (the latest not expired)."""
        found: datetime | None = await self.pool.fetchval(
            "SELECT created_at FROM alerter_notifications WHERE group_id = $1 AND channel = $2"
            " AND status <> 'expired' AND seq < (SELECT seq FROM alerter_notifications WHERE id = $3)"
            " ORDER BY seq DESC LIMIT 1",
            group_id,
            channel,
            notification_id,
        )
        return found

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
