"""Per-model SPC chart settings: read (defaults, overrides, effective), change, reset.

The body of ``PUT`` is a :class:`~llmscope.proto.chartconfig.ModelOverrides` (every setting
optional, ``updated_by`` required); the SPC engine applies it from the next telemetry it charts
(see that module for which changes start a new baseline).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator

from llmscope.api.openapi_errors import problem
from llmscope.api.runtime import Runtime
from llmscope.proto import subjects
from llmscope.proto.chartconfig import ModelConfigView, ModelOverrides
from llmscope.web.chart_settings import SettingsRejected, SettingsUnavailable

_SCHEMAS, _COMPONENTS = msgspec.json.schema_components(
    [ModelConfigView, ModelOverrides], ref_template="#/components/schemas/{name}"
)
VIEW_SCHEMA, _ = _SCHEMAS
for _name, _schema in _COMPONENTS.items():
    # msgspec's schema leaves out that these structs refuse unknown fields (the API answers 422)
    if _schema.get("type") == "object":
        _schema.setdefault("additionalProperties", False)
# CusumSettings.__post_init__: k and h come together (both absent or null, or both lists) and
# with one h per k; JSON Schema compares no two fields, so each length (1..8) is a branch.
_COMPONENTS["CusumSettings"]["anyOf"] = [
    {"properties": {"k": {"type": "null"}, "h": {"type": "null"}}},
    *(
        {
            "required": ["k", "h"],
            "properties": {
                "k": {"type": "array", "minItems": n, "maxItems": n},
                "h": {"type": "array", "minItems": n, "maxItems": n},
            },
        }
        for n in range(1, 9)
    ),
]
# The request's body: a ModelOverrides whose ``updated_at`` is the server's to set (the time it
# stored the change): whatever a client sends there is ignored, so any value is accepted.
_COMPONENTS["ModelOverridesBody"] = {
    **_COMPONENTS["ModelOverrides"],
    "title": "ModelOverridesBody",
    "properties": {
        **_COMPONENTS["ModelOverrides"]["properties"],
        "updated_at": {"description": "ignored: the server records when it stored the change"},
    },
}
OVERRIDES_SCHEMA = {"$ref": "#/components/schemas/ModelOverridesBody"}

Provider = Annotated[str, Path(min_length=1, max_length=64)]

# The overrides' KV key holds the model as a subject token, at most subjects.MAX_TOKEN_LENGTH
# (1024) bytes encoded: a character takes at most 12 (4 UTF-8 bytes, 3 each) and an ASCII one at
# most 3, so any name of 85 characters fits, and any ASCII name of 256. Stated as such rather
# than in encoded bytes, which a schema cannot count; a name past both is refused even where its
# bytes would fit, so that the API takes exactly what its document says.
_ANY_CHARS = subjects.MAX_TOKEN_LENGTH // 12
_ASCII_CHARS = 256


def _fits_a_key(model: str) -> str:
    if len(model) > _ANY_CHARS and not (model.isascii() and len(model) <= _ASCII_CHARS):
        raise ValueError(
            f"too long for a subject token: a model name over {_ANY_CHARS} characters must be ASCII "
            f"(at most {_ASCII_CHARS})"
        )
    return model


Model = Annotated[
    str,
    Path(
        min_length=1,
        max_length=_ASCII_CHARS,
        description=f"model name; may contain `/`; over {_ANY_CHARS} characters, ASCII only",
        json_schema_extra={
            # the router's `{model:path}` matches no line break (404): stated, as the NUL the
            # front door refuses (issue 9, schemathesis)
            "pattern": r"^[^\n\x00]+$",
            "anyOf": [{"maxLength": _ANY_CHARS}, {"pattern": r"^[\x00-\x7f]*$"}],
        },
    ),
    AfterValidator(_fits_a_key),
]
_VIEW: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"schema": VIEW_SCHEMA}}},
    # `{model:path}` matches no line break: such a path is no route's (found by schemathesis)
    404: problem("no route: a model name with a line break"),
}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "not connected to NATS (starting or stopping)"}
}


def _json(value: object) -> Response:
    return Response(msgspec.json.encode(value), media_type="application/json")


def rejected(exc: SettingsRejected) -> JSONResponse:
    """422 in FastAPI's shape, with the JSON path of the bad field (``$.cusum.h``)."""
    loc: list[str | int] = ["body"]
    for part in exc.path.removeprefix("$").replace("[", ".[").split("."):
        if part.startswith("[") and part.endswith("]") and part[1:-1].isdigit():
            loc.append(int(part[1:-1]))
        elif part:
            loc.append(part)
    detail = [{"loc": loc, "path": exc.path, "msg": exc.message, "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=422)


def unavailable(exc: SettingsUnavailable) -> JSONResponse:
    return JSONResponse({"detail": f"starting or stopping: {exc}"}, status_code=503)


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(prefix="/api/spc/config", tags=["spc settings"])

    @api.get("/{provider}/{model:path}", response_class=Response, responses={**_VIEW, **_UNAVAILABLE})
    async def get_settings(provider: Provider, model: Model) -> Response:
        """A model's chart settings: the engine's defaults per metric, the raw overrides (null
        when none), the effective settings (defaults plus overrides; null while no engine has
        published its defaults) and, per chart, whether it runs with them yet and its expected
        in-control run length of critical signals."""
        try:
            return _json(await rt.spc_config.view(provider, model))
        except SettingsUnavailable as exc:
            return unavailable(exc)

    @api.put(
        "/{provider}/{model:path}",
        response_class=Response,
        responses={**_VIEW, 422: {"description": "a setting out of range; `path` names it"}, **_UNAVAILABLE},
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": OVERRIDES_SCHEMA}}}
        },
    )
    async def put_settings(provider: Provider, model: Model, request: Request) -> Response:
        """Replace the model's overrides; the engine applies them from the next probe it charts.

        Rules on/off, K, severities, EWMA and CUSUM parameters keep the baseline; a change of
        ``transform``, ``baseline_n`` or ``sigma_estimator`` starts a new one, recorded with
        ``updated_by`` and the reason, and clears the chart's open violations.
        """
        try:
            return _json(await rt.spc_config.put(provider, model, await request.body()))
        except SettingsRejected as exc:
            return rejected(exc)
        except SettingsUnavailable as exc:
            return unavailable(exc)

    @api.delete("/{provider}/{model:path}", response_class=Response, responses={**_VIEW, **_UNAVAILABLE})
    async def delete_settings(provider: Provider, model: Model) -> Response:
        """Remove the model's overrides: its charts go back to the engine's defaults."""
        try:
            return _json(await rt.spc_config.delete(provider, model))
        except SettingsUnavailable as exc:
            return unavailable(exc)

    return api


def openapi_components() -> dict[str, Any]:
    """Schemas the routes above refer to, for the app's OpenAPI document."""
    return _COMPONENTS
