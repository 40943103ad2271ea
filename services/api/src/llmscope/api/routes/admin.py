"""Settings, models (enable/disable, health overview), host system metrics and stored dead letters."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from msgspec import Meta
from pydantic import BaseModel

from llmscope.api import known_settings, ticket_settings
from llmscope.api.openapi_errors import INVALID, not_found
from llmscope.api.runtime import Runtime
from llmscope.api.ticket_settings import TicketConflict
from llmscope.proto.chartconfig import error_path
from llmscope.web.data import HEALTH_MAX_HOURS, HealthOverview, ModelInfo, SettingError, SettingInfo

# The overview holds the engine's availability views (msgspec structs): msgspec encodes it and
# documents its schema, which pydantic cannot build for those.
(_HEALTH_SCHEMA,), _HEALTH_COMPONENTS = msgspec.json.schema_components(
    [HealthOverview], ref_template="#/components/schemas/{name}"
)
_HEALTH: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"schema": _HEALTH_SCHEMA}}}
}


# One operation per setting, each with its value's own schema: the value's type depends on the
# key, which a body schema under one ``/api/settings/{key}`` cannot say (issue 9: schemathesis
# sent schema-valid values the key's type refused).
_UPDATED_BY = Annotated[str, Meta(min_length=1, max_length=200)]
_SETTING_BODIES: dict[str, type[msgspec.Struct]] = {
    spec.key: msgspec.defstruct(
        "Set_" + spec.key.replace(".", "_"),
        [("value", spec.type), ("updated_by", _UPDATED_BY, "api")],
        kw_only=True,
    )
    for spec in known_settings.SPECS
}
_SETTING_SCHEMAS, _SETTING_COMPONENTS = msgspec.json.schema_components(
    list(_SETTING_BODIES.values()), ref_template="#/components/schemas/{name}"
)
_JSON = "application/json"
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "valid alone, but not with the other ticket settings as stored; `field` names "
        "the one at fault",
        "content": INVALID["content"],
    }
}


def _invalid(key: str, path: str, message: str) -> HTTPException:
    loc: list[str | int] = ["body"]
    for part in path.removeprefix("$").replace("[", ".[").split("."):
        if part.startswith("[") and part.endswith("]") and part[1:-1].isdigit():
            loc.append(int(part[1:-1]))
        elif part:
            loc.append(part)
    return HTTPException(422, [{"loc": loc, "field": key, "msg": message, "type": "value_error"}])


class ModelBody(BaseModel):
    enabled: bool


class SystemRow(BaseModel):
    """The host metrics of a model's latest probe."""

    host: str
    provider: str
    model: str
    ts: datetime
    cpu_percent: float | None
    memory_percent: float | None
    gpu_percent: float | None
    gpu_memory_percent: float | None


class DeadLetterRow(BaseModel):
    id: str
    ts: datetime
    source: str
    subject: str
    reason: str
    payload: str
    payload_encoding: str
    stream_seq: int | None


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(prefix="/api")

    @api.get("/settings", response_model=list[SettingInfo], tags=["settings"])
    async def get_settings() -> list[SettingInfo]:
        """Every known setting; secrets show only ``is_set``, never their value."""
        return await rt.store.settings()

    def setter(key: str) -> Callable[[Request], Awaitable[SettingInfo]]:
        decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(_SETTING_BODIES[key])

        async def put_setting(request: Request) -> SettingInfo:
            try:
                body = decoder.decode(await request.body())
            except msgspec.ValidationError as exc:
                raise _invalid(key, *error_path(exc)) from None
            except msgspec.DecodeError as exc:
                raise HTTPException(400, f"the body is not JSON: {exc}") from None
            try:
                return await rt.store.put_setting(key, body.value, body.updated_by)
            except TicketConflict as exc:  # the setting at fault may be another one
                why = {"loc": ["body", "value"], "field": exc.key, "msg": exc.message, "type": "conflict"}
                raise HTTPException(409, [why]) from exc
            except SettingError as exc:  # a destination the outbound policy refuses
                raise _invalid(exc.key, "$.value", exc.message) from exc

        return put_setting

    for spec, schema in zip(known_settings.SPECS, _SETTING_SCHEMAS, strict=True):
        api.add_api_route(
            f"/settings/{spec.key}",
            setter(spec.key),
            methods=["PUT"],
            response_model=SettingInfo,
            tags=["settings"],
            summary=f"Set {spec.key}",
            description=spec.description + (" (write-only: never read back)" if spec.secret else ""),
            operation_id="put_setting_" + spec.key.replace(".", "_"),
            responses=_CONFLICT if spec.key.startswith(ticket_settings.PREFIX) else None,
            openapi_extra={"requestBody": {"required": True, "content": {_JSON: {"schema": schema}}}},
        )

    # Left out of the document: each known key has its own operation above; this one says which
    # keys there are.
    @api.put("/settings/{key}", include_in_schema=False)
    async def put_unknown_setting(key: str) -> None:
        raise HTTPException(404, f"unknown setting {key!r}; known: {', '.join(known_settings.BY_KEY)}")

    @api.get("/models", response_model=list[ModelInfo], tags=["models"])
    async def get_models() -> list[ModelInfo]:
        return await rt.store.models()

    @api.get("/models/health", response_class=Response, responses=_HEALTH, tags=["models"])
    async def get_model_health(
        hours: Annotated[float, Query(gt=0, le=HEALTH_MAX_HOURS)] = 1.0,
    ) -> Response:
        """Per provider/model/target and streaming mode over the last ``hours`` (at most 168).

        Probes, successes, failures by status kind, the current run of consecutive failures,
        the last probe; latency and TTFT p50/p95/p99 and tokens/s p50 over successful probes only
        (null when none); the model's open (neither cleared nor resolved) violations and the
        worst severity among them; the SPC engine's availability chart of each target (null until
        the engine has written it); ``silent``: enabled models not probed in the window.
        """
        overview = await rt.store.model_health(hours)
        return Response(msgspec.json.encode(overview), media_type="application/json")

    # Model names contain "/" and ":" (org/model, llama3.1:8b): the path converter takes the rest.
    @api.put(
        "/models/{provider}/{model:path}",
        response_model=ModelInfo,
        tags=["models"],
        responses=not_found("model (none seen by that name)"),
    )
    async def put_model(provider: str, model: str, body: ModelBody) -> ModelInfo:
        found = await rt.store.set_model_enabled(provider, model, body.enabled)
        if found is None:
            raise HTTPException(404, f"no model {provider}/{model} has been seen")
        return found

    @api.get("/system", response_model=list[SystemRow], tags=["models"])
    async def system() -> list[SystemRow]:
        """Latest system metrics per host and model (their probers' hosts: a model seen only in
        traffic has none)."""
        return [
            SystemRow(
                host=m.host,
                provider=m.provider,
                model=m.model,
                ts=m.last_seen,
                cpu_percent=m.cpu_percent,
                memory_percent=m.memory_percent,
                gpu_percent=m.gpu_percent,
                gpu_memory_percent=m.gpu_memory_percent,
            )
            for m in sorted(await rt.store.models(), key=lambda m: (m.host, m.provider, m.model))
            if m.source == "probe"
        ]

    @api.get("/deadletters", response_model=list[DeadLetterRow], tags=["telemetry"])
    async def dead_letters(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[DeadLetterRow]:
        """Messages no service could take, newest first, with the reason."""
        return [DeadLetterRow(**row) for row in await rt.store.dead_letters(limit)]

    return api


def openapi_components() -> dict[str, Any]:
    """Schemas the health overview and the settings refer to, for the app's OpenAPI document."""
    return {**_HEALTH_COMPONENTS, **_SETTING_COMPONENTS}
