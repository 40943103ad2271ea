"""``POST /api/stats`` (telemetry from external probers) and ``GET /api/stats/spc`` (chart data)."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from llmscope.api.runtime import Runtime
from llmscope.bus.publisher import PublishFailed
from llmscope.proto import codec, subjects
from llmscope.proto.base import new_id, utcnow
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.web.data import ChartData, ChartQuery, Metric

MAX_BATCH = 1000
_PATH = re.compile(r"at `(\$[^`]*)`")


class Accepted(BaseModel):
    """Telemetry accepted and stored in JetStream (``duplicates``: ids JetStream had already)."""

    id: str
    ids: list[str]
    duplicates: int


def _loc(path: str) -> list[str | int]:
    """``$[2].latency_ms`` -> ["body", 2, "latency_ms"] (FastAPI's error location style)."""
    loc: list[str | int] = ["body"]
    for part in re.findall(r"\[(\d+)\]|\.([^.\[]+)", path[1:]):
        loc.append(int(part[0]) if part[0] else part[1])
    return loc


def _invalid(message: str, path: str = "$") -> JSONResponse:
    return JSONResponse(
        {"detail": [{"loc": _loc(path), "field": path, "msg": message, "type": "value_error"}]},
        status_code=422,
    )


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(prefix="/api/stats", tags=["telemetry"])

    @api.post(
        "",
        status_code=202,
        response_model=Accepted,
        responses={422: {"description": "invalid telemetry; `field` names it, e.g. `$.latency_ms`"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": msgspec.json.schema(TelemetryEvent)}},
            }
        },
    )
    async def post_stats(request: Request) -> Any:
        """Validate ``telemetry.v1`` (one object or a list) and publish it to JetStream.

        ``type``, ``id`` and ``ts`` may be left out: they default to ``telemetry.v1``, a fresh id
        and now. A resent id is accepted once (JetStream de-duplicates on it).
        """
        body = await request.body()
        try:
            raw = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            rt.metrics.telemetry_rejected.inc()
            return _invalid(f"body is not JSON: {exc}")
        many = isinstance(raw, list)
        items = raw if many else [raw]
        if not items or len(items) > MAX_BATCH:
            rt.metrics.telemetry_rejected.inc()
            return _invalid(f"expected 1 to {MAX_BATCH} events, got {len(items)}")
        events: list[TelemetryEvent] = []
        for index, item in enumerate(items):
            prefix = f"$[{index}]" if many else "$"
            if not isinstance(item, dict):
                rt.metrics.telemetry_rejected.inc()
                return _invalid("expected a JSON object", prefix)
            item.setdefault("type", "telemetry.v1")
            item.setdefault("id", new_id())
            item.setdefault("ts", utcnow().isoformat())
            try:
                events.append(codec.decode_as(msgspec.json.encode(item), TelemetryEvent))
            except codec.DecodeError as exc:
                rt.metrics.telemetry_rejected.inc()
                message = str(exc)
                match = _PATH.search(message)
                path = prefix + (match.group(1)[1:] if match else "")
                if match:
                    message = message.replace(f"`{match.group(1)}`", f"`{path}`")
                return _invalid(message, path)
        if rt.publisher is None:
            raise HTTPException(503, "not connected to NATS yet")
        duplicates = 0
        try:
            for ev in events:
                ack = await rt.publisher.publish(subjects.telemetry(ev.provider, ev.model), ev, deadline=5.0)
                duplicates += bool(ack.duplicate)
        except PublishFailed as exc:
            raise HTTPException(503, f"could not publish to JetStream: {exc}") from exc
        rt.metrics.telemetry_accepted.inc(len(events))
        return Accepted(id=events[0].id, ids=[e.id for e in events], duplicates=duplicates)

    @api.get("/spc", response_model=ChartData)
    async def spc(
        provider: str,
        model: str,
        prompt_id: str | None = None,
        target: str | None = None,
        metric: Metric = "latency_ms",
        hours: Annotated[float, Query(gt=0, le=24 * 31)] = 1.0,
    ) -> ChartData:
        """Points (raw up to 2 h, bucketed from per-minute rollups beyond), limits and violations.

        The chart is the SPC engine's for provider/model/target/prompt/metric: without
        ``prompt_id`` the model's first prompt is charted (charts never mix prompts); without
        ``target`` the only target serving it, or the most recently probed one (``targets``
        lists them). ``phase`` is ``armed`` (``limits`` are the engine's frozen limits, in
        metric units and asymmetric on the log scale), ``collecting`` (``progress`` of
        ``baseline_n`` baseline points, no limits) or ``unknown`` (the engine has no such chart
        yet). ``arl0_critical`` is the engine's expected in-control run length between critical
        signals, in points; ``false_alarm_every_s`` converts it to time with
        ``probe_interval_s``, the median spacing of this chart's recent probes.
        """
        if prompt_id is None:
            prompts = sorted(
                s.prompt_id for s in await rt.store.series() if (s.provider, s.model) == (provider, model)
            )
            if not prompts:
                raise HTTPException(404, f"no telemetry for model {provider}/{model}")
            prompt_id = prompts[0]
        if target and target not in await rt.store.targets(provider, model, prompt_id):
            raise HTTPException(
                404, f"no telemetry from target {target!r} for {provider}/{model}/{prompt_id}"
            )
        return await rt.store.chart(ChartQuery(provider, model, prompt_id, metric, hours, target or ""))

    return api
