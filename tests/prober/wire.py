"""A tiny local HTTP server that answers every POST with crafted provider wire bytes.

Each answer is a list of frames written one by one (``gap_s`` apart), then either a clean end or
``cut=True``: the connection is closed mid-body, as a server that dies or drops a stream does.
It also counts the requests it sees and the most it ever had in flight at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from llmscope.stack.ports import free_port


@dataclass
class Answer:
    """What the server writes for each request."""

    frames: Sequence[bytes] = ()
    gap_s: float = 0.0
    cut: bool = False
    delay_s: float = 0.0
    """Wait before the headers: the time one request holds a server slot."""
    content_type: str = "text/event-stream"


@dataclass
class WireServer:
    url: str
    answer: Answer
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_for_requests(self, n: int) -> None:
        async with self.arrived:
            await self.arrived.wait_for(lambda: self.requests >= n)


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def openai_chunk(content: str | None = None, finish_reason: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return sse({"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})


def ndjson(data: dict[str, Any]) -> bytes:
    return (json.dumps(data) + "\n").encode()


@asynccontextmanager
async def wire_server(answer: Answer) -> AsyncIterator[WireServer]:
    port = free_port()
    server = WireServer(url=f"http://127.0.0.1:{port}", answer=answer)

    async def handle(request: web.Request) -> web.StreamResponse:
        server.requests += 1
        server.in_flight += 1
        server.max_in_flight = max(server.max_in_flight, server.in_flight)
        async with server.arrived:
            server.arrived.notify_all()
        try:
            server.bodies.append(await request.json())
            a = server.answer
            if a.delay_s:
                await asyncio.sleep(a.delay_s)
            resp = web.StreamResponse(headers={"Content-Type": a.content_type})
            await resp.prepare(request)
            for i, frame in enumerate(a.frames):
                if i and a.gap_s:
                    await asyncio.sleep(a.gap_s)
                await resp.write(frame)
            if a.cut:
                assert request.transport is not None
                request.transport.close()
                return resp
            await resp.write_eof()
            return resp
        finally:
            server.in_flight -= 1

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield server
    finally:
        await runner.cleanup()
