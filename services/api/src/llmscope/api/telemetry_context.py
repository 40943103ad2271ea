"""Answers the alerter's requests for telemetry (``llmscope.proto.telemetry_context``).

The API owns the telemetry table; the alerter describes a violation in a page (the probes
around it, an outage's failed probes) and analyses an incident (its points) by asking here over
core NATS request/reply, never by reading the table. Every API process answers, in one queue
group; reads only, each bounded by the pool's statement timeout.

Every reply fits NATS's max payload (1 MB by default): an outage's failed probes carry their
error texts (up to 2,000 characters each, stored), so an outage reply that would not fit has its
errors shortened, each marked ``…(truncated, <n> chars)``, the longest first, until it does
(:func:`fit_outages`); a reply of probes or context too large for one message says so
(``TOO_LARGE``) and the alerter asks again for half as much.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llmscope.bus.responders import Responders
from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.proto.telemetry import NUMERIC_METRICS
from llmscope.proto.telemetry_context import (
    TOO_LARGE,
    ContextPointRecord,
    ContextReply,
    ContextRequest,
    FailedProbeRecord,
    OutageRecord,
    OutageReply,
    OutageRequest,
    PointRecord,
    PointsReply,
    PointsRequest,
)

log = get_logger("llmscope.api.telemetry_context")

# Numeric telemetry columns a violation's metric may name (spliced into SQL only from here).
TELEMETRY_METRICS = frozenset(NUMERIC_METRICS)

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep", bound=msgspec.Struct)


def truncated(error: str | None, chars: int) -> str | None:
    """``error`` cut after ``chars`` characters, saying so and how long it was."""
    if error is None or len(error) <= chars:
        return error
    return f"{error[:chars]}…(truncated, {len(error):,} chars)"


def fit_outages(reply: OutageReply, limit: int) -> OutageReply | None:
    """``reply`` as it is when it fits ``limit`` bytes encoded, else with every error text longer
    than the most that fits cut to it (the shorter ones whole); only when even the cut errors do
    not fit, fewer of each outage's latest failed probes (the newest kept; ``count`` still counts
    them all). None: not even an outage without probes fits."""
    encode = msgspec.json.encode

    def shortened(chars: int, keep: int) -> OutageReply:
        return msgspec.structs.replace(
            reply,
            outages={
                episode: msgspec.structs.replace(
                    o,
                    recent=tuple(
                        msgspec.structs.replace(p, error=truncated(p.error, chars)) for p in o.recent[:keep]
                    ),
                )
                for episode, o in reply.outages.items()
            },
        )

    def fits(r: OutageReply) -> bool:
        return len(encode(r)) <= limit

    if fits(reply):
        return reply
    every = max((len(o.recent) for o in reply.outages.values()), default=0)
    if fits(shortened(0, every)):
        # The longest cut that fits (``lo`` always fits; the whole texts do not).
        lo, hi = 0, max(len(p.error or "") for o in reply.outages.values() for p in o.recent)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(shortened(mid, every)):
                lo = mid
            else:
                hi = mid - 1
        return shortened(lo, every)
    if not fits(shortened(0, 0)):
        return None
    lo, hi = 0, every
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(shortened(0, mid)):
            lo = mid
        else:
            hi = mid - 1
    return shortened(0, lo)


class TelemetryContext:
    """The queries (no NATS) and their binding to the request subjects."""

    def __init__(self, pool: Callable[[], asyncpg.Pool | None]) -> None:
        self._pool = pool
        self._responders = Responders()

    def _conn_pool(self) -> asyncpg.Pool:
        pool = self._pool()
        if pool is None:
            raise RuntimeError("database pool is not open")
        return pool

    async def context(self, req: ContextRequest) -> ContextReply:
        out: dict[str, tuple[ContextPointRecord, ...]] = {}
        async with self._conn_pool().acquire() as conn:
            for q in req.queries:
                if q.metric not in TELEMETRY_METRICS:
                    continue
                col = q.metric  # whitelisted above: safe to splice
                # Charts are per target (endpoint); a violation without one reads every target's.
                series = "provider = $1 AND model = $2 AND prompt_id = $3 AND ($7 = '' OR target = $7)"
                rows = await conn.fetch(
                    f"(SELECT id, ts, {col}::float8 AS value, status FROM telemetry"
                    f"  WHERE {series} AND ts <= $4 ORDER BY ts DESC LIMIT $5)"
                    f" UNION ALL (SELECT id, ts, {col}::float8 AS value, status FROM telemetry"
                    f"  WHERE {series} AND ts > $4 ORDER BY ts LIMIT $6)",
                    q.provider,
                    q.model,
                    q.prompt_id,
                    q.pivot,
                    req.points + 1,
                    req.points,
                    q.target,
                )
                out[q.episode_id] = tuple(
                    ContextPointRecord(id=r["id"], ts=r["ts"], value=r["value"], status=r["status"])
                    for r in sorted(rows, key=lambda r: r["ts"])
                )
        return ContextReply(status="ok", context=out)

    async def outages(self, req: OutageRequest) -> OutageReply:
        out: dict[str, OutageRecord] = {}
        series = "provider = $1 AND model = $2 AND ($3 = '' OR target = $3)"
        async with self._conn_pool().acquire() as conn:
            for q in req.queries:
                last_ok = await conn.fetchval(
                    f"SELECT max(ts) FROM telemetry WHERE {series} AND status = 'ok' AND ts <= $4",
                    q.provider,
                    q.model,
                    q.target,
                    q.since,
                )
                after = last_ok or datetime.min.replace(tzinfo=q.until.tzinfo)
                stats = await conn.fetchrow(
                    f"SELECT count(*) AS n, min(ts) AS first FROM telemetry WHERE {series}"
                    " AND status <> 'ok' AND ts > $4 AND ts <= $5",
                    q.provider,
                    q.model,
                    q.target,
                    after,
                    q.until,
                )
                rows = await conn.fetch(
                    f"SELECT ts, status, http_status, error FROM telemetry WHERE {series}"
                    " AND status <> 'ok' AND ts > $4 AND ts <= $5 ORDER BY ts DESC LIMIT $6",
                    q.provider,
                    q.model,
                    q.target,
                    after,
                    q.until,
                    req.recent,
                )
                assert stats is not None
                out[q.episode_id] = OutageRecord(
                    count=int(stats["n"]),
                    since=stats["first"],
                    last_success=last_ok,
                    recent=tuple(
                        FailedProbeRecord(
                            ts=r["ts"], status=r["status"], http_status=r["http_status"], error=r["error"]
                        )
                        for r in rows
                    ),
                )
        return OutageReply(status="ok", outages=out)

    async def points(self, req: PointsRequest) -> PointsReply:
        if not req.ids:
            return PointsReply(status="ok")
        rows = await self._conn_pool().fetch(
            "SELECT id, ts, model, latency_ms, ttft_ms, tokens_per_s, status,"
            " coalesce(prompt_id, '') AS prompt_id FROM telemetry WHERE id = ANY($1)",
            list(req.ids),
        )
        return PointsReply(
            status="ok",
            points=tuple(
                PointRecord(
                    id=r["id"],
                    ts=r["ts"],
                    model=r["model"],
                    latency_ms=r["latency_ms"],
                    ttft_ms=r["ttft_ms"],
                    tokens_per_s=r["tokens_per_s"],
                    status=r["status"],
                    prompt_id=r["prompt_id"],
                )
                for r in rows
            ),
        )

    # -- the NATS edge ----------------------------------------------------------------------

    async def start(self, nc: NATS) -> None:
        await self._bind(nc, subjects.api_telemetry_context(), ContextRequest, self.context, ContextReply)
        await self._bind(
            nc, subjects.api_telemetry_outages(), OutageRequest, self.outages, OutageReply, fit_outages
        )
        await self._bind(nc, subjects.api_telemetry_points(), PointsRequest, self.points, PointsReply)

    async def _bind(
        self,
        nc: NATS,
        subject: str,
        req_type: type[Req],
        handler: Callable[[Req], Awaitable[Rep]],
        reply_type: Callable[..., Rep],
        fit: Callable[[Rep, int], Rep | None] | None = None,
    ) -> None:
        decoder = msgspec.json.Decoder(req_type)

        async def answer(msg: Msg) -> None:
            try:
                reply = await handler(decoder.decode(msg.data))
            except asyncio.CancelledError:
                raise
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                reply = reply_type(status="error", error=f"bad request: {exc}")
            except Exception as exc:
                log.warning("telemetry request failed", subject=subject, error=repr(exc))
                reply = reply_type(status="error", error=f"api error: {type(exc).__name__}")
            if msg.reply:
                data = msgspec.json.encode(reply)
                if len(data) > nc.max_payload and fit is not None:
                    # Off the event loop: a few encodings of up to megabytes each.
                    fitted = await asyncio.to_thread(fit, reply, nc.max_payload)
                    if fitted is not None:
                        log.info("telemetry reply shortened to fit", subject=subject, size=len(data))
                        data = msgspec.json.encode(fitted)
                if len(data) > nc.max_payload:
                    # NATS would refuse to send it and the asker would wait out its timeout.
                    log.warning("telemetry reply too large", subject=subject, size=len(data))
                    data = msgspec.json.encode(
                        reply_type(status="error", error=f"{TOO_LARGE} ({len(data)} bytes): ask for less")
                    )
                await msg.respond(data)

        await self._responders.serve(nc, subject, subjects.API_CONTROL_QUEUE, answer)

    async def stop(self, grace: float = 5.0) -> None:
        await self._responders.stop(grace)
