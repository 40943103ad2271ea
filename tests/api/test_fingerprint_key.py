"""The installation's key for target fingerprints (migration 0021, ``fingerprint_key``): random,
32 bytes, the same on every load; a row deleted by hand is made again, new."""

from __future__ import annotations

import asyncio

import asyncpg

from llmscope.api.fingerprint_key import load_fingerprint_key


async def test_the_key_is_made_once_by_the_migration_and_again_if_deleted(pool: asyncpg.Pool) -> None:
    key = await load_fingerprint_key(pool)
    assert len(key) == 32
    assert len(set(key)) > 8  # random bytes, not a constant
    # Replicas loading together read the one row.
    assert set(await asyncio.gather(*(load_fingerprint_key(pool) for _ in range(4)))) == {key}
    await pool.execute("DELETE FROM target_fingerprint_key")
    again = await asyncio.gather(*(load_fingerprint_key(pool) for _ in range(4)))
    assert len(set(again)) == 1
    assert again[0] != key
    assert len(again[0]) == 32
    assert await pool.fetchval("SELECT count(*) FROM target_fingerprint_key") == 1
