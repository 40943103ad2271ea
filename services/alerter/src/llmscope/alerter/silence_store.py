"""The alerter's silences and maintenance windows in ``alerter_silences``: add, expire, list, and the
active ones each flush reads (a row this version cannot read mutes nothing and is logged)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from llmscope.alerter.silences import Monthly, Silence, Weekly, nth_weekday_names, parse_nth_weekdays
from llmscope.alerter.store_base import Conn, StoreBase, log


class SilenceStore(StoreBase):
    """Silences and maintenance windows."""

    async def add_silence(self, s: Silence) -> None:
        w, m = s.weekly, s.monthly
        await self.pool.execute(
            "INSERT INTO alerter_silences (id, kind, reason, author, providers, models, rules,"
            " hosts, starts_at,"
            " ends_at, weekly_days, weekly_start, weekly_end, timezone, created_at,"
            " monthly_days, monthly_weekdays, monthly_start, monthly_end)"
            " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19)",
            s.id,
            s.kind,
            s.reason,
            s.author,
            list(s.providers),
            list(s.models),
            list(s.rules),
            list(s.hosts),
            s.starts_at,
            s.ends_at,
            sorted(w.days) if w else None,
            w.start if w else None,
            w.end if w else None,
            w.timezone if w else m.timezone if m else "UTC",
            self.clock(),
            sorted(m.days) if m else None,
            nth_weekday_names(m.weekdays) if m else None,
            m.start if m else None,
            m.end if m else None,
        )

    async def expire_silence(self, silence_id: str) -> bool:
        result = await self.pool.execute(
            "UPDATE alerter_silences SET expired_at = $2 WHERE id = $1 AND expired_at IS NULL",
            silence_id,
            self.clock(),
        )
        return result.endswith(" 1")

    async def _db_silences(self, conn: Conn, now: datetime) -> list[Silence]:
        rows = await conn.fetch(
            "SELECT * FROM alerter_silences WHERE expired_at IS NULL AND (ends_at IS NULL OR ends_at > $1)",
            now,
        )
        out = []
        for r in rows:
            try:
                out.append(_silence(r))
            except (ValueError, KeyError) as exc:
                # One row this version cannot read (written by a newer replica, or edited by hand)
                # must not stop every notification: it mutes nothing and says so.
                log.error("unreadable silence skipped", silence=r["id"], error=str(exc))
        return out

    async def silences(self, *, include_expired: bool = False) -> list[tuple[Silence, datetime | None]]:
        """Stored silences with when they were expired, newest first; by default only those
        not expired by hand nor past their end."""
        rows = await self.pool.fetch(
            "SELECT * FROM alerter_silences WHERE $1 OR (expired_at IS NULL AND (ends_at IS NULL OR"
            " ends_at > $2)) ORDER BY created_at DESC, id",
            include_expired,
            self.clock(),
        )
        return [(_silence(r), r["expired_at"]) for r in rows]


def _silence(r: asyncpg.Record) -> Silence:
    weekly = None
    if r["weekly_days"]:
        weekly = Weekly(frozenset(r["weekly_days"]), r["weekly_start"], r["weekly_end"], r["timezone"])
    monthly = None
    if r["monthly_start"] is not None:
        monthly = Monthly(
            days=frozenset(r["monthly_days"] or ()),
            weekdays=parse_nth_weekdays(r["monthly_weekdays"] or ()),
            start=r["monthly_start"],
            end=r["monthly_end"],
            timezone=r["timezone"],
        )
    return Silence(
        id=r["id"],
        reason=r["reason"],
        author=r["author"],
        kind=r["kind"],
        providers=tuple(r["providers"]),
        models=tuple(r["models"]),
        rules=tuple(r["rules"]),
        hosts=tuple(r["hosts"]),
        starts_at=r["starts_at"],
        ends_at=r["ends_at"],
        weekly=weekly,
        monthly=monthly,
        created_at=r["created_at"],
    )
