"""Reads the admin and export routes hand out as they are: the dead letters, and any query's rows
streamed through a server-side cursor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from llmscope.api.store_base import StoreBase


class ExportStore(StoreBase):
    """Dead letters and streamed exports."""

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            f"SELECT * FROM dead_letters ORDER BY ts DESC LIMIT {max(1, min(limit, 1000))}"
        )
        return [dict(r) for r in rows]

    async def stream_rows(self, sql: str, *args: Any, prefetch: int = 1000) -> AsyncIterator[asyncpg.Record]:
        """Rows of a query through a server-side cursor, for exports that do not fit in memory."""
        async with self.pool.acquire() as conn, conn.transaction():
            async for row in conn.cursor(sql, *args, prefetch=prefetch):
                yield row
