"""``POST /api/stats`` (telemetry from external probers) and ``GET /api/stats/spc`` (chart data)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any, NoReturn
from urllib.parse import urlencode

import msgspec
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.datastructures import Headers

from llmscope.api.chart_store import MARKS_BUDGET
from llmscope.api.charts import ChartFilter
from llmscope.api.openapi_errors import not_found
from llmscope.api.runtime import Runtime
from llmscope.bus.publisher import PublishFailed
from llmscope.proto import codec, subjects
from llmscope.proto.base import new_id, utcnow
from llmscope.proto.charts import TRAFFIC_PROMPT_PREFIX, is_traffic_chart
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.web.data import ChartData, ChartQuery, Metric
from llmscope.web.svg import MARKS_DRAWN

MAX_BATCH = 1000
MAX_EVENT_BYTES = 256 * 1024  # well under nats-server's 1 MB max_payload
MAX_AHEAD = timedelta(days=1)
_batch_decoder: msgspec.json.Decoder[list[TelemetryEvent] | TelemetryEvent] = msgspec.json.Decoder(
    list[TelemetryEvent] | TelemetryEvent
)
_PATH = re.compile(r"at `(\$[^`]*)`")


def _int_fields() -> frozenset[str]:
    def is_int(t: msgspec.inspect.Type) -> bool:
        while isinstance(t, msgspec.inspect.Metadata):
            t = t.type
        if isinstance(t, msgspec.inspect.UnionType):
            return any(is_int(u) for u in t.types)
        return isinstance(t, msgspec.inspect.IntType)

    fields = msgspec.inspect.type_info(TelemetryEvent).fields  # type: ignore[attr-defined]
    return frozenset(f.encode_name for f in fields if is_int(f.type))


INT_FIELDS = _int_fields()
"""The event's integer fields: JSON Schema counts ``1.0`` as an integer, msgspec does not, so
the general path reads a whole number written with a fraction as the integer it is (issue 9,
schemathesis: a schema-valid ``prompt_eval_count`` of ``0.0`` was refused)."""
# The request body's schema, as OpenAPI components: msgspec's own ``schema()`` refers to
# "#/$defs/...", which does not exist in an OpenAPI document (issue 9: the schema was invalid).
# As sent, ``type``, ``id`` and ``ts`` may be left out (see ``post_stats``).
(_EVENT_REF,), _COMPONENTS = msgspec.json.schema_components(
    [TelemetryEvent], ref_template="#/components/schemas/{name}"
)
_IN = dict(_COMPONENTS["TelemetryEvent"])
_IN["title"] = "TelemetryIn"
_IN["required"] = [f for f in _IN["required"] if f not in ("type", "id", "ts")]
ID_RULE = (
    "The event's id, also its JetStream `Nats-Msg-Id`: an id sent again is stored and counted "
    "once (JetStream drops the resend within LLMSCOPE_DUPLICATE_WINDOW_S, the persister beyond). "
    "An id sent is kept as it is. Left out, with a `ts`, it is derived from the event's content: a "
    "hash of every field as sent (fields unknown to this version included, `ts` as written), so "
    "a resend of the same event gets the same id. Without a key, two events alike in every "
    "field, `ts` as written included, are one event: stored once. A client that rounds `ts` (to "
    "the second, say) and may measure twice alike within it (two failed probes of one target, "
    "the same status and error, no latency) sends an `id` of its own, an `Idempotency-Key`, or "
    "`ts` at full precision. Left "
    "out without a `ts`, it is fresh: the event is timed on arrival, and a resend is stored again. "
    "With an `Idempotency-Key` header, an event left without an id gets one derived from the key, "
    "its position in the request and its content, `ts` or none: a resend of the request with the "
    "same key is stored once, and requests with other keys are never taken for it."
)
IDEMPOTENCY_KEY = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255
IDEMPOTENCY_PARAMETER = {
    "name": IDEMPOTENCY_KEY,
    "in": "header",
    "required": False,
    "description": "A key of the client's own, unique per request and the same on every resend "
    "of it (a UUID, say): the events of the request sent without an `id` get ids derived from "
    "it, so a resend after a timeout is stored once, even of events without a `ts` (see the "
    "`id` field of `TelemetryIn`). Events sent with an `id` keep it.",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
}
_IN["properties"] = {
    **_IN["properties"],
    "id": {**_IN["properties"]["id"], "description": ID_RULE},
    "ts": {
        **_IN["properties"]["ts"],
        "description": "when the event happened, UTC, RFC 3339; left out: when the API received "
        "it (and the id, when left out too, is fresh: see `id`)",
    },
}
_COMPONENTS["TelemetryIn"] = _IN
_IN_REF = {"$ref": "#/components/schemas/TelemetryIn"}
BODY_SCHEMA = {"anyOf": [_IN_REF, {"type": "array", "items": _IN_REF, "minItems": 1, "maxItems": MAX_BATCH}]}
_FIELD = re.compile(r"`([a-z_]+)` ")


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


def _invalid(message: str, path: str = "$", status: int = 422) -> JSONResponse:
    return JSONResponse(
        {"detail": [{"loc": _loc(path), "field": path, "msg": message, "type": "value_error"}]},
        status_code=status,
    )


def _located(message: str, prefix: str) -> tuple[str, str]:
    """The decoder's message with its path under ``prefix``; a struct-level check (``__post_init__``)
    names its field in backticks at the start, which then becomes the path."""
    match = _PATH.search(message)
    path = prefix + (match.group(1)[1:] if match else "")
    if match:
        message = message.replace(f"`{match.group(1)}`", f"`{path}`")
    field = _FIELD.match(message)
    if field and path == prefix:
        path = f"{prefix}.{field.group(1)}"
        message = message.split(" - at `", 1)[0].replace(f"`{field.group(1)}`", f"`{path}`", 1)
    return message, path


def _content_id(item: dict[str, Any], key: str | None = None, index: int = 0) -> str:
    """An id that is the same for the same event sent twice (a retry after a 503 or a timeout):
    every field as sent, in key order (:data:`ID_RULE`). The fields unknown here are kept in it,
    and ``ts`` as written (nanoseconds the decoder drops included): whatever the client sent
    that tells two events apart keeps their ids apart. With the request's ``Idempotency-Key``,
    the key and the event's position in the request too."""
    identity: object = item if key is None else ["idempotency-key", key, index, item]
    return hashlib.sha256(msgspec.json.encode(identity, order="sorted")).hexdigest()[:32]


def _idempotency_key(headers: Headers) -> str | JSONResponse | None:
    """The request's ``Idempotency-Key``; a 422 naming it when it is empty, too long or sent twice."""
    keys = headers.getlist(IDEMPOTENCY_KEY)
    if not keys:
        return None
    if len(keys) == 1 and 0 < len(keys[0]) <= MAX_IDEMPOTENCY_KEY:
        return keys[0]
    message = f"`{IDEMPOTENCY_KEY}` must be one value of 1 to {MAX_IDEMPOTENCY_KEY} characters"
    detail = {
        "loc": ["header", IDEMPOTENCY_KEY],
        "field": IDEMPOTENCY_KEY,
        "msg": message,
        "type": "value_error",
    }
    return JSONResponse({"detail": [detail]}, status_code=422)


def _unconfirmed(reason: str, ids: list[str]) -> JSONResponse:
    # Not a plain "failed": the publish may have reached the stream before the ack was lost.
    return JSONResponse(
        {"detail": f"{reason}; not confirmed stored: retry with the same ids (deduplicated)", "ids": ids},
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def _accept(rt: Runtime, events: list[TelemetryEvent], many: bool) -> Accepted | JSONResponse:
    """Check each event's size (as published) and time, then publish every one of them."""
    latest = utcnow() + MAX_AHEAD
    sends: list[tuple[str, bytes, str]] = []
    for index, event in enumerate(events):
        prefix = f"$[{index}]" if many else "$"
        payload = codec.encode(event)  # encoded once: measured here, published below
        if len(payload) > MAX_EVENT_BYTES:
            rt.metrics.telemetry_rejected.inc()
            return _invalid(f"event is {len(payload)} bytes, at most {MAX_EVENT_BYTES}", prefix, 413)
        if event.ts > latest:
            rt.metrics.telemetry_rejected.inc()
            path = f"{prefix}.ts"
            return _invalid(f"`{path}` is more than a day ahead of this server's clock", path)
        sends.append((subjects.telemetry(event.provider, event.model), payload, event.id))
    ids = [e.id for e in events]
    if rt.publisher is None:
        return _unconfirmed("not connected to NATS yet", ids)
    try:
        # Pipelined: every event in flight at once, the acks awaited together (still all of
        # them before the 202); one event goes the same way, on the Publisher's ack inbox.
        acks = await rt.publisher.publish_many_raw(sends, deadline=5.0)
    except PublishFailed as exc:
        return _unconfirmed(f"could not publish to JetStream: {exc}", ids)
    rt.metrics.telemetry_accepted.inc(len(events))
    return Accepted(id=events[0].id, ids=ids, duplicates=sum(bool(ack.duplicate) for ack in acks))


def _decoded_whole(body: bytes) -> tuple[list[TelemetryEvent], bool] | None:
    """The common case, every event complete (type, id and ts given) and valid: decoded once,
    straight into structs; None for anything else (defaults to fill in, an error to locate)."""
    try:
        decoded = _batch_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    events = decoded if isinstance(decoded, list) else [decoded]
    return (events, isinstance(decoded, list)) if 0 < len(events) <= MAX_BATCH else None


def front_door_lane(rt: Runtime) -> Callable[[bytes, Headers], Awaitable[Response | None]]:
    """``POST /api/stats``'s common case for the front door (:class:`~llmscope.api.frontdoor.FrontDoor`)
    to answer itself, once it has checked the key, the scope and the body's size: the same
    decoding, checks, publish and answer as :func:`router`'s route, without FastAPI's routing,
    dependency solving and response validation, which cost the API process more CPU than the
    request's own work (issue 13: at 1,000 one-event POSTs/s the event loop queued). None for a
    body the route must read itself (defaults, or an error to name); the front door then hands it
    on, unread again."""

    async def lane(body: bytes, headers: Headers) -> Response | None:
        if IDEMPOTENCY_KEY in headers:
            # Complete events keep their ids whatever the key; a key that is no key is a 422.
            key = _idempotency_key(headers)
            if isinstance(key, JSONResponse):
                rt.metrics.telemetry_rejected.inc()
                return key
        whole = _decoded_whole(body)
        if whole is None:
            return None
        answer = await _accept(rt, *whole)
        if isinstance(answer, Accepted):
            # The bytes FastAPI writes for the route's response model: its fields in order.
            content = {"id": answer.id, "ids": answer.ids, "duplicates": answer.duplicates}
            return JSONResponse(content, status_code=202)
        return answer

    return lane


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(prefix="/api/stats", tags=["telemetry"])

    @api.post(
        "",
        status_code=202,
        response_model=Accepted,
        responses={
            413: {"description": "an event over 256 KiB or a body over LLMSCOPE_MAX_BODY_BYTES"},
            422: {"description": "invalid telemetry; `field` names it, e.g. `$.latency_ms`"},
            503: {"description": "not confirmed stored (NATS away): retry with the same `ids`"},
        },
        openapi_extra={
            "parameters": [IDEMPOTENCY_PARAMETER],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": BODY_SCHEMA}},
            },
        },
    )
    async def post_stats(request: Request) -> Any:
        """Validate ``telemetry.v1`` (one object or a list) and publish it to JetStream.

        202 means stored: every event was acknowledged by JetStream, and the persister and the
        SPC engine accept whatever passes this validation (names that fit every subject and key,
        no control characters, numbers within their column types, ``ts`` from 2000 to 2100 and
        at most a day ahead of this server's clock). A field that does not is named in a 422;
        an event over 256 KiB, or a body over ``LLMSCOPE_MAX_BODY_BYTES``, is a 413.

        ``type``, ``id`` and ``ts`` may be left out: they default to ``telemetry.v1``, now, and
        an id derived from the event's content when it has a ``ts`` (a fresh one otherwise), or
        from the ``Idempotency-Key`` header, the event's position and its content when the
        request has one (the rule, and when two events share an id, is the ``id`` field's
        description). A resent id is stored and counted once (JetStream de-duplicates on it
        within ``LLMSCOPE_DUPLICATE_WINDOW_S``, the persister on the stored row's id). A 503
        means not confirmed: the events may or may not have reached the stream; send the same
        body again (with the ``ids`` of the 503's answer, a ``ts`` or the same
        ``Idempotency-Key``) and nothing is stored twice; a timeout is the same.
        """
        key = _idempotency_key(request.headers)
        if isinstance(key, JSONResponse):
            rt.metrics.telemetry_rejected.inc()
            return key
        body = await request.body()
        # The common case (the front door answers it before this route, see front_door_lane):
        # decoded once, straight into structs. Anything else takes the general path below,
        # which says exactly what is wrong.
        whole = _decoded_whole(body)
        if whole is not None:
            return await _accept(rt, *whole)
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
            for name in INT_FIELDS & item.keys():
                value = item[name]
                if type(value) is float and value.is_integer():
                    item[name] = int(value)
            item.setdefault("type", "telemetry.v1")
            if "id" not in item:
                if key is not None:
                    item["id"] = _content_id(item, key, index)
                else:
                    item["id"] = _content_id(item) if "ts" in item else new_id()
            item.setdefault("ts", utcnow().isoformat())
            try:
                event = codec.decode_as(msgspec.json.encode(item), TelemetryEvent)
            except codec.DecodeError as exc:
                rt.metrics.telemetry_rejected.inc()
                message, path = _located(str(exc), prefix)
                return _invalid(message, path)
            events.append(event)
        return await _accept(rt, events, many)

    @api.get("/spc", response_model=ChartData, responses=not_found("telemetry for that model (or target)"))
    async def spc(
        response: Response,
        provider: str,
        model: str,
        prompt_id: str | None = None,
        target: str | None = None,
        metric: Metric = "latency_ms",
        hours: Annotated[float, Query(gt=0, le=24 * 31)] = 1.0,
        marks: Annotated[
            int,
            Query(
                ge=0,
                le=MARKS_BUDGET,
                description="Violation marks returned at most: the most severe, then the newest, "
                f"of the window (as the dashboard draws them). Default {MARKS_DRAWN}, at most "
                f"{MARKS_BUDGET}; `violations_total` counts them all.",
            ),
        ] = MARKS_DRAWN,
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
        ``probe_interval_s``, the median spacing of this chart's recent probes. ``violations``
        holds at most ``marks`` of the window's violations, chosen as the dashboard and the
        report choose the marks they draw: the most severe, then the newest.

        These are the per-request (probe) charts. Real traffic is charted per minute (its
        ``traffic_*`` charts: ``GET /api/charts?provider=…&model=…``): when the model has
        traffic charts, the answer's ``Link`` header (``rel="related"``) points there and
        ``X-Traffic-Charts`` counts them; a ``traffic:<operation>`` prompt, or a model with
        traffic and no probes, is a 404 that names its traffic charts.
        """
        traffic_q = urlencode({"provider": provider, "model": model})
        if prompt_id is not None and prompt_id.startswith(TRAFFIC_PROMPT_PREFIX):
            await _no_traffic_here(provider, model, f"{prompt_id} is real traffic")
        if prompt_id is None:
            prompts = sorted(
                s.prompt_id for s in await rt.store.series() if (s.provider, s.model) == (provider, model)
            )
            if not prompts:
                await _no_traffic_here(provider, model, f"no probe telemetry for model {provider}/{model}")
            prompt_id = prompts[0]
        if target and target not in await rt.store.targets(provider, model, prompt_id):
            raise HTTPException(
                404, f"no telemetry from target {target!r} for {provider}/{model}/{prompt_id}"
            )
        chart = await rt.store.chart(
            ChartQuery(provider, model, prompt_id, metric, hours, target or ""), marks=marks
        )
        # Keys only (no record reads): this route is polled.
        keys = await rt.charts.keys(ChartFilter(provider=provider, model=model))
        traffic = [k for k in keys if is_traffic_chart(k)]
        if traffic:
            # The dashboard shows these charts beside this one: say where they are.
            response.headers["Link"] = f'</api/charts?{traffic_q}>; rel="related"; title="traffic charts"'
            response.headers["X-Traffic-Charts"] = str(len(traffic))
        return chart

    async def _no_traffic_here(provider: str, model: str, why: str) -> NoReturn:
        """A 404 that names the model's traffic charts (charted per minute, under /api/charts)."""
        keys = sorted(r.key for r in await rt.charts.traffic_charts(provider, model))
        if not keys:
            raise HTTPException(404, f"{why}; no telemetry for model {provider}/{model}")
        raise HTTPException(
            404,
            f"{why}; real traffic is charted per minute, not request by request: "
            f"GET /api/charts?{urlencode({'provider': provider, 'model': model})} lists its "
            f"{len(keys)} traffic charts ({', '.join(keys)})",
        )

    return api


def openapi_components() -> dict[str, Any]:
    """``TelemetryEvent`` and ``TelemetryIn`` (the request body), for the app's OpenAPI document."""
    return _COMPONENTS
