"""The SPC engine's charts as the API sees them: views from its KV bucket, re-baseline requests.

The engine owns the charts (:mod:`llmscope.proto.charts` documents the KV contract); the API
only reads them and forwards re-baseline requests. The bucket appears when the engine first
starts, so a missing bucket or key is normal (the chart reads as not known yet), never an error.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from llmscope.bus.kv import bucket_keys
from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.proto.charts import (
    ChartRecord,
    ModelRebaselineReply,
    ModelRebaselineRequest,
    RebaselineReply,
    RebaselineRequest,
    decode_record,
    is_chart_key,
    is_traffic_chart,
    parse_chart_key,
)
from llmscope.web.data import ModelRebaselineResult, RebaselineResult

log = get_logger("llmscope.api.charts")

# KV reads of a chart list run concurrently, but a bounded number at a time.
_PARALLEL_GETS = 16


class EngineUnavailable(RuntimeError):
    """The API is not connected to NATS (starting or stopping)."""


@dataclass(frozen=True, slots=True)
class ChartFilter:
    """Parts of a chart key to match; None matches anything."""

    provider: str | None = None
    model: str | None = None
    target: str | None = None
    prompt_id: str | None = None
    metric: str | None = None

    def matches(self, key: str) -> bool:
        parts = parse_chart_key(key)
        wanted = (self.provider, self.model, self.target, self.prompt_id, self.metric)
        return all(w is None or w == p for w, p in zip(wanted, parts, strict=True))


class ChartViews:
    """Reads chart records from the engine's KV bucket and sends it re-baseline requests."""

    def __init__(self, bucket: str = subjects.SPC_CHARTS_BUCKET, request_timeout_s: float = 5.0) -> None:
        self.bucket = bucket
        self.request_timeout_s = request_timeout_s
        self._nc: NATS | None = None
        self._kv: KeyValue | None = None

    def attach(self, nc: NATS | None) -> None:
        """Set (or clear) the NATS connection; the app opens it in its lifespan."""
        self._nc = nc
        self._kv = None

    async def _bucket(self) -> KeyValue | None:
        if self._kv is None and self._nc is not None:
            try:
                self._kv = await self._nc.jetstream().key_value(self.bucket)
            except BucketNotFoundError:
                return None  # no engine has run yet: look again next time
        return self._kv

    async def get(self, key: str) -> ChartRecord | None:
        """The chart's record, or None when the engine has not written it (or is unknown)."""
        kv = await self._bucket()
        if kv is None:
            return None
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        except NotFoundError:
            self._kv = None  # the bucket was deleted under us
            return None
        if entry.value is None:
            return None
        try:
            return decode_record(entry.value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("unreadable chart record", key=key, error=str(exc))
            return None

    async def keys(self, flt: ChartFilter | None = None) -> list[str]:
        """Chart keys in the bucket (bookkeeping keys left out), sorted."""
        kv = await self._bucket()
        if kv is None or self._nc is None:
            return []
        keys = await bucket_keys(self._nc.jetstream(), self.bucket)
        flt = flt or ChartFilter()
        return sorted(k for k in keys if is_chart_key(k) and flt.matches(k))

    async def list(self, flt: ChartFilter | None = None) -> list[ChartRecord]:
        """Records of the matching charts, by key."""
        found = await self.get_many(await self.keys(flt))
        return [r for r in found if r is not None]

    async def traffic_charts(
        self, provider: str | None = None, model: str | None = None
    ) -> builtins.list[ChartRecord]:
        """The traffic charts (:class:`~llmscope.web.traffic.TrafficData`), of one model when given."""
        keys = [
            k for k in await self.keys(ChartFilter(provider=provider, model=model)) if is_traffic_chart(k)
        ]
        return [r for r in await self.get_many(keys) if r is not None and r.traffic is not None]

    async def traffic_chart(self, chart_key: str) -> ChartRecord | None:
        """One traffic chart's record; None for another chart or none."""
        record = await self.get(chart_key) if is_traffic_chart(chart_key) else None
        return record if record is not None and record.traffic is not None else None

    async def get_many(self, keys: Sequence[str]) -> Sequence[ChartRecord | None]:
        """The records of ``keys`` (None where there is none), read a bounded number at a time."""
        gate = asyncio.Semaphore(_PARALLEL_GETS)

        async def one(key: str) -> ChartRecord | None:
            async with gate:
                return await self.get(key)

        return await asyncio.gather(*(one(k) for k in keys))

    async def rebaseline(self, chart_key: str, by: str, reason: str) -> RebaselineResult:
        """Ask the replica owning the chart to re-baseline it; ``no_engine`` when none answers."""
        if self._nc is None:
            raise EngineUnavailable("not connected to NATS")
        body = msgspec.json.encode(RebaselineRequest(chart_key=chart_key, by=by, reason=reason))
        try:
            msg = await self._nc.request(subjects.spc_rebaseline(), body, timeout=self.request_timeout_s)
        except (NoRespondersError, TimeoutError):  # nats' TimeoutError is a TimeoutError
            return RebaselineResult(status="no_engine", chart_key=chart_key, error="no SPC engine answered")
        try:
            reply = msgspec.json.decode(msg.data, type=RebaselineReply)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return RebaselineResult(status="refused", chart_key=chart_key, error=f"unreadable reply: {exc}")
        return RebaselineResult(
            status="ok" if reply.ok else "refused",
            chart_key=reply.chart_key or chart_key,
            replica=reply.replica,
            cleared=reply.cleared,
            error=reply.error,
        )

    async def rebaseline_model(
        self, provider: str, model: str, target: str, by: str, reason: str
    ) -> ModelRebaselineResult:
        """Ask the replica owning the model to re-baseline all its charts (or one target's)."""
        if self._nc is None:
            raise EngineUnavailable("not connected to NATS")
        request = ModelRebaselineRequest(provider=provider, model=model, target=target, by=by, reason=reason)
        result = functools.partial(ModelRebaselineResult, provider=provider, model=model, target=target)
        try:
            msg = await self._nc.request(
                subjects.spc_rebaseline_model(), msgspec.json.encode(request), timeout=self.request_timeout_s
            )
        except (NoRespondersError, TimeoutError):
            return result(status="no_engine", error="no SPC engine answered")
        try:
            reply = msgspec.json.decode(msg.data, type=ModelRebaselineReply)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return result(status="refused", error=f"unreadable reply: {exc}")
        return result(
            status="ok" if reply.ok else "refused",
            replica=reply.replica,
            charts=reply.charts,
            cleared=reply.cleared,
            error=reply.error,
        )
