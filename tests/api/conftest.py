"""The API under test: a real app (real Postgres and nats-server from the root fixtures)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from llmscope.api.app import create_app
from llmscope.api.db import create_pool
from llmscope.api.runtime import Runtime
from llmscope.api.settings import ApiSettings
from llmscope.api.store import Store
from llmscope.bus.settings import BusSettings
from llmscope.config.env import Secret

API_KEY = "test-key-0123456789abcdef"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this test's own database, migrated (the persister's and the fold's tests)."""
    pool = await create_pool(database_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def settings(database_url: str, nats_url: str) -> ApiSettings:
    return ApiSettings(
        database_url=Secret(database_url),
        api_key=Secret(API_KEY),
        bus=BusSettings(nats_url=nats_url),
        port=0,
        spc_request_timeout_s=2.0,
        persister=False,  # tests seed Postgres directly; `persisting_api` runs the persister
        alert_allowed_hosts=LOOPBACK,  # local SMTP and HTTP sinks, as an operator's allow-list
    )


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    anon: httpx.AsyncClient

    @property
    def runtime(self) -> Runtime:
        rt = self.app.state.runtime
        assert isinstance(rt, Runtime)
        return rt

    @property
    def store(self) -> Store:
        return self.runtime.store


@pytest.fixture
async def api(settings: ApiSettings) -> AsyncIterator[Api]:
    """The app with its lifespan running, a client with the key and one without."""
    async with serve(settings) as running:
        yield running


@pytest.fixture
async def persisting_api(settings: ApiSettings) -> AsyncIterator[Api]:
    """The app with the in-process persister consuming JetStream into Postgres."""
    async with serve(dataclasses.replace(settings, persister=True)) as running:
        yield running


@contextlib.asynccontextmanager
async def serve(settings: ApiSettings, *, clock: Callable[[], float] = time.time) -> AsyncIterator[Api]:
    app = create_app(settings, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as client,
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as anon,
    ):
        yield Api(app, client, anon)
