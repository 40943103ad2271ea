"""Mirrors the API's ``settings`` table into the settings KV bucket the alerter reads.

The API owns the table (the settings page writes it); the alerter reads the settings it needs
(channel addresses, the ticket tracker...) from ``subjects.SETTINGS_BUCKET`` only (architecture
rule: each service owns its tables). Each key is ``subjects.kv_key(<setting key>)``, its value
the setting's JSON text, as the table holds it. The mirror is brought to the table after every
save and every :data:`SYNC_S` (so a save whose KV write failed, or one made while NATS was
away, reaches the alerter later), and at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from llmscope.bus.kv import bucket_keys, open_bucket
from llmscope.config.logs import get_logger
from llmscope.config.startup import log_failure
from llmscope.proto import subjects

log = get_logger("llmscope.api.settings_mirror")

SYNC_S = 30.0
MIRROR_LOCK_ID = 0x4C4C4D_534554  # "LLM" "SET": one mirror sync at a time across API processes


class SettingsMirror:
    """Writes the settings table into its KV bucket while NATS is connected."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool | None],
        bucket: str = subjects.SETTINGS_BUCKET,
        replicas: int = 1,
    ) -> None:
        self._pool = pool
        self.bucket = bucket
        self.replicas = replicas
        self._nc: NATS | None = None
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()

    def attach(self, nc: NATS | None) -> None:
        self._nc = nc
        self._kv = None

    async def sync(self) -> bool:
        """Bring the bucket to the table; False (logged, tried again later) when it could not."""
        pool, nc = self._pool(), self._nc
        if pool is None or nc is None:
            return False
        try:
            # Two saves at once, in this process or two API processes: one sync after the other,
            # so that a sync that read the table before a save never writes after that save's.
            async with self._lock, pool.acquire() as conn:
                await conn.execute("SELECT pg_advisory_lock($1)", MIRROR_LOCK_ID)
                try:
                    await self._sync(nc, conn)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", MIRROR_LOCK_ID)
        except (NatsError, TimeoutError, asyncpg.PostgresError, OSError) as exc:
            log.warning("settings not mirrored to the bus yet; tried again", error=repr(exc))
            return False
        except Exception:
            # Anything else too (asyncpg's InterfaceError of a closed pool or a connection lost
            # mid-sync is no PostgresError): it ended ``run`` for good, and a save answered 500
            # for a setting it had stored. Logged, and tried again at the next round.
            log_failure(log, "settings not mirrored to the bus yet; tried again")
            return False
        return True

    async def _sync(self, nc: NATS, conn: PoolConnectionProxy[asyncpg.Record]) -> None:
        js = nc.jetstream()
        if self._kv is None:
            self._kv = await open_bucket(
                js, self.bucket, description="LLMscope settings", replicas=self.replicas
            )
        rows = await conn.fetch("SELECT key, value FROM settings")
        wanted = {subjects.kv_key(r["key"]): json.dumps(r["value"]).encode() for r in rows}
        for key in await bucket_keys(js, self.bucket):
            try:
                current = (await self._kv.get(key)).value
            except KeyNotFoundError:
                current = None
            if key not in wanted:
                if current is not None:
                    await self._kv.delete(key)
            elif current == wanted[key]:
                del wanted[key]
        for key, value in wanted.items():
            await self._kv.put(key, value)

    async def run(self, stop: asyncio.Event, every: float = SYNC_S) -> None:
        while not stop.is_set():
            await self.sync()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
