"""``llmscope spc-engine``'s health server: /readyz follows the NATS connection."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp

from llmscope.stack.embedded import EmbeddedNats
from llmscope.stack.ports import free_port
from tests.alerter.harness import eventually


async def test_readyz_is_503_while_nats_is_unreachable(embedded_nats: EmbeddedNats) -> None:
    port = free_port()
    env = {**os.environ, "NATS_URL": embedded_nats.url, "LLMSCOPE_SPC_HEALTH_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmscope.spc_engine", env=env, stderr=asyncio.subprocess.DEVNULL
    )

    async def ready_is(expected: int) -> bool:
        try:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                return resp.status == expected
        except aiohttp.ClientConnectionError:
            return False

    try:
        async with aiohttp.ClientSession() as session:
            await eventually(lambda: ready_is(200), within=30, what="ready with NATS up")
            embedded_nats.stop()
            await eventually(lambda: ready_is(503), within=30, what="not ready with NATS down")
            embedded_nats.start()
            await eventually(lambda: ready_is(200), within=30, what="ready again after NATS came back")
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200  # alive all along: a restart would not bring NATS back
    finally:
        proc.send_signal(signal.SIGTERM)
        # Its exit code after an outage is the engine's lease policy, not this test's subject.
        await asyncio.wait_for(proc.wait(), 20)
