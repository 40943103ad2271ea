"""What every provider shares: the probe result, timing, and mapping failures to error kinds.

Error kinds: ``timeout`` (no complete answer within the target's timeout), ``refused`` (no
connection: refused, unreachable, DNS), ``rate_limited`` (HTTP 429: the caller's own quota is
spent), ``overloaded`` (Anthropic's HTTP 529: the provider is out of capacity for everyone, a
sign of the service's health rather than of the caller's use), ``http_4xx``, ``http_5xx``,
``empty_response`` (HTTP 200 without any content), ``truncated`` (a stream that ended early:
fewer output tokens than asked and no finish reason, whether it then sent its end marker, e.g.
``data: [DONE]``, or the connection closed) and ``invalid_response`` (a 200 whose
body is not the API's shape, an error inside a stream, a complete stream without its end marker).
A truncated stream keeps the timings it got but is never a (fast) latency data point.

Timing starts right before the request is handed to the HTTP client (after any wait for a
concurrency slot) and ``ttft_ms`` is the first non-empty *content* token, never the role-only
chunk, ``message_start`` or the first byte.

Tokens/s is output tokens over generation time: ``total - TTFT`` when streaming (at least two
tokens), ``total`` otherwise, Ollama's own ``eval_duration`` where it reports one. It is null
when that time is under ``max(BURST_FLOOR_MS, BURST_MS_PER_TOKEN x tokens)`` (2 ms, or faster
than 5,000 tokens/s): the tokens then arrived in one burst (a buffering proxy, a server that
flushes at the end) and their spacing says nothing about generation speed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import msgspec

from llmscope.prober.prompts import Prompt
from llmscope.prober.targets import Target
from llmscope.proto.telemetry import ProbeStatus

ERROR_SNIPPET = 300
BURST_FLOOR_MS = 2.0
"""Generation times below this are one burst whatever the token count (one read of the socket)."""
BURST_MS_PER_TOKEN = 0.2
"""Generation faster than this per token (5,000 tokens/s, about twice the fastest served models
in 2025) is a burst, not a speed."""


@dataclass(slots=True)
class ProbeResult:
    """The outcome of one probe, with whatever timings it got before failing."""

    status: ProbeStatus = "ok"
    error: str | None = None
    http_status: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    total_duration_ms: float | None = None
    load_duration_ms: float | None = None
    prompt_eval_duration_ms: float | None = None
    eval_duration_ms: float | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    tokens_per_s: float | None = None
    finish_reason: str | None = None
    """Why the answer ended, as the API says it (``stop``, ``length``, ``end_turn`` ...)."""
    asked_tokens: int | None = None
    """The prompt's max_tokens: a stream with fewer tokens and no finish reason is truncated."""
    content: list[str] = field(default_factory=list, repr=False)

    @property
    def text(self) -> str:
        return "".join(self.content)


class ProbeFailure(Exception):
    """Raised inside a provider to end a probe with an error kind."""

    def __init__(self, status: ProbeStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class Timer:
    """Milliseconds since the request was sent, and the first content token."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._t0) * 1000.0


@dataclass(frozen=True, slots=True)
class HttpRequest:
    url: str
    headers: dict[str, str]
    body: dict[str, Any]


class Provider(Protocol):
    """Builds the request of one API and reads its answer into a result."""

    def request(self, target: Target, prompt: Prompt) -> HttpRequest: ...

    async def read(
        self, resp: aiohttp.ClientResponse, target: Target, result: ProbeResult, timer: Timer
    ) -> None: ...


def content_token(result: ProbeResult, timer: Timer, text: Any) -> None:
    """Record a piece of content; the first non-empty one sets the time to first token."""
    if isinstance(text, str) and text:
        if result.ttft_ms is None:
            result.ttft_ms = timer.elapsed_ms()
        result.content.append(text)


def decode_json(data: bytes | str, what: str) -> Any:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        snippet = (
            data[:ERROR_SNIPPET] if isinstance(data, str) else data[:ERROR_SNIPPET].decode(errors="replace")
        )
        raise ProbeFailure("invalid_response", f"{what} is not JSON: {snippet!r}") from None


def expect_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProbeFailure("invalid_response", f"{what} is not a JSON object")
    return value


async def lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body line by line, without line ends (works for NDJSON and SSE)."""
    buffer = b""
    async for chunk in resp.content.iter_any():
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r")
    if buffer:
        yield buffer.rstrip(b"\r")


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as (event name, data); the name is "message" when none is given."""
    event, data = "message", list[str]()
    async for line in lines(resp):
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        text = line.decode(errors="replace")
        if text.startswith(":"):
            continue
        name, _, value = text.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)


def _status_kind(code: int) -> ProbeStatus:
    if code == 429:
        return "rate_limited"
    if code == 529:
        return "overloaded"
    if 400 <= code < 500:
        return "http_4xx"
    if code >= 500:
        return "http_5xx"
    return "invalid_response"


def end_of_stream(result: ProbeResult, *, ended: bool, marker: str) -> None:
    """Judge a stream that stopped: cut short (``truncated``) or missing its end ``marker``."""
    tokens = result.eval_count if result.eval_count is not None else len(result.content)
    asked = result.asked_tokens
    if result.finish_reason is None and (asked is None or tokens < asked):
        how = f"with {marker} but" if ended else f"without {marker} and"
        of = f" of {asked}" if asked is not None else ""
        raise ProbeFailure("truncated", f"the stream ended {how} no finish reason after {tokens}{of} tokens")
    if not ended:
        raise ProbeFailure("invalid_response", f"the stream ended without {marker}")


def generation_rate(tokens: int | None, generation_ms: float | None) -> float | None:
    """Tokens per second, or None when too few tokens or too short a time to measure a speed."""
    if not tokens or generation_ms is None:
        return None
    if generation_ms < max(BURST_FLOOR_MS, BURST_MS_PER_TOKEN * tokens):
        return None
    return tokens / (generation_ms / 1000.0)


def tokens_per_s(eval_count: int | None, total_ms: float | None, ttft_ms: float | None) -> float | None:
    """Output tokens over generation time: (total - TTFT) when streaming, else total."""
    if total_ms is None:
        return None
    if ttft_ms is None:
        return generation_rate(eval_count, total_ms)
    # One streamed token has no generation interval after it: nothing to measure.
    if eval_count is None or eval_count < 2:
        return None
    return generation_rate(eval_count, total_ms - ttft_ms)


async def probe(
    session: aiohttp.ClientSession, provider: Provider, target: Target, prompt: Prompt
) -> ProbeResult:
    """Send one probe and classify the outcome; never raises (but lets cancellation through)."""
    result = ProbeResult(asked_tokens=prompt.max_tokens)
    try:
        req = provider.request(target, prompt)
    except Exception as exc:  # a bug in building the request must not stop the loop
        return ProbeResult(status="invalid_response", error=f"cannot build the request: {exc!r}")
    timer = Timer()
    try:
        async with asyncio.timeout(target.timeout_s):
            async with session.post(req.url, json=req.body, headers=req.headers) as resp:
                result.http_status = resp.status
                if resp.status != 200:
                    body = (await resp.read())[:ERROR_SNIPPET].decode(errors="replace")
                    kind = _status_kind(resp.status)
                    label = "overloaded" if resp.status == 529 else resp.reason
                    raise ProbeFailure(kind, f"HTTP {resp.status} {label}: {body}")
                await provider.read(resp, target, result, timer)
        result.latency_ms = timer.elapsed_ms()
        if result.tokens_per_s is None:
            result.tokens_per_s = tokens_per_s(result.eval_count, result.latency_ms, result.ttft_ms)
        if not result.content:
            raise ProbeFailure("empty_response", "HTTP 200 without any content")
    except ProbeFailure as exc:
        result.status, result.error = exc.status, str(exc)
    except TimeoutError:
        result.status, result.error = "timeout", f"no complete answer within {target.timeout_s:g} s"
    except aiohttp.ClientConnectorError as exc:
        result.status, result.error = "refused", f"cannot connect: {exc}"
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        if target.streaming and result.http_status == 200 and result.finish_reason is None:
            tokens = result.eval_count if result.eval_count is not None else len(result.content)
            result.status = "truncated"
            result.error = (
                f"connection closed mid-stream after {tokens} of {prompt.max_tokens} tokens: {exc!r}"
            )
        else:
            result.status, result.error = "invalid_response", f"connection closed mid-response: {exc!r}"
    except aiohttp.ClientError as exc:
        result.status, result.error = (
            "refused" if result.http_status is None else "invalid_response",
            repr(exc),
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        result.status, result.error = "invalid_response", f"unexpected answer: {exc!r}"
    if result.status != "ok":
        result.latency_ms = timer.elapsed_ms()
        result.tokens_per_s = None  # a failed probe has no speed (a cut stream would look fast)
    if result.error is not None:
        result.error = result.error[:2000]
    return result
