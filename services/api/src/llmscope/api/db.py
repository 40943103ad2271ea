"""The asyncpg pool and schema migrations.

Migrations are the numbered ``migrations/NNNN_name.sql`` files of this package. At start each
pending file runs in its own transaction, under a Postgres advisory lock so that two API replicas
starting together never apply one twice, and is recorded in ``schema_migrations``.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from importlib.resources import files

import asyncpg

from llmscope.config.logs import get_logger
from llmscope.config.startup import wait_for_postgres

log = get_logger("llmscope.api.db")

# Any constant works; it only has to be the same for every replica ("llmscope" in ASCII).
MIGRATION_LOCK = 0x6C6C6D73636F7065
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The package's migrations in order."""
    found = []
    for entry in files("llmscope.api.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers: {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; returns the names applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration.name)
            log.info("applied migration", name=migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


DEFAULT_STATEMENT_TIMEOUT_S = 30.0
"""Longest a query may run (``LLMSCOPE_DB_STATEMENT_TIMEOUT_S``); 0 turns the limit off."""
CONNECT_TIMEOUT_S = 10.0
"""Longest a new connection may take: a frozen server must not hold a request for a minute."""
CLIENT_MARGIN_S = 5.0
"""The client gives up this much after the server's statement timeout: Postgres cancels a slow
query itself, the client's limit catches a server that does not answer at all (frozen, a dead
network path), where no server-side setting can fire."""


UTC_SESSION = {"timezone": "UTC"}
"""Every session in UTC, whatever the database's zone: an hour is a UTC hour to ``date_trunc``
(the fold's hourly rows, the migrations' backfills), as the dashboard buckets them. In a
database in India's zone (+05:30) the fold's hours ran from :30 to :30 UTC. The readers name
UTC themselves as well (``api.trends``), for a session set otherwise."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
) -> asyncpg.Pool:
    """A pool whose connections are in UTC (:data:`UTC_SESSION`), decode JSON/JSONB to Python
    objects and end any query after ``statement_timeout_s``; migrations applied first (without
    that limit: an index build may take longer)."""
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S, server_settings=UTC_SESSION)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    limited = statement_timeout_s > 0
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        timeout=CONNECT_TIMEOUT_S,
        command_timeout=statement_timeout_s + CLIENT_MARGIN_S if limited else None,
        server_settings=UTC_SESSION
        | ({"statement_timeout": str(int(statement_timeout_s * 1000))} if limited else {}),
    )
    assert pool is not None
    return pool


async def open_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    stop: asyncio.Event | None,
    statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
) -> asyncpg.Pool:
    """:func:`create_pool`, waiting for a database that is not up yet (a log line per attempt).

    Raises :class:`~llmscope.config.startup.Stopped` when ``stop`` is set first and
    :class:`~llmscope.config.startup.Unusable` (host:port/database, no password) when Postgres
    answers but refuses, as NATS is waited for at start (:mod:`llmscope.bus.connection`).
    """
    return await wait_for_postgres(
        lambda: create_pool(
            dsn, min_size=min_size, max_size=max_size, statement_timeout_s=statement_timeout_s
        ),
        dsn=dsn,
        stop=stop,
    )
