"""The API process (its in-process persister included) killed with SIGKILL in the middle of a
5,000-event burst, then started again: a client that resends what was not confirmed (a refused
connection, a dropped answer) gets every event stored exactly once, each counted once in the
per-minute rollups, with nothing dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from llmscope.stack.ports import free_port
from tests.alerter.harness import eventually
from tests.api.conftest import API_KEY
from tests.api.faults import stored_ids

pytestmark = pytest.mark.fault

BATCHES = 50
BATCH = 100
LANES = 4
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


def batch(n: int) -> list[dict[str, object]]:
    return [
        {
            "id": f"k{n:03d}-{i:03d}",
            "ts": (T0 + timedelta(milliseconds=n * BATCH + i)).isoformat(),
            "provider": "ollama",
            "model": f"m{i % 5}",
            "target": "local",
            "host": "gpu-1",
            "prompt_id": f"p{i % 2}",
            "prompt_hash": "ab" * 32,
            "latency_ms": 100.0 + i % 17,
        }
        for i in range(BATCH)
    ]


@contextlib.asynccontextmanager
async def api_process(env: dict[str, str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmscope.api", env={**os.environ, **env}, stdout=out, stderr=out
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_api_killed_mid_burst_stores_every_event_once(
    database_url: str, nats_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "LLMSCOPE_API_KEY": API_KEY,
        "LLMSCOPE_HOST": "127.0.0.1",
        "LLMSCOPE_PORT": str(port),
        "LLMSCOPE_PERSIST_BATCH": "200",  # several transactions in flight over the burst
    }
    log = tmp_path / "api.log"
    accepted: set[str] = set()
    pending = list(range(BATCHES))

    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    ) as client:

        async def ready() -> bool:
            with contextlib.suppress(httpx.TransportError):
                return (await client.get("/readyz")).status_code == 200
            return False

        async def lane() -> None:
            while pending:
                n = pending.pop(0)
                while True:
                    try:
                        r = await client.post("/api/stats", json=batch(n))
                    except httpx.TransportError:
                        # The process died before (or while) answering: not confirmed, so sent
                        # again once the API is back, as a client does (ids make it idempotent).
                        await eventually(ready, within=60, what="the API back")
                        continue
                    assert r.status_code in (202, 503), (r.status_code, r.text[:300])
                    if r.status_code == 202:
                        accepted.update(r.json()["ids"])
                        break
                    await eventually(ready, within=60, what="the API ready again")

        db = await asyncpg.connect(database_url)
        try:
            async with api_process(env, log) as first:
                await eventually(ready, within=60, what="the API ready")
                lanes = [asyncio.create_task(lane()) for _ in range(LANES)]

                async def mid_burst() -> bool:
                    if len(accepted) < 15 * BATCH:
                        return False
                    if await db.fetchval("SELECT to_regclass('telemetry')") is None:
                        return False
                    return bool(await db.fetchval("SELECT count(*) FROM telemetry") > 0)

                await eventually(mid_burst, within=120, what="events accepted and being stored")
                first.kill()  # SIGKILL: no drain, no clean shutdown, a batch possibly mid-write
                await first.wait()
                stored_at_kill = await db.fetchval("SELECT count(*) FROM telemetry")
            async with api_process(env, log):
                await asyncio.wait_for(asyncio.gather(*lanes), 180)
                total = BATCHES * BATCH
                assert len(accepted) == total
                assert stored_at_kill < total  # the kill came mid-burst

                async def all_stored() -> bool:
                    return bool(await db.fetchval("SELECT count(*) FROM telemetry") == total)

                await eventually(all_stored, within=120, what="every event stored after the restart")
                rows = {r["id"] for r in await db.fetch("SELECT id FROM telemetry")}
                assert rows == accepted
                assert await db.fetchval("SELECT sum(n) FROM telemetry_minute") == total  # counted once
                assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
        finally:
            await db.close()
    ids = await stored_ids(nats_url)
    assert set(ids) == accepted
    assert len(ids) == len(set(ids))  # resends inside the duplicate window were dropped by JetStream
