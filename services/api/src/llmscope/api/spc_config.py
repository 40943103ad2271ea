"""Per-model SPC chart settings: the API writes the overrides bucket the SPC engine watches.

The contract is :mod:`llmscope.proto.chartconfig`. The engine publishes its defaults in its chart
bucket; the effective settings shown here are those defaults with the overrides on top, and each
chart of the model says whether it already runs with them (the engine applies a change at the
chart's next point).
"""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from llmscope.api.charts import ChartFilter, ChartViews
from llmscope.bus.kv import open_bucket
from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.proto.base import utcnow
from llmscope.proto.chartconfig import (
    DEFAULTS_KEY,
    METRIC_NAMES,
    ChartSettings,
    ChartSettingsState,
    ModelConfigView,
    ModelOverrides,
    SpcDefaults,
    decode_defaults,
    decode_overrides,
    effective,
    error_path,
)
from llmscope.web.chart_settings import SettingsRejected, SettingsUnavailable

log = get_logger("llmscope.api.spc_config")


class SpcConfigStore:
    """Reads and writes one model's overrides; reads the engine's defaults and chart views."""

    def __init__(
        self, charts: ChartViews, bucket: str = subjects.SPC_CONFIG_BUCKET, replicas: int = 1
    ) -> None:
        self.charts = charts
        self.bucket = bucket
        self.replicas = replicas
        self._nc: NATS | None = None
        self._kv: KeyValue | None = None

    def attach(self, nc: NATS | None) -> None:
        self._nc = nc
        self._kv = None

    async def _bucket(self) -> KeyValue:
        if self._nc is None:
            raise SettingsUnavailable("not connected to NATS")
        if self._kv is None:
            try:
                self._kv = await open_bucket(
                    self._nc.jetstream(),
                    self.bucket,
                    description="LLMscope per-model SPC chart settings (overrides)",
                    replicas=self.replicas,
                )
            except (NatsError, TimeoutError) as exc:
                raise SettingsUnavailable(f"could not open the settings bucket: {exc!r}") from exc
        return self._kv

    async def overrides(self, provider: str, model: str) -> ModelOverrides | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(subjects.kv_key(provider, model))
        except KeyNotFoundError:  # also a deleted key
            return None
        if entry.value is None:
            return None
        try:
            return decode_overrides(entry.value)
        except msgspec.ValidationError as exc:
            log.warning("unreadable overrides", provider=provider, model=model, error=str(exc))
            return None

    async def defaults(self) -> SpcDefaults | None:
        """The engine's defaults, or None when no engine has published them yet."""
        if self._nc is None:
            raise SettingsUnavailable("not connected to NATS")
        try:
            kv = await self._nc.jetstream().key_value(self.charts.bucket)
            entry = await kv.get(DEFAULTS_KEY)
        except (BucketNotFoundError, KeyNotFoundError):
            return None
        if entry.value is None:
            return None
        try:
            return decode_defaults(entry.value)
        except msgspec.ValidationError as exc:
            log.warning("unreadable engine defaults", error=str(exc))
            return None

    async def view(self, provider: str, model: str) -> ModelConfigView:
        """Defaults, raw overrides, effective settings per metric, and each chart's state."""
        overrides = await self.overrides(provider, model)
        defaults = await self.defaults()
        eff: dict[str, ChartSettings] | None = None
        if defaults is not None:
            eff = {
                m: effective(defaults.metrics[m], overrides, m) for m in METRIC_NAMES if m in defaults.metrics
            }
        charts = []
        for record in await self.charts.list(ChartFilter(provider=provider, model=model)):
            view = record.view
            if view is None or record.traffic is not None:  # availability, traffic: no overrides
                continue
            want = (eff or {}).get(record.meta.metric)
            charts.append(
                ChartSettingsState(
                    key=record.key,
                    target=record.meta.target,
                    prompt_id=record.meta.prompt_id,
                    metric=record.meta.metric,
                    phase=view.phase,
                    progress=view.progress,
                    baseline_n=view.baseline_n,
                    applied=want is not None and view.settings == want,
                    arl0_critical=view.arl0_critical,
                )
            )
        return ModelConfigView(
            provider=provider,
            model=model,
            overrides=overrides,
            defaults=None if defaults is None else defaults.metrics,
            effective=eff,
            charts=charts,
        )

    async def put(self, provider: str, model: str, body: bytes) -> ModelConfigView:
        """Validate a :class:`ModelOverrides` body and store it (``updated_at`` is now)."""
        try:
            raw = msgspec.json.decode(body)
            if isinstance(raw, dict) and "updated_at" in raw:
                # the server's to set (below): what a client sends there is ignored, whatever it is
                del raw["updated_at"]
                body = msgspec.json.encode(raw)
            overrides = decode_overrides(body, strict=True)
        except msgspec.DecodeError as exc:
            path, message = error_path(exc)
            raise SettingsRejected(path, message) from exc
        overrides = msgspec.structs.replace(overrides, updated_at=utcnow())
        kv = await self._bucket()
        try:
            await kv.put(subjects.kv_key(provider, model), msgspec.json.encode(overrides))
        except (NatsError, TimeoutError) as exc:
            raise SettingsUnavailable(f"could not store the settings: {exc!r}") from exc
        log.info("spc settings changed", provider=provider, model=model, by=overrides.updated_by)
        return await self.view(provider, model)

    async def delete(self, provider: str, model: str) -> ModelConfigView:
        """Remove the model's overrides: its charts go back to the engine's defaults."""
        kv = await self._bucket()
        if await self.overrides(provider, model) is not None:
            try:
                await kv.delete(subjects.kv_key(provider, model))
            except (NatsError, TimeoutError) as exc:
                raise SettingsUnavailable(f"could not remove the settings: {exc!r}") from exc
            log.info("spc settings removed", provider=provider, model=model)
        return await self.view(provider, model)
