"""The settings mirror (the API's ``settings`` table into the bucket the alerter reads) keeps
going after a round that failed for a reason other than NATS or PostgreSQL refusing a query."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import asyncpg
from nats.aio.client import Client as NATS

from llmscope.api.db import create_pool
from llmscope.api.settings_mirror import SettingsMirror
from llmscope.proto import subjects
from tests.alerter.harness import eventually


async def test_a_round_failing_on_a_closed_pool_neither_raises_nor_ends_the_mirror(
    database_url: str, nc: NATS
) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=2)
    closed = await create_pool(database_url, min_size=1, max_size=1)
    await closed.close()  # acquire raises asyncpg's InterfaceError, which is no PostgresError
    try:
        await pool.execute(
            "INSERT INTO settings (key, value) VALUES ($1, $2)", "alert.email.to", ["ops@example.com"]
        )
        bucket = f"t_settings_{uuid.uuid4().hex[:10]}"
        rounds: list[asyncpg.Pool] = []

        def current() -> asyncpg.Pool:
            # The first round (and the save below) meet the closed pool, every later one the open.
            rounds.append(closed if len(rounds) < 2 else pool)
            return rounds[-1]

        mirror = SettingsMirror(current, bucket=bucket)
        mirror.attach(nc)
        # A save's sync: the setting is stored, the request must not fail for the mirror's sake.
        assert await mirror.sync() is False

        stop = asyncio.Event()
        task = asyncio.create_task(mirror.run(stop, every=0.05))
        kv = None

        async def mirrored() -> bool:
            nonlocal kv
            assert not task.done(), f"the mirror loop ended: {task.exception()!r}"
            try:
                kv = kv or await nc.jetstream().key_value(bucket)
                entry = await kv.get(subjects.kv_key("alert.email.to"))
            except Exception:  # not there yet (no bucket, no key)
                return False
            return entry.value is not None and json.loads(entry.value) == ["ops@example.com"]

        try:
            await eventually(mirrored, within=10, what="the setting mirrored after the failed round")
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_key_value(bucket)
    finally:
        await pool.close()
