from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmscope.bus.connection import connect
from llmscope.stack.embedded import EmbeddedNats
from llmscope.stack.ports import free_port


async def test_connect_waits_for_a_server_that_starts_later(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "late", free_port())
    task = asyncio.create_task(connect(server.url, "late-client", connect_timeout=0.5, give_up_after=20))
    await asyncio.sleep(0.8)
    assert not task.done()
    await asyncio.to_thread(server.start)
    try:
        nc = await asyncio.wait_for(task, 20)
        assert nc.is_connected
        await nc.close()
    finally:
        server.stop()


async def test_connect_gives_up_when_told_to() -> None:
    with pytest.raises(Exception):  # noqa: B017 - nats-py raises several types for "no server"
        await connect(f"nats://127.0.0.1:{free_port()}", "nobody", connect_timeout=0.2, give_up_after=0.5)
