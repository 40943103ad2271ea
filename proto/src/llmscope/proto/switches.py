"""Model switches: whether a model is probed at all.

The API writes one :class:`ModelSwitch` per model into the JetStream KV bucket
``subjects.MODELS_BUCKET`` (key :func:`model_key`); probers watch the bucket and skip disabled
models at once, with no restart. Absent keys mean enabled, so a fresh install probes everything.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from llmscope.proto import subjects
from llmscope.proto.telemetry import ProviderKind


class ModelSwitch(msgspec.Struct, frozen=True, kw_only=True):
    """The KV value of one model's switch."""

    provider: ProviderKind
    model: str
    enabled: bool
    updated_by: str = ""
    updated_at: datetime | None = None


_decoder = msgspec.json.Decoder(ModelSwitch)


def model_key(provider: str, model: str) -> str:
    return subjects.kv_key(provider, model)


def decode_switch(data: bytes) -> ModelSwitch:
    return _decoder.decode(data)


class ModelSwitches:
    """The set of disabled models, kept current from the bucket's updates (pure)."""

    def __init__(self) -> None:
        self._disabled: set[tuple[str, str]] = set()

    def apply(self, key: str, value: bytes | None) -> None:
        """One bucket update: a value, or None for a deleted or purged key."""
        provider, model = subjects.parse_kv_key(key, 2)
        if value is None or decode_switch(value).enabled:
            self._disabled.discard((provider, model))
        else:
            self._disabled.add((provider, model))

    def enabled(self, provider: str, model: str) -> bool:
        return (provider, model) not in self._disabled

    @property
    def disabled(self) -> frozenset[tuple[str, str]]:
        return frozenset(self._disabled)
