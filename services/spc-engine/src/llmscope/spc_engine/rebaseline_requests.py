"""Re-baseline requests (one chart, or every chart of a model), answered by the partition's owner."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from nats.aio.msg import Msg

from llmscope.bus.kv import bucket_keys
from llmscope.config.logs import get_logger
from llmscope.proto.charts import (
    ModelRebaselineReply,
    ModelRebaselineRequest,
    RebaselinedChart,
    RebaselineReply,
    RebaselineRequest,
    is_chart_key,
    is_traffic_chart,
    model_charts_filter,
    parse_chart_key,
)
from llmscope.proto.violation import ViolationEvent
from llmscope.spc_engine.checkpoints import Checkpoints
from llmscope.spc_engine.publishing import Publishing

log = get_logger("llmscope.spc_engine")


class RebaselineRequests(Checkpoints, Publishing):
    """Answers re-baseline requests for the charts of the partitions this replica holds."""

    @property
    def answers_for_all(self) -> bool:
        """Whether this replica answers requests no partition owner can (the lowest-ranked member)."""
        return bool(self.members) and self.members[0] == self.holder

    async def on_rebaseline(self, msg: Msg) -> None:
        try:
            req = msgspec.json.decode(msg.data, type=RebaselineRequest)
            provider, model, _target, _prompt, _metric = parse_chart_key(req.chart_key)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            if self.answers_for_all:  # one answer for a bad request
                await msg.respond(msgspec.json.encode(RebaselineReply(ok=False, error=str(exc))))
            return
        if not self.engine.owns(provider, model):
            return
        async with self._lock:
            events = None
            if is_traffic_chart(req.chart_key):
                traffic = self.traffic.get(self.partition_of(provider, model))
                if traffic is not None:
                    events = traffic.rebaseline(req.chart_key, req.by, req.reason)
            elif await self.engine.ensure_loaded(req.chart_key):
                events = self.engine.rebaseline(req.chart_key, req.by, req.reason, datetime.now(UTC))
            if events is None:
                reply = RebaselineReply(ok=False, chart_key=req.chart_key, error="no such chart")
            else:
                try:
                    await self.publish(events)
                    await self.snapshot()
                except Exception as exc:
                    self._stop_on(exc)
                    raise
                reply = RebaselineReply(
                    ok=True, chart_key=req.chart_key, replica=self.settings.replica, cleared=len(events)
                )
        log.info("re-baseline", chart=req.chart_key, by=req.by, reason=req.reason, ok=reply.ok)
        await msg.respond(msgspec.json.encode(reply))

    async def on_rebaseline_model(self, msg: Msg) -> None:
        """Re-baseline every chart of a model (or of one target) at once: one request, one answer."""
        try:
            req = msgspec.json.decode(msg.data, type=ModelRebaselineRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            if self.answers_for_all:  # one answer for a bad request
                await msg.respond(msgspec.json.encode(ModelRebaselineReply(ok=False, error=str(exc))))
            return
        if not self.engine.owns(req.provider, req.model):
            return
        which = f"{req.provider}/{req.model}" + (f" on target {req.target!r}" if req.target else "")
        async with self._lock:
            try:
                # Charts that got their first points since the last snapshot are written now, so
                # the bucket lists every chart of the model, those in memory and those only stored.
                await self.snapshot()
            except Exception as exc:
                self._stop_on(exc)
                raise
            try:
                keys = await bucket_keys(
                    self._js,
                    self.settings.charts_bucket,
                    model_charts_filter(req.provider, req.model, req.target),
                )
            except Exception as exc:  # nothing changed yet: refuse, and let the caller try again
                reply = ModelRebaselineReply(ok=False, error=f"cannot list the charts: {exc!r}")
                await msg.respond(msgspec.json.encode(reply))
                return
            now = datetime.now(UTC)
            done: list[RebaselinedChart] = []
            events: list[ViolationEvent] = []
            traffic = self.traffic.get(self.partition_of(req.provider, req.model))
            for key in keys:
                if is_traffic_chart(key):
                    cleared = traffic.rebaseline(key, req.by, req.reason) if traffic is not None else None
                elif not is_chart_key(key) or not await self.engine.ensure_loaded(key):
                    continue  # a deleted key is still listed until the bucket compacts
                else:
                    cleared = self.engine.rebaseline(key, req.by, req.reason, now)
                if cleared is not None:
                    events += cleared
                    done.append(RebaselinedChart(chart_key=key, cleared=len(cleared)))
            if done:
                try:
                    await self.publish(events)
                    await self.snapshot()
                except Exception as exc:
                    self._stop_on(exc)
                    raise
                reply = ModelRebaselineReply(
                    ok=True,
                    provider=req.provider,
                    model=req.model,
                    target=req.target,
                    replica=self.settings.replica,
                    charts=tuple(done),
                    cleared=len(events),
                )
            else:
                reply = ModelRebaselineReply(
                    ok=False,
                    provider=req.provider,
                    model=req.model,
                    target=req.target,
                    error=f"no charts of {which}",
                )
        log.info(
            "re-baseline model", model=which, by=req.by, reason=req.reason, charts=len(done), ok=reply.ok
        )
        await msg.respond(msgspec.json.encode(reply))
