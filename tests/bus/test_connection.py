from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from llmscope.bus.connection import connect
from llmscope.config.startup import Stopped
from llmscope.stack.embedded import EmbeddedNats
from llmscope.stack.ports import free_port
from tests.alerter.harness import eventually


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


async def test_stop_ends_the_wait_for_a_server_at_once() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)
    started = asyncio.get_running_loop().time()
    with pytest.raises(Stopped):
        await asyncio.wait_for(connect(f"nats://127.0.0.1:{free_port()}", "stopped", stop=stop), 5)
    assert asyncio.get_running_loop().time() - started < 1.5


async def test_closing_our_own_connection_is_no_warning_an_outage_is(
    embedded_nats: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmscope.bus")
    nc = await connect(embedded_nats.url, "closing", stop=asyncio.Event())
    await nc.drain()
    ours = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ours == [("INFO", "NATS connection closed")]

    caplog.clear()
    nc = await connect(embedded_nats.url, "outage", connect_timeout=0.5)
    try:
        await asyncio.to_thread(embedded_nats.stop)
        await eventually(
            lambda: any(r.getMessage() == "disconnected from NATS" for r in caplog.records),
            within=10,
            what="the disconnect warning",
        )
        (lost,) = [r for r in caplog.records if r.getMessage() == "disconnected from NATS"]
        assert lost.levelname == "WARNING"
    finally:
        await nc.close()
