"""Pool connections kept between the persister's batches."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from asyncpg.pool import PoolConnectionProxy

KEEP_CONNECTION_S = 5.0
"""How long the persister keeps a pool connection after a batch for the next one. A pool's
release runs a reset (``RESET ALL; CLOSE ALL; UNLISTEN *``...: a round trip and a transaction
of its own), which at a trickle, a batch or two per event, was a third of Postgres's work."""


class KeptConnections:
    """Pool connections kept between batches instead of released (and reset) after each.

    Only the persister's own writes use them, and those leave no session state behind but the
    temporary table meant to stay (``CREATE_TELEMETRY_IN``): a connection whose batch failed
    in any way goes back through the pool's release (reset, or closed if broken), and one left
    unused for ``keep_s`` is released."""

    def __init__(self, pool: asyncpg.Pool, keep_s: float = KEEP_CONNECTION_S) -> None:
        self._pool = pool
        self._keep_s = keep_s
        self._idle: list[tuple[PoolConnectionProxy, asyncio.TimerHandle | None]] = []
        self._releasing: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[PoolConnectionProxy]:
        if self._idle:
            conn, timer = self._idle.pop()
            if timer is not None:
                timer.cancel()
        else:
            conn = await self._pool.acquire()
        try:
            yield conn
        except BaseException:
            await self._pool.release(conn)
            raise
        if self._keep_s <= 0 or conn.is_closed():
            await self._pool.release(conn)
            return
        timer = asyncio.get_running_loop().call_later(self._keep_s, self._expire, conn)
        self._idle.append((conn, timer))

    def _expire(self, conn: PoolConnectionProxy) -> None:
        for i, (kept, _) in enumerate(self._idle):
            if kept is conn:
                del self._idle[i]
                task = asyncio.ensure_future(self._pool.release(conn))
                self._releasing.add(task)
                task.add_done_callback(self._releasing.discard)
                return

    async def close(self) -> None:
        """Give every kept connection back to the pool."""
        idle, self._idle = self._idle, []
        for conn, timer in idle:
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(Exception):
                await self._pool.release(conn)
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
