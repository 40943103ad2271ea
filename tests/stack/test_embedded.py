"""The embedded servers `llmscope up` relies on: start, keep data across restarts, report busy ports."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import asyncpg
import pytest

from llmscope.stack.embedded import EmbeddedNats, EmbeddedPostgres
from llmscope.stack.ports import PortInUseError, free_port


def test_postgres_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", free_port(), durable=False)
    server.start()
    try:
        url = server.create_database("llmscope")
        asyncio.run(_execute(url, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)"))
    finally:
        server.stop()
    again = EmbeddedPostgres(tmp_path / "pg", free_port(), durable=False)
    again.start()
    try:
        assert again.create_database("llmscope") == again.url("llmscope")
        assert asyncio.run(_fetchval(again.url("llmscope"), "SELECT v FROM kept")) == 42
    finally:
        again.stop()


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetchval(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def test_busy_ports_are_reported_with_the_variable_to_change(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port}.*LLMSCOPE_NATS_PORT"):
            EmbeddedNats(tmp_path / "n", port).start()
        with pytest.raises(PortInUseError, match="LLMSCOPE_PG_PORT"):
            EmbeddedPostgres(tmp_path / "p", port).start()
