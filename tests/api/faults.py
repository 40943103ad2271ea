"""What the API's fault tests share: telemetry batches, an API with its persister, and the
checks that every accepted event is in the stream and in Postgres exactly once."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import nats
from nats.js.errors import NotFoundError

from llmscope.api.settings import ApiSettings
from llmscope.bus.settings import BusSettings
from llmscope.config.env import Secret
from llmscope.proto import subjects
from tests.alerter.harness import eventually
from tests.api.conftest import API_KEY


def telemetry_batch(n: int, *, prefix: str, size: int, t0: datetime, models: int) -> list[dict[str, object]]:
    """Batch ``n``: ``size`` valid events with ids ``{prefix}{n}-{i}``, 1 ms apart from ``t0``."""
    return [
        {
            "id": f"{prefix}{n:04d}-{i:02d}",
            "ts": (t0 + timedelta(milliseconds=n * size + i)).isoformat(),
            "provider": "ollama",
            "model": f"m{i % models}",
            "target": "local",
            "host": "gpu-1",
            "prompt_id": "p1",
            "prompt_hash": "ab" * 32,
            "latency_ms": 100.0 + i,
        }
        for i in range(size)
    ]


def persister_settings(database_url: str, nats_url: str, **overrides: Any) -> ApiSettings:
    """The API on a free port with its in-process persister, as `llmscope up` runs it."""
    return ApiSettings(
        database_url=Secret(database_url),
        api_key=Secret(API_KEY),
        bus=BusSettings(nats_url=nats_url),
        port=0,
        persister=True,
        **overrides,
    )


async def stored_ids(url: str) -> list[str]:
    """Every telemetry message's Nats-Msg-Id, duplicates included (one per stored message)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        ids: list[str] = []
        seq = 1
        while True:
            try:
                msg = await js.get_msg(subjects.STREAM_TELEMETRY, seq=seq, next=True)
            except NotFoundError:
                return ids
            assert msg.seq is not None
            seq = msg.seq + 1
            ids.append((msg.headers or {})["Nats-Msg-Id"])
    finally:
        await nc.close()


async def assert_stored_once(pool: asyncpg.Pool, ids: Collection[str], *, within: float, what: str) -> None:
    """Wait until Postgres holds exactly ``ids``, each once and counted once in the rollups,
    with nothing dead-lettered."""

    async def all_stored() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM telemetry") == len(ids))

    await eventually(all_stored, within=within, what=what)
    assert {r["id"] for r in await pool.fetch("SELECT id FROM telemetry")} == set(ids)
    assert await pool.fetchval("SELECT sum(n) FROM telemetry_minute") == len(ids)  # counted once
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
