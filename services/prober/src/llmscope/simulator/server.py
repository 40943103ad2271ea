"""The simulator's HTTP face: the Ollama, OpenAI and Anthropic APIs plus the ``/_sim`` control API.

Every model is served on all three APIs. Control API (JSON):
- ``POST /_sim/inject``        activate an anomaly (body: :class:`InjectRequest`); 201 with it
- ``GET /_sim/state``          models, load state and active anomalies
- ``DELETE /_sim/inject``      clear every anomaly; ``DELETE /_sim/inject/{id}`` clears one
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from aiohttp import web

from llmscope.config.logs import get_logger
from llmscope.simulator.anomalies import TRUNCATE_AFTER, InjectRequest
from llmscope.simulator.engine import Scheduled, Simulator, UnknownModel

Api = Literal["ollama", "openai", "anthropic"]

SIMULATOR_KEY: web.AppKey[Simulator] = web.AppKey("simulator", Simulator)
STOPPING_KEY: web.AppKey[asyncio.Event] = web.AppKey("stopping", asyncio.Event)

MAX_HANG_S = 3600.0

log = get_logger("llmscope.simulator")
_json = msgspec.json.Encoder()
_inject_decoder = msgspec.json.Decoder(InjectRequest)


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _error_body(api: Api, status: int, message: str) -> dict[str, Any]:
    if api == "ollama":
        return {"error": message}
    if api == "openai":
        kind = {429: "rate_limit_exceeded", 404: "model_not_found"}.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        return {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    kind = {
        429: "rate_limit_error",
        529: "overloaded_error",
        404: "not_found_error",
        401: "authentication_error",
    }.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _error(api: Api, status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=_json.encode(_error_body(api, status, message)), content_type="application/json"
    )


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = msgspec.json.decode(await request.read())
    except msgspec.DecodeError as exc:
        raise _BadRequest(f"invalid JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise _BadRequest("the JSON body must be an object")
    return data


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


def _messages_prompt(data: dict[str, Any]) -> str:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list")
    parts = [_text_of(data.get("system"))] if data.get("system") else []
    for msg in messages:
        if not isinstance(msg, dict) or "content" not in msg:
            raise _BadRequest("each message needs a 'content'")
        parts.append(_text_of(msg["content"]))
    return "\n".join(parts)


def _int_or_none(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _BadRequest(f"'{name}' must be an integer")
    return value


class _Clock:
    """Sleeps until offsets from the moment the request arrived."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()

    async def until(self, offset: float) -> None:
        delay = self._t0 + offset - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


def _cut_after(scheduled: Scheduled) -> int | None:
    """Tokens a stream gets before a ``truncate`` outage cuts it; None: the whole stream."""
    outage = scheduled.effect.outage
    if outage is None or outage.mode != "truncate":
        return None
    return min(TRUNCATE_AFTER, max(0, scheduled.plan.eval_count - 1))


def _drop_connection(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Close the connection mid-body, as a server that drops a stream does."""
    if request.transport is not None:
        request.transport.close()
    return resp


async def _hang(request: web.Request) -> None:
    """Answer nothing until the client gives up (or the server stops)."""
    stopping = request.app[STOPPING_KEY]
    deadline = time.monotonic() + MAX_HANG_S
    while time.monotonic() < deadline and not stopping.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.05)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _api_handler(
    api: Api, run: Callable[[web.Request, dict[str, Any], _Clock], Awaitable[web.StreamResponse]]
) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        clock = _Clock()
        try:
            data = await _body(request)
            return await run(request, data, clock)
        except _BadRequest as exc:
            return _error(api, exc.status, str(exc))
        except UnknownModel as exc:
            if api == "ollama":
                return _error(api, 404, f'model "{exc.args[0]}" not found, try pulling it first')
            return _error(api, 404, f"The model `{exc.args[0]}` does not exist")
        except ConnectionResetError:
            # The client went away mid-stream; aiohttp drops this answer quietly.
            return web.Response(status=499, text="client closed request")

    return handler


async def _failure(
    request: web.Request, api: Api, scheduled: Scheduled, clock: _Clock
) -> web.StreamResponse | None:
    """Answer an injected outage, or None to answer normally."""
    outage = scheduled.effect.outage
    if outage is None or outage.mode in ("empty", "truncate"):
        return None
    await clock.until(scheduled.plan.head_s)
    if outage.mode == "hang":
        await _hang(request)
        return web.Response(status=503, text="hung (injected)")
    if outage.mode == "garbage":
        return web.Response(
            status=200, text="<html><body>502 upstream hiccup</body></html>", content_type="application/json"
        )
    messages = {429: "rate limit exceeded", 529: "Overloaded", 503: "service unavailable"}
    return _error(api, outage.status, messages.get(outage.status, "internal server error (injected)"))


def _schedule(request: web.Request, model: Any, prompt: str, max_tokens: int | None) -> Scheduled:
    if not isinstance(model, str) or not model:
        raise _BadRequest("'model' is required")
    return request.app[SIMULATOR_KEY].schedule(model, prompt, max_tokens)


# ---------------------------------------------------------------- Ollama


def _ollama_stats(s: Scheduled) -> dict[str, Any]:
    p = s.plan
    return {
        "done_reason": p.done_reason,
        "total_duration": _ns(p.total_s),
        "load_duration": _ns(p.load_s),
        "prompt_eval_count": p.prompt_tokens,
        "prompt_eval_duration": _ns(p.prompt_eval_s),
        "eval_count": p.eval_count,
        "eval_duration": _ns(p.eval_s),
    }


async def _ollama(
    request: web.Request, data: dict[str, Any], clock: _Clock, *, chat: bool
) -> web.StreamResponse:
    if chat:
        prompt = _messages_prompt(data)
    else:
        raw_prompt = data.get("prompt")
        if not isinstance(raw_prompt, str):
            raise _BadRequest("'prompt' must be a string")
        prompt = f"{data['system']}\n{raw_prompt}" if isinstance(data.get("system"), str) else raw_prompt
    options = data.get("options") or {}
    max_tokens = _int_or_none(
        options.get("num_predict") if isinstance(options, dict) else None, "num_predict"
    )
    s = _schedule(request, data.get("model"), prompt, max_tokens)
    failed = await _failure(request, "ollama", s, clock)
    if failed is not None:
        return failed
    name = s.model.name

    def piece(text: str) -> dict[str, Any]:
        if chat:
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    if data.get("stream", True) is False:
        await clock.until(s.plan.total_s)
        body = {
            "model": name,
            "created_at": _now_iso(),
            **piece(s.plan.text),
            "done": True,
            **_ollama_stats(s),
        }
        return web.json_response(body, dumps=lambda o: _json.encode(o).decode())

    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    cut = _cut_after(s)
    for i, (token, due) in enumerate(zip(s.plan.tokens, s.plan.token_times, strict=True)):
        if i == cut:
            return _drop_connection(request, resp)
        await clock.until(due)
        line = {"model": name, "created_at": _now_iso(), **piece(token), "done": False}
        await resp.write(_json.encode(line) + b"\n")
    await clock.until(s.plan.total_s)
    final = {"model": name, "created_at": _now_iso(), **piece(""), "done": True, **_ollama_stats(s)}
    await resp.write(_json.encode(final) + b"\n")
    await resp.write_eof()
    return resp


async def _ollama_generate(request: web.Request, data: dict[str, Any], clock: _Clock) -> web.StreamResponse:
    return await _ollama(request, data, clock, chat=False)


async def _ollama_chat(request: web.Request, data: dict[str, Any], clock: _Clock) -> web.StreamResponse:
    return await _ollama(request, data, clock, chat=True)


async def _ollama_tags(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR_KEY]
    models = [
        {
            "name": m.name,
            "model": m.name,
            "modified_at": "2024-01-01T00:00:00Z",
            "size": 4_700_000_000,
            "digest": uuid.uuid5(uuid.NAMESPACE_DNS, m.name).hex,
            "details": {
                "format": "gguf",
                "family": m.name.split(":")[0],
                "parameter_size": "",
                "host": m.host,
            },
        }
        for m in sim.models.values()
    ]
    return web.json_response({"models": models})


# ---------------------------------------------------------------- OpenAI


async def _openai(request: web.Request, data: dict[str, Any], clock: _Clock) -> web.StreamResponse:
    prompt = _messages_prompt(data)
    max_tokens = _int_or_none(data.get("max_completion_tokens", data.get("max_tokens")), "max_tokens")
    s = _schedule(request, data.get("model"), prompt, max_tokens)
    failed = await _failure(request, "openai", s, clock)
    if failed is not None:
        return failed
    p = s.plan
    ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    finish = "length" if p.done_reason == "length" else "stop"
    usage = {
        "prompt_tokens": p.prompt_tokens,
        "completion_tokens": p.eval_count,
        "total_tokens": p.prompt_tokens + p.eval_count,
    }
    if not data.get("stream"):
        await clock.until(p.total_s)
        return web.json_response(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": s.model.name,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": p.text}, "finish_reason": finish}
                ],
                "usage": usage,
            }
        )
    stream_options = data.get("stream_options")
    include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
        body: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": s.model.name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        if include_usage:
            body["usage"] = None
        return b"data: " + _json.encode(body) + b"\n\n"

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    # Like the real API: a role-only chunk (with empty content) comes long before the first token.
    await clock.until(p.head_s)
    await resp.write(chunk({"role": "assistant", "content": ""}, None))
    cut = _cut_after(s)
    for i, (token, due) in enumerate(zip(p.tokens, p.token_times, strict=True)):
        if i == cut:
            # What llama.cpp does to a stream it interrupts: [DONE], no finish_reason, no usage.
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        await clock.until(due)
        await resp.write(chunk({"content": token}, None))
    await clock.until(p.total_s)
    await resp.write(chunk({}, finish))
    if include_usage:
        tail = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": s.model.name,
            "choices": [],
            "usage": usage,
        }
        await resp.write(b"data: " + _json.encode(tail) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _openai_models(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR_KEY]
    data = [
        {"id": m.name, "object": "model", "created": 1_700_000_000, "owned_by": m.host}
        for m in sim.models.values()
    ]
    return web.json_response({"object": "list", "data": data})


# ---------------------------------------------------------------- Anthropic


async def _anthropic(request: web.Request, data: dict[str, Any], clock: _Clock) -> web.StreamResponse:
    prompt = _messages_prompt(data)
    max_tokens = _int_or_none(data.get("max_tokens"), "max_tokens")
    if max_tokens is None:
        raise _BadRequest("max_tokens: Field required")
    s = _schedule(request, data.get("model"), prompt, max_tokens)
    failed = await _failure(request, "anthropic", s, clock)
    if failed is not None:
        return failed
    p = s.plan
    ident = f"msg_{uuid.uuid4().hex[:24]}"
    stop = "max_tokens" if p.done_reason == "length" else "end_turn"
    message = {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": s.model.name,
        "stop_sequence": None,
    }
    if not data.get("stream"):
        await clock.until(p.total_s)
        content = [{"type": "text", "text": p.text}] if p.tokens else []
        return web.json_response(
            {
                **message,
                "content": content,
                "stop_reason": stop,
                "usage": {"input_tokens": p.prompt_tokens, "output_tokens": p.eval_count},
            }
        )

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)

    async def event(name: str, body: dict[str, Any]) -> None:
        await resp.write(f"event: {name}\ndata: ".encode() + _json.encode({"type": name, **body}) + b"\n\n")

    await clock.until(p.head_s)
    start: dict[str, Any] = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": p.prompt_tokens, "output_tokens": 1},
    }
    await event("message_start", {"message": start})
    await event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    await event("ping", {})
    cut = _cut_after(s)
    for i, (token, due) in enumerate(zip(p.tokens, p.token_times, strict=True)):
        if i == cut:
            return _drop_connection(request, resp)
        await clock.until(due)
        await event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": token}})
    await clock.until(p.total_s)
    await event("content_block_stop", {"index": 0})
    await event(
        "message_delta",
        {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": p.eval_count}},
    )
    await event("message_stop", {})
    await resp.write_eof()
    return resp


# ---------------------------------------------------------------- control


async def _inject(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR_KEY]
    try:
        inject = _inject_decoder.decode(await request.read())
        anomaly = sim.anomalies.add(inject, list(sim.models.values()))
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
        return web.json_response({"error": str(exc)}, status=422)
    described = anomaly.describe(sim.clock())
    log.info(
        "anomaly injected",
        **{k: v for k, v in described.items() if k in ("id", "kind", "model", "host", "factor")},
    )
    return web.json_response({"anomaly": described}, status=201)


async def _clear(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR_KEY]
    raw = request.match_info.get("id")
    if raw is None:
        cleared = sim.anomalies.clear()
    else:
        try:
            cleared = sim.anomalies.clear(int(raw))
        except ValueError:
            cleared = 0
        if not cleared:
            return web.json_response({"error": f"no active anomaly {raw}"}, status=404)
    log.info("anomalies cleared", count=cleared)
    return web.json_response({"cleared": cleared})


async def _state(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIMULATOR_KEY].state())


async def _root(_: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def _version(_: web.Request) -> web.Response:
    return web.json_response({"version": "0.0.0-llmscope-sim"})


async def _on_shutdown(app: web.Application) -> None:
    app[STOPPING_KEY].set()


def build_app(simulator: Simulator) -> web.Application:
    """The aiohttp application serving ``simulator``."""
    app = web.Application()
    app[SIMULATOR_KEY] = simulator
    app[STOPPING_KEY] = asyncio.Event()
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/", _root)
    app.router.add_get("/api/version", _version)
    app.router.add_post("/api/generate", _api_handler("ollama", _ollama_generate))
    app.router.add_post("/api/chat", _api_handler("ollama", _ollama_chat))
    app.router.add_get("/api/tags", _ollama_tags)
    app.router.add_post("/v1/chat/completions", _api_handler("openai", _openai))
    app.router.add_get("/v1/models", _openai_models)
    app.router.add_post("/v1/messages", _api_handler("anthropic", _anthropic))
    app.router.add_post("/_sim/inject", _inject)
    app.router.add_delete("/_sim/inject", _clear)
    app.router.add_delete("/_sim/inject/{id}", _clear)
    app.router.add_get("/_sim/state", _state)
    return app


class SimServer:
    """Runs the simulator on host:port until stopped (port 0 picks a free one)."""

    def __init__(self, simulator: Simulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = simulator
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        self._runner = web.AppRunner(build_app(self.simulator), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
