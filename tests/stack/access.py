"""Knocking on the embedded servers' doors as an outsider would: who gets in, and what they are told."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Mapping

import asyncpg


def nats_answer(port: int, connect: Mapping[str, object]) -> str:
    """What nats-server answers a client that sends ``connect`` (the protocol, spoken by hand)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, sock.makefile("rwb") as wire:
        info = json.loads(wire.readline().decode().removeprefix("INFO "))
        assert info["auth_required"] is True
        wire.write(b"CONNECT " + json.dumps({"verbose": False, **connect}).encode() + b"\r\nPING\r\n")
        wire.flush()
        return wire.readline().decode().strip()


def pg_refusal(url: str) -> str:
    """Why PostgreSQL refused ``url`` ("" when it let the client in)."""

    async def attempt() -> str:
        try:
            conn = await asyncpg.connect(url, timeout=10)
        except (asyncpg.PostgresError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        await conn.close()
        return ""

    return asyncio.run(attempt())
