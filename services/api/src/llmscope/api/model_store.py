"""The models probed: their list, their health by target, and their on/off switch (stored and told
to the probers together)."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import asyncpg

from llmscope.api import health_overview
from llmscope.api.store_base import NotReady, StoreBase
from llmscope.api.switches import SwitchesUnavailable
from llmscope.proto.charts import AVAILABILITY, ChartRecord, chart_key
from llmscope.web.data import HealthOverview, ModelInfo


def _model_from_row(row: asyncpg.Record) -> ModelInfo:
    return ModelInfo(
        provider=row["provider"],
        model=row["model"],
        enabled=row["enabled"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        target=row["target"],
        host=row["host"],
        last_status=row["last_status"],
        cpu_percent=row["cpu_percent"],
        memory_percent=row["memory_percent"],
        gpu_percent=row["gpu_percent"],
        gpu_memory_percent=row["gpu_memory_percent"],
        source=row["source"],
    )


class ModelStore(StoreBase):
    """The models table and the probers' switches."""

    async def models(self) -> list[ModelInfo]:
        rows = await self.pool.fetch("SELECT * FROM models ORDER BY provider, model")
        return [_model_from_row(r) for r in rows]

    async def model_health(self, hours: float, now: datetime | None = None) -> HealthOverview:
        """The overview from Postgres, each target with its availability chart from the engine."""
        overview = await health_overview.model_health(self.pool, hours, now)
        targets = sorted({(m.provider, m.model, m.target) for m in overview.models})
        keys = [chart_key(provider, model, target, "*", AVAILABILITY) for provider, model, target in targets]
        records: dict[tuple[str, str, str], ChartRecord | None] = dict(
            zip(targets, await self.charts.get_many(keys), strict=True)
        )
        rows = []
        for row in overview.models:
            record = records.get((row.provider, row.model, row.target))
            rows.append(dataclasses.replace(row, availability=record.availability if record else None))
        return dataclasses.replace(overview, models=rows)

    async def set_model_enabled(self, provider: str, model: str, enabled: bool) -> ModelInfo | None:
        """Record the switch and tell the probers; neither happens unless both can."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """UPDATE models SET enabled = $3, updated_at = now()
                   WHERE provider = $1 AND model = $2 RETURNING *""",
                provider,
                model,
                enabled,
            )
            if row is None:
                return None
            try:
                await self.switches.put(row["provider"], model, enabled)
            except SwitchesUnavailable as exc:
                raise NotReady(str(exc)) from exc
        return _model_from_row(row)
