"""Publishes model switches (enabled or not) to the KV bucket the probers watch."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.kv import KeyValue

from llmscope.bus.kv import open_bucket
from llmscope.proto import subjects
from llmscope.proto.base import utcnow
from llmscope.proto.switches import ModelSwitch, model_key
from llmscope.proto.telemetry import ProviderKind


class SwitchesUnavailable(RuntimeError):
    """NATS is not reachable, so probers cannot be told."""


class ModelSwitchWriter:
    """Writes one :class:`ModelSwitch` per model; the probers apply it within a second."""

    def __init__(self, bucket: str = subjects.MODELS_BUCKET, replicas: int = 1) -> None:
        self.bucket = bucket
        self.replicas = replicas
        self._nc: NATS | None = None
        self._kv: KeyValue | None = None

    def attach(self, nc: NATS | None) -> None:
        self._nc = nc
        self._kv = None

    async def put(self, provider: ProviderKind, model: str, enabled: bool, updated_by: str = "") -> None:
        if self._nc is None:
            raise SwitchesUnavailable("not connected to NATS")
        try:
            if self._kv is None:
                self._kv = await open_bucket(
                    self._nc.jetstream(),
                    self.bucket,
                    description="LLMscope model switches",
                    replicas=self.replicas,
                )
            switch = ModelSwitch(
                provider=provider, model=model, enabled=enabled, updated_by=updated_by, updated_at=utcnow()
            )
            await self._kv.put(model_key(provider, model), msgspec.json.encode(switch))
        except (NatsError, TimeoutError) as exc:
            raise SwitchesUnavailable(f"could not publish the switch: {exc!r}") from exc
