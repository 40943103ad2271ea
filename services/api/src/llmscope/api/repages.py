"""Answers the alerter's word of violations it paged again after a hand resolution
(``llmscope.proto.repage``, ``llmscope.control.v1.api.violations.repaged``).

The API owns the ``violations`` table: the alerter never writes it. A violation in an incident
reopens from the incident's ``incident.v1`` event (``repaged``, incidents_store.py); one paged
again outside any incident (a warning, with ``alert.min_severity: warning``) has no incident, so
the alerter asks here, again until an API answers ``ok``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llmscope.api.incidents_store import reopen_repaged
from llmscope.bus.responders import Responders
from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.proto.repage import RepagedReply, RepagedRequest

log = get_logger("llmscope.api.repages")


class Repages:
    """Answers the alerter's ``llmscope.control.v1.api.violations.repaged``: the violations it
    paged again after a hand resolution the engine never cleared reopen here (``reopen_repaged``,
    the rule of an incident's ``repaged``), so the dashboard offers acknowledging and resolving
    them again. A violation paged outside any incident has no ``incident.v1`` event to carry
    it; the alerter asks until an API answers ``ok``, and a repeat changes nothing. Every API
    process answers, in the queue group of the alerter's other requests."""

    def __init__(self, pool: Callable[[], asyncpg.Pool | None]) -> None:
        self._pool = pool
        self._responders = Responders()
        self._decoder = msgspec.json.Decoder(RepagedRequest)

    async def reopen(self, req: RepagedRequest) -> RepagedReply:
        pool = self._pool()
        if pool is None:
            return RepagedReply(status="error", error="database pool is not open")
        async with pool.acquire() as conn:
            reopened = await reopen_repaged(conn, req.episodes)
        if reopened:
            log.info("violations paged again by the alerter are open again", violations=reopened)
        return RepagedReply(status="ok", reopened=tuple(reopened))

    async def _answer(self, msg: Msg) -> None:
        try:
            reply = await self.reopen(self._decoder.decode(msg.data))
        except asyncio.CancelledError:
            raise
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            reply = RepagedReply(status="error", error=f"bad request: {exc}")
        except Exception as exc:
            # Not told: the alerter asks again later.
            log.warning("reopening violations paged again failed", error=repr(exc))
            reply = RepagedReply(status="error", error=f"api error: {type(exc).__name__}")
        if msg.reply:
            await msg.respond(msgspec.json.encode(reply))

    async def start(self, nc: NATS) -> None:
        await self._responders.serve(
            nc, subjects.api_violations_repaged(), subjects.API_CONTROL_QUEUE, self._answer
        )

    async def stop(self, grace: float = 5.0) -> None:
        await self._responders.stop(grace)
