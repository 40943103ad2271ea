"""What the API process holds while it runs: the pool, the NATS connection, the persister tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from nats.aio.client import Client as NATS

from llmscope.api.alerting import Alerting
from llmscope.api.auth import KeyAuth
from llmscope.api.charts import ChartViews
from llmscope.api.db import create_pool
from llmscope.api.metrics import ApiMetrics
from llmscope.api.persister import Persister, retention_loop
from llmscope.api.settings import ApiSettings
from llmscope.api.spc_config import SpcConfigStore
from llmscope.api.store import Store
from llmscope.api.switches import ModelSwitchWriter
from llmscope.bus.connection import connect
from llmscope.bus.publisher import Publisher
from llmscope.bus.streams import ensure_streams
from llmscope.config.logs import get_logger

log = get_logger("llmscope.api")


class Runtime:
    """Created with the app; its resources are opened by the lifespan and closed after."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.metrics = ApiMetrics()
        self.auth = KeyAuth(settings.api_key, session_s=settings.session_days * 86400)
        self.charts = ChartViews(settings.charts_bucket, settings.spc_request_timeout_s)
        self.spc_config = SpcConfigStore(self.charts, replicas=settings.bus.replicas)
        self.switches = ModelSwitchWriter(replicas=settings.bus.replicas)
        self.store = Store(charts=self.charts, switches=self.switches)
        self.nc: NATS | None = None
        self.publisher: Publisher | None = None
        self.persister: Persister | None = None
        self.alerting = Alerting(lambda: self.store.pool, lambda: self.nc)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        s = self.settings
        pool = await create_pool(s.database_url.get(), min_size=s.db_pool_min, max_size=s.db_pool_max)
        self.store.attach(pool)
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        try:
            self.nc = await connect(s.bus.nats_url, "llmscope-api")
            js = self.nc.jetstream()
            await ensure_streams(js, s.bus)
            self.publisher = Publisher(js)
            self.charts.attach(self.nc)
            self.spc_config.attach(self.nc)
            self.switches.attach(self.nc)
            if s.persister:
                self.persister = Persister(
                    pool=pool,
                    js=js,
                    publisher=self.publisher,
                    batch_size=s.persist_batch,
                    metrics=self.metrics,
                )
                tasks.append(asyncio.create_task(self.persister.run(stop), name="persister"))
                tasks.append(asyncio.create_task(retention_loop(pool, s, stop), name="retention"))
            log.info("api started", persister=s.persister)
            yield
        finally:
            stop.set()
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=10)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            self.charts.attach(None)
            self.spc_config.attach(None)
            self.switches.attach(None)
            if self.nc is not None:
                with contextlib.suppress(Exception):
                    await self.nc.drain()
            self.store.attach(None)
            await pool.close()
