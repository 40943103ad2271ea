"""The installation's key for target fingerprints (:mod:`llmscope.web.userinfo`), from the row
migration 0021 made: the same for every API replica on the database and after every restart."""

from __future__ import annotations

import asyncpg

# The row is made by the migration; one deleted by hand is made again (random too) rather than
# leaving the dashboard without fingerprints. Two replicas starting together keep the same one.
_ENSURE = """
INSERT INTO target_fingerprint_key (key)
VALUES (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'))
ON CONFLICT (only_row) DO NOTHING
"""


async def load_fingerprint_key(pool: asyncpg.Pool) -> bytes:
    """The installation's fingerprint key (never to be printed, sent or logged)."""
    async with pool.acquire() as conn:
        key = await conn.fetchval("SELECT key FROM target_fingerprint_key")
        if key is None:
            await conn.execute(_ENSURE)
            key = await conn.fetchval("SELECT key FROM target_fingerprint_key")
    assert isinstance(key, bytes)
    return key
