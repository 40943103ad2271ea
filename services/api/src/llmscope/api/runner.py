"""Run the API in-process on a real socket (for the CLI and for whole-stack tests).

async with run_api(settings) as base_url:   # settings.port 0 picks a free port
    httpx.get(f"{base_url}/api/violations", headers={"Authorization": f"Bearer {key}"})
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn

from llmscope.api.app import create_app
from llmscope.api.settings import ApiSettings


@contextlib.asynccontextmanager
async def run_api(settings: ApiSettings, *, startup_timeout: float = 60.0) -> AsyncIterator[str]:
    """Serve the app until the block exits; yields its base URL once it accepts requests."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server._serve())  # _serve: no signal handlers in library use
    loop = asyncio.get_running_loop()
    deadline = loop.time() + startup_timeout
    while not server.started:
        if task.done():
            task.result()  # re-raise the start-up error
            raise RuntimeError("the API exited during start-up")
        if loop.time() > deadline:
            server.should_exit = True
            await task
            raise TimeoutError(f"the API did not start within {startup_timeout:.0f} s")
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{settings.host}:{port}"
    finally:
        # Open event streams would hold uvicorn's graceful shutdown forever: end them first.
        app.state.runtime.live.close_all()
        server.should_exit = True
        await task
