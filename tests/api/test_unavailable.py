"""Postgres away or too slow is 503 with Retry-After, on the API and the dashboard, never a 500;
the same routes answer again once it is back. Every query has a statement timeout."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from llmscope.api.db import create_pool
from llmscope.api.settings import ApiSettings
from llmscope.bus.settings import BusSettings
from llmscope.config.env import Secret
from llmscope.stack.embedded import EmbeddedPostgres
from tests.alerter.harness import eventually
from tests.api.conftest import API_KEY, Api, serve

pytestmark = pytest.mark.fault

HTML = {"accept": "text/html"}


def own_settings(dsn: str, nats_url: str, statement_timeout_s: float = 5.0) -> ApiSettings:
    return ApiSettings(
        database_url=Secret(dsn),
        api_key=Secret(API_KEY),
        bus=BusSettings(nats_url=nats_url),
        port=0,
        persister=False,
        db_statement_timeout_s=statement_timeout_s,
    )


async def logged_in(api: Api) -> httpx.AsyncClient:
    r = await api.anon.post("/login", data={"key": API_KEY, "next": "/"})
    assert r.status_code == 303
    return api.anon


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, (r.status_code, r.text[:300])
    assert int(r.headers["retry-after"]) > 0


async def test_postgres_stopped_is_503_with_retry_after_then_recovers(
    own_postgres: EmbeddedPostgres, nats_url: str
) -> None:
    dsn = own_postgres.create_database("unavailable")
    async with serve(own_settings(dsn, nats_url)) as api:
        page = await logged_in(api)
        assert (await api.client.get("/api/violations")).status_code == 200
        assert (await page.get("/", headers=HTML)).status_code == 200

        await asyncio.to_thread(own_postgres.stop)
        r = await api.client.get("/api/violations")
        assert_unavailable(r)
        assert "database unavailable" in r.json()["detail"]
        for path in ("/", "/dashboard"):
            r = await page.get(path, headers=HTML)
            assert_unavailable(r)
            assert "text/html" in r.headers["content-type"]
            assert "cannot answer just now" in r.text

        await asyncio.to_thread(own_postgres.start)

        async def back() -> bool:
            return (await api.client.get("/api/violations")).status_code == 200

        await eventually(back, within=30, what="the API answering again once Postgres is back")
        assert (await page.get("/", headers=HTML)).status_code == 200


async def test_a_query_past_the_statement_timeout_is_503_not_a_hang(
    own_postgres: EmbeddedPostgres, nats_url: str
) -> None:
    dsn = own_postgres.create_database("slow")
    async with serve(own_settings(dsn, nats_url, statement_timeout_s=1.0)) as api:
        assert (await api.client.get("/api/violations")).status_code == 200
        # A lock held elsewhere makes the route's query wait: without a statement timeout it
        # waited for as long as the lock was held (a frozen database looks the same).
        blocker = await asyncpg.connect(dsn)
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE violations IN ACCESS EXCLUSIVE MODE")
                r = await asyncio.wait_for(api.client.get("/api/violations"), 15)
            assert_unavailable(r)
            assert "timed out" in r.json()["detail"]
        finally:
            await blocker.close()
        assert (await api.client.get("/api/violations")).status_code == 200


async def test_every_pool_connection_has_the_statement_timeout(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=2, max_size=2, statement_timeout_s=0.5)
    try:
        assert await pool.fetchval("SHOW statement_timeout") == "500ms"
        with pytest.raises(asyncpg.QueryCanceledError):
            await pool.execute("SELECT pg_sleep(3)")
    finally:
        await pool.close()
