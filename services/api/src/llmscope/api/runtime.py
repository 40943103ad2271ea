"""What the API process holds while it runs: the pool, the NATS connection, the persister tasks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
from fastapi import FastAPI
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from llmscope.api.alerting import Alerting
from llmscope.api.auth import KeyAuth
from llmscope.api.baseline_history import BaselineHistory
from llmscope.api.charts import ChartViews
from llmscope.api.db import open_pool
from llmscope.api.fingerprint_key import load_fingerprint_key
from llmscope.api.live import LiveFeed
from llmscope.api.metrics import ApiMetrics
from llmscope.api.persister import Persister, fold_loop, retention_loop, tune_gc
from llmscope.api.ratelimit import FailureLimiter
from llmscope.api.repages import Repages
from llmscope.api.sessions import RevokedSessions
from llmscope.api.settings import ApiSettings
from llmscope.api.settings_mirror import SettingsMirror
from llmscope.api.spc_config import SpcConfigStore
from llmscope.api.store import Store
from llmscope.api.switches import ModelSwitchWriter
from llmscope.api.telemetry_context import TelemetryContext
from llmscope.api.violation_actions import ViolationActions
from llmscope.bus.connection import connect
from llmscope.bus.layout import bucket_configs, prepare
from llmscope.bus.publisher import Publisher
from llmscope.config.logs import get_logger
from llmscope.config.outbound import OutboundPolicy
from llmscope.proto import subjects
from llmscope.web.live import Broadcaster
from llmscope.web.userinfo import release_fingerprint_key, use_fingerprint_key

log = get_logger("llmscope.api")


# The buckets the API writes (switches, chart settings, its settings for the alerter); the chart
# bucket it only reads.
API_BUCKETS = (subjects.MODELS_BUCKET, subjects.SPC_CONFIG_BUCKET, subjects.SETTINGS_BUCKET)


def api_buckets(settings: ApiSettings) -> list[KeyValueConfig]:
    return [c for c in bucket_configs(settings.bus) if c.bucket in API_BUCKETS]


class Runtime:
    """Created with the app; its resources are opened by the lifespan and closed after."""

    def __init__(self, settings: ApiSettings, *, clock: Callable[[], float] = time.time) -> None:
        """``clock`` (Unix seconds) times sessions and the failed-authentication limit."""
        self.settings = settings
        self.metrics = ApiMetrics()
        self._pool: asyncpg.Pool | None = None
        self.auth = KeyAuth(
            {"admin": settings.api_key, "read": settings.read_key, "ingest": settings.ingest_key},
            revoked=RevokedSessions(lambda: self._pool),
            limiter=FailureLimiter(settings.auth_failures, settings.auth_failure_window_s, clock=clock),
            session_s=settings.session_days * 86400,
            clock=clock,
        )
        self.charts = ChartViews(settings.charts_bucket, settings.spc_request_timeout_s)
        self.spc_config = SpcConfigStore(self.charts, replicas=settings.bus.replicas)
        self.switches = ModelSwitchWriter(replicas=settings.bus.replicas)
        self.actions = ViolationActions(lambda: self._pool)
        self.settings_mirror = SettingsMirror(lambda: self._pool, replicas=settings.bus.replicas)
        self.telemetry_context = TelemetryContext(lambda: self._pool)
        # The alerter's word of violations it paged again after a hand resolution.
        self.repages = Repages(lambda: self._pool)
        self.store = Store(
            charts=self.charts,
            switches=self.switches,
            outbound=OutboundPolicy(settings.alert_allowed_hosts),
            actions=self.actions,
            settings_mirror=self.settings_mirror,
        )
        self.nc: NATS | None = None
        self.publisher: Publisher | None = None
        self.persister: Persister | None = None
        self.baseline_history: BaselineHistory | None = None
        self.live = Broadcaster()  # the dashboard's open tabs, fed from the bus while connected
        self._live_feed = LiveFeed(self.live)
        self.alerting = Alerting(lambda: self.store.pool, lambda: self.nc, violations=self.store)
        self._stop = asyncio.Event()  # ends the persister's tasks
        self._tasks: list[asyncio.Task[None]] = []
        self._fingerprint_key: bytes | None = None

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Open the pool (waiting for Postgres), connect to NATS (waiting too), start the persister.

        Raises :class:`~llmscope.config.startup.Stopped` when ``stop`` is set before both
        answered and :class:`~llmscope.config.startup.Unusable` when Postgres refuses us;
        whatever was opened is closed again then.
        """
        s = self.settings
        self._stop = asyncio.Event()  # fresh: a lifespan may run again after a close
        self._pool = await open_pool(
            s.database_url.get(),
            min_size=s.db_pool_min,
            max_size=s.db_pool_max,
            stop=stop,
            statement_timeout_s=s.db_statement_timeout_s,
        )
        self.store.attach(self._pool)
        try:
            # Every page, chart and report this process prints fingerprints hidden target
            # secrets under the installation's key (llmscope.web.userinfo), set before serving.
            self._fingerprint_key = await load_fingerprint_key(self._pool)
            use_fingerprint_key(self._fingerprint_key)
            self.nc = await connect(s.bus.nats_url, "llmscope-api", stop=stop)
            js = self.nc.jetstream()
            await prepare(js, s.bus, stop, buckets=api_buckets(s))
            self.publisher = Publisher(js)
            self.charts.attach(self.nc)
            self.spc_config.attach(self.nc)
            self.switches.attach(self.nc)
            # What the alerter learns from the API over the bus (it never reads our tables):
            # people's actions on violations (an outbox in the violations table, published again
            # until stored) and the settings (mirrored into their bucket).
            self.actions.attach(self.publisher)
            self.settings_mirror.attach(self.nc)
            self._tasks.append(asyncio.create_task(self.actions.run(self._stop), name="violation-actions"))
            self._tasks.append(
                asyncio.create_task(self.settings_mirror.run(self._stop), name="settings-mirror")
            )
            await self.telemetry_context.start(self.nc)
            await self.repages.start(self.nc)
            await self._live_feed.start(self.nc)
            if s.persister:
                tune_gc()  # a batch's young objects are not walked again every 700 allocations
                self.persister = Persister(
                    pool=self._pool,
                    js=js,
                    publisher=self.publisher,
                    batch_size=s.persist_batch,
                    metrics=self.metrics,
                    on_stored=self._live_feed.on_stored,
                )
                self._tasks.append(asyncio.create_task(self.persister.run(self._stop), name="persister"))
                self._tasks.append(
                    asyncio.create_task(retention_loop(self._pool, s, self._stop), name="retention")
                )
                self._tasks.append(asyncio.create_task(fold_loop(self._pool, self._stop), name="hour-fold"))
                pool = self._pool
                self.baseline_history = BaselineHistory(
                    lambda: pool, s.charts_bucket, on_record=self._live_feed.on_chart
                )
                self._tasks.append(
                    asyncio.create_task(
                        self.baseline_history.run(self.nc, self._stop), name="baseline-history"
                    )
                )
        except BaseException:
            await self.close()
            raise
        log.info("api started", persister=s.persister)

    async def close(self) -> None:
        """Stop the persister, drain NATS, close the pool; safe after a partial start."""
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.charts.attach(None)
        self.spc_config.attach(None)
        self.switches.attach(None)
        self.actions.attach(None)
        self.settings_mirror.attach(None)
        await self.telemetry_context.stop()
        await self.repages.stop()
        await self._live_feed.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
            self.nc = None
        release_fingerprint_key(self._fingerprint_key)
        self._fingerprint_key = None
        if self._pool is not None:
            self.store.attach(None)
            await self._pool.close()
            self._pool = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        # ``llmscope api`` starts the runtime before serving, so that signals and an unusable
        # database during start-up are its own to report; elsewhere (tests, run_api) the
        # lifespan opens and closes it.
        owned = self._pool is None
        if owned:
            await self.start()
        try:
            yield
        finally:
            if owned:
                await self.close()
