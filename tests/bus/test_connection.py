from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from llmscope.bus.connection import connect, subscriptions_in_place
from llmscope.config.startup import Stopped
from llmscope.stack.embedded import EmbeddedNats
from llmscope.stack.ports import free_port
from tests.alerter.harness import eventually


async def test_connect_waits_for_a_server_that_starts_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llmscope.bus")
    server = EmbeddedNats(tmp_path / "late", free_port())
    task = asyncio.create_task(connect(server.url, "late-client", connect_timeout=0.5, give_up_after=20))
    # A first try failed and was logged, and connect is still waiting instead of giving up.
    await eventually(lambda: any("retrying" in r.getMessage() for r in caplog.records), what="a failed try")
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


async def test_subscriptions_are_in_place_for_the_next_request(nats_url: str) -> None:
    # A responder that says it is ready must answer the very next request from anyone.
    asker = await nats.connect(nats_url)
    try:
        for i in range(150):
            responder = await nats.connect(nats_url)
            try:

                async def answer(msg: Msg) -> None:
                    await msg.respond(b"ok")

                for name in ("list", "create", "expire"):
                    await responder.subscribe(f"ready{i}.{name}", queue="q", cb=answer)
                await subscriptions_in_place(responder)
                reply = await asker.request(f"ready{i}.create", b"", timeout=10)
                assert reply.data == b"ok"
            finally:
                await responder.close()
    finally:
        await asker.close()
