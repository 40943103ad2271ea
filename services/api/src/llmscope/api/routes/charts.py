"""The SPC engine's charts: list, one chart, and re-baseline one chart or every chart of a model
(forwarded to the engine over NATS).

Records are the engine's KV values read as :class:`~llmscope.proto.charts.ChartRecord` (see
that module for the contract); the JSON returned is exactly that struct.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, StringConstraints

from llmscope.api.charts import ChartFilter
from llmscope.api.openapi_errors import not_found
from llmscope.api.runtime import Runtime
from llmscope.proto.charts import ChartRecord, ModelRebaselineReply, RebaselineReply, is_chart_key

_SCHEMAS, _COMPONENTS = msgspec.json.schema_components(
    [ChartRecord, list[ChartRecord], RebaselineReply, ModelRebaselineReply],
    ref_template="#/components/schemas/{name}",
)
RECORD_SCHEMA, RECORDS_SCHEMA, REPLY_SCHEMA, MODEL_REPLY_SCHEMA = _SCHEMAS

_C = "=[89AB][0-9A-F]"  # a UTF-8 continuation byte, escaped
_UTF8 = "|".join(
    (
        "=[0-7][0-9A-F]",
        f"=[CD][2-9A-F]{_C}",
        f"=E0=[AB][0-9A-F]{_C}",
        f"=E[1-9A-CEF]{_C}{_C}",
        f"=ED=[89][0-9A-F]{_C}",
        f"=F0=[9AB][0-9A-F]{_C}{_C}",
        f"=F[1-3]{_C}{_C}{_C}",
        f"=F4=8[0-9A-F]{_C}{_C}",
    )
)
_TOKEN = f"(?:[A-Za-z0-9_-]|{_UTF8})+"
CHART_KEY_PATTERN = rf"^{_TOKEN}(?:\.{_TOKEN}){{4}}$"
"""Exactly the keys :func:`is_chart_key` reads: five tokens of :func:`subjects.kv_key`, each
escape a whole UTF-8 character (in the document, so generated keys are keys: issue 9)."""
KeyPath = Annotated[
    str,
    Path(
        description="chart key, as in a violation's `chart_key`",
        json_schema_extra={"pattern": CHART_KEY_PATTERN},
    ),
]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class RebaselineBody(BaseModel):
    """Who asks for the re-baseline and why (both recorded in the new baseline)."""

    by: Annotated[Text, Field(max_length=200)]
    reason: Text


class ModelRebaselineBody(BaseModel):
    """Which model (optionally only one of its targets), who asks and why."""

    provider: Annotated[Text, Field(max_length=200)]
    model: Annotated[Text, Field(max_length=500)]
    target: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] = ""
    by: Annotated[Text, Field(max_length=200)]
    reason: Text


def _json(value: object, status_code: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status_code, media_type="application/json")


def _check_key(chart_key: str) -> None:
    if not is_chart_key(chart_key):
        detail = [
            {
                "loc": ["path", "chart_key"],
                "msg": "not a chart key (provider.model.target.prompt.metric, each part escaped)",
                "type": "value_error",
            }
        ]
        raise HTTPException(422, detail)


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(prefix="/api/charts", tags=["charts"])

    @api.get("", response_class=Response, responses={200: _content(RECORDS_SCHEMA)})
    async def list_charts(
        provider: str | None = None,
        model: str | None = None,
        target: str | None = None,
        prompt_id: str | None = None,
        metric: str | None = None,
    ) -> Response:
        """The engine's charts (meta, phase, limits, expected false-alarm run length), by key.

        Availability charts have ``view`` null. An engine that has not run yet has no charts.
        """
        flt = ChartFilter(provider=provider, model=model, target=target, prompt_id=prompt_id, metric=metric)
        return _json(await rt.charts.list(flt))

    @api.get(
        "/{chart_key}",
        response_class=Response,
        responses={200: _content(RECORD_SCHEMA), **not_found("chart (the engine has none by that key yet)")},
    )
    async def get_chart(chart_key: KeyPath) -> Response:
        """One chart as the engine last snapshotted it."""
        _check_key(chart_key)
        record = await rt.charts.get(chart_key)
        if record is None:
            raise HTTPException(404, f"the SPC engine has no chart {chart_key!r} (yet)")
        return _json(record)

    @api.post(
        "/rebaseline",
        response_class=JSONResponse,
        responses={
            200: {
                "description": "re-baselined: every chart listed collects a new baseline",
                **_content(MODEL_REPLY_SCHEMA),
            },
            409: {
                "description": "the engine refused (no charts of that model or target)",
                **_content(MODEL_REPLY_SCHEMA),
            },
            504: {"description": "no SPC engine answered"},
        },
    )
    async def rebaseline_model(body: ModelRebaselineBody) -> Response:
        """Re-baseline every chart of a model in one request: all prompts and metrics, and its
        availability chart (with ``target``, only that target's charts).

        The engine replica owning the model answers with the charts re-baselined; open violation
        episodes of each clear at once, and ``by`` and ``reason`` are recorded in every new
        baseline, as for one chart.
        """
        result = await rt.charts.rebaseline_model(
            body.provider, body.model, body.target, body.by, body.reason
        )
        if result.status == "no_engine":
            timeout = rt.charts.request_timeout_s
            raise HTTPException(504, f"no SPC engine answered within {timeout:g} s")
        reply = ModelRebaselineReply(
            ok=result.status == "ok",
            provider=result.provider,
            model=result.model,
            target=result.target,
            replica=result.replica,
            charts=result.charts,
            cleared=result.cleared,
            error=result.error,
        )
        return _json(reply, 200 if reply.ok else 409)

    @api.post(
        "/{chart_key}/rebaseline",
        response_class=JSONResponse,
        responses={
            200: {"description": "re-baselined: the chart collects a new baseline", **_content(REPLY_SCHEMA)},
            409: {"description": "the engine refused (e.g. no such chart)", **_content(REPLY_SCHEMA)},
            504: {"description": "no SPC engine answered"},
        },
    )
    async def rebaseline(chart_key: KeyPath, body: RebaselineBody) -> Response:
        """Ask the engine replica owning the chart to drop its limits and collect a new baseline.

        Open violation episodes of the chart clear at once; ``by`` and ``reason`` are recorded
        in the new baseline, which every later violation names.
        """
        _check_key(chart_key)
        result = await rt.charts.rebaseline(chart_key, body.by, body.reason)
        if result.status == "no_engine":
            timeout = rt.charts.request_timeout_s
            raise HTTPException(504, f"no SPC engine answered within {timeout:g} s")
        reply = RebaselineReply(
            ok=result.status == "ok",
            chart_key=result.chart_key,
            replica=result.replica,
            cleared=result.cleared,
            error=result.error,
        )
        return _json(reply, 200 if reply.ok else 409)

    return api


def openapi_components() -> dict[str, Any]:
    """Schemas the responses above refer to, for the app's OpenAPI document."""
    return _COMPONENTS
