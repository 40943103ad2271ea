"""What every part of the API's store shares: the asyncpg pool (attached once the app opens it) and
the collaborators its writes tell (the engine's charts, the probers' switches, the outbound policy,
the alerter's mirror of actions and settings). ``Store`` (store.py) is assembled from one class per
concern on this base."""

from __future__ import annotations

import asyncpg

from llmscope.api.charts import ChartViews
from llmscope.api.settings_mirror import SettingsMirror
from llmscope.api.switches import ModelSwitchWriter
from llmscope.api.violation_actions import ViolationActions
from llmscope.config.outbound import OutboundPolicy


class NotReady(RuntimeError):
    """The database pool is not open yet (the app is starting or stopping)."""


class StoreBase:
    """The pool and the collaborators every part of the store uses."""

    def __init__(
        self,
        pool: asyncpg.Pool | None = None,
        *,
        charts: ChartViews | None = None,
        switches: ModelSwitchWriter | None = None,
        outbound: OutboundPolicy | None = None,
        actions: ViolationActions | None = None,
        settings_mirror: SettingsMirror | None = None,
    ) -> None:
        self._pool = pool
        self.charts = charts or ChartViews()
        self.switches = switches or ModelSwitchWriter()
        self.outbound = outbound or OutboundPolicy()
        # People's actions on violations and the settings, told to the alerter over the bus.
        self.actions = actions or ViolationActions(lambda: self._pool)
        self.settings_mirror = settings_mirror or SettingsMirror(lambda: self._pool)

    def attach(self, pool: asyncpg.Pool | None) -> None:
        """Set (or clear) the pool; the app opens it in its lifespan, after routes exist."""
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise NotReady("database pool is not open")
        return self._pool

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")
