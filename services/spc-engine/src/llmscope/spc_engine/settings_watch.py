"""Per-model settings: the overrides bucket watched, and changes adopted at a batch boundary.

Per-model settings (:mod:`llmscope.proto.chartconfig`): the service watches the overrides bucket
``llmscope_spc_config``. A change it sees for a model of a partition it holds is adopted before
the partition's next batch of telemetry is charted, from that batch's first stream sequence on:
the model's settings log (``_settings.<provider>.<model>`` in the chart bucket) is written, and
acknowledged by JetStream, before the batch is charted, and loaded when the partition is taken,
so a replay after a crash or a move applies the change at the same point. Changes older than the
partition's checkpoint are pruned from the log, except the one still in force. At start the
service also writes its defaults (``_defaults``).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

import msgspec
from nats.js.kv import KeyValue

from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.proto.chartconfig import (
    DEFAULTS_KEY,
    METRIC_NAMES,
    ChartSettings,
    SpcDefaults,
    decode_overrides,
)
from llmscope.spc_engine.config import to_settings
from llmscope.spc_engine.engine import SettingsLog
from llmscope.spc_engine.service_core import ServiceCore, config_for

log = get_logger("llmscope.spc_engine")


SETTINGS_PREFIX = "_settings."


def settings_key(provider: str, model: str) -> str:
    """Chart-bucket key of a model's settings log."""
    return SETTINGS_PREFIX + subjects.kv_key(provider, model)


class SettingsWatch(ServiceCore):
    """Adopts per-model overrides before the next batch of their partition (see the module doc)."""

    @property
    def pending_overrides(self) -> frozenset[tuple[str, str]]:
        """Models whose overrides changed and apply from their partition's next batch."""
        return frozenset(self._pending)

    def on_overrides(self, key: str, value: bytes | None) -> None:
        """One update of the overrides bucket (a ValueError for a bad one is logged and skipped)."""
        provider, model = subjects.parse_kv_key(key, 2)
        if self.engine.owns(provider, model):
            self._pending[(provider, model)] = None if value is None else decode_overrides(value)

    async def adopt_overrides(self, partition: int, from_seq: int) -> None:
        """Make a partition's pending overrides apply from ``from_seq``, durably, before charting it."""
        mine = [pm for pm in self._pending if self.partition_of(*pm) == partition]
        for provider, model in mine:
            overrides = self._pending.pop((provider, model))
            if not self.engine.set_overrides(provider, model, overrides, from_seq):
                continue
            self.engine.prune_settings(provider, model, self._checkpointed.get(partition, 0))
            log_ = self.engine.settings_log(provider, model)
            await self._kv.put(settings_key(provider, model), msgspec.json.encode(log_))
            who = overrides.updated_by if overrides is not None else "(removed)"
            log.info("settings adopted", provider=provider, model=model, from_seq=from_seq, by=who)

    async def load_settings(self, partitions: Collection[int]) -> None:
        """The settings logs of the models of ``partitions``, from the chart bucket."""
        async for _key, value in self._entries(self._kv, self.settings.charts_bucket, SETTINGS_PREFIX + ">"):
            settings_log = msgspec.json.decode(value, type=SettingsLog)
            if self.partition_of(settings_log.provider, settings_log.model) in partitions:
                self.engine.load_settings_log(settings_log)

    async def write_defaults(self) -> None:
        metrics: dict[str, ChartSettings] = {
            m: to_settings(config_for(self.settings, m)) for m in METRIC_NAMES
        }
        defaults = SpcDefaults(metrics=metrics, updated_at=datetime.now(UTC))
        await self._kv.put(DEFAULTS_KEY, msgspec.json.encode(defaults))

    async def _read_overrides(self, kv: KeyValue, partitions: Collection[int]) -> None:
        # The current overrides, before a partition's first batch: its charts start with them.
        async for key, value in self._entries(kv, subjects.SPC_CONFIG_BUCKET, ">"):
            try:
                provider, model = subjects.parse_kv_key(key, 2)
                if self.partition_of(provider, model) in partitions:
                    self.on_overrides(key, value)
            except ValueError as exc:
                log.warning("ignored malformed overrides", key=key, error=str(exc))
