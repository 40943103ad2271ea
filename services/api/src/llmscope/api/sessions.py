"""Logged-out sessions, kept in Postgres so every replica and every restart knows them.

Session cookies are signed and stateless, so they survive a restart; a logout must survive it
too, or a copy of the cookie would work again. A cookie's check costs one primary-key lookup;
bearer keys (the ingest path) never come here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg

from llmscope.web.auth import AuthUnavailable

# A dashboard request waits this long for the list, then answers 503 (never "logged in").
TIMEOUT_S = 5.0


class RevokedSessions:
    """The ``revoked_sessions`` table (migration 0007)."""

    def __init__(self, pool: Callable[[], asyncpg.Pool | None]) -> None:
        self._pool = pool

    def _open(self) -> asyncpg.Pool:
        pool = self._pool()
        if pool is None:
            raise AuthUnavailable("database pool is not open")
        return pool

    async def is_revoked(self, session_id: str) -> bool:
        try:
            found = await self._open().fetchval(
                "SELECT 1 FROM revoked_sessions WHERE session_id = $1", session_id, timeout=TIMEOUT_S
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise AuthUnavailable(f"session list unavailable: {type(exc).__name__}") from exc
        return found is not None

    async def revoke(self, session_id: str, expires: int) -> None:
        """Add the session; entries past their expiry go at the same time (they check themselves)."""
        try:
            async with self._open().acquire(timeout=TIMEOUT_S) as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO revoked_sessions (session_id, expires_at) VALUES ($1, $2)"
                    " ON CONFLICT (session_id) DO NOTHING",
                    session_id,
                    datetime.fromtimestamp(expires, UTC),
                    timeout=TIMEOUT_S,
                )
                await conn.execute("DELETE FROM revoked_sessions WHERE expires_at < now()", timeout=TIMEOUT_S)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise AuthUnavailable(f"session list unavailable: {type(exc).__name__}") from exc
