"""Simulated real traffic: an application calling the simulated LLM, traced over OTLP/HTTP.

``llmscope sim serve`` runs it beside the endpoint when ``LLMSCOPE_SIM_TRAFFIC_RPS`` is above 0
(``llmscope up`` sets it in the demo profile): requests arrive as a Poisson process, each from one
of a few services to one of the simulated models, with a realistic spread of lengths (lognormal
prompts, median ~120 words; lognormal ``max_tokens``, median ~150) and 70 % streamed. Each call is
made on the OpenAI-compatible API, timed (TTFT: the first chunk with content), and described as a
GenAI client span (semantic conventions: ``gen_ai.operation.name`` chat, provider, model, server
address, usage, ``gen_ai.response.time_to_first_chunk``, ``error.type``), exported in batches to
LLMscope's ``/v1/traces`` with the ingest key, as an OpenTelemetry SDK would (the spans are built
with the official ``opentelemetry-proto`` types).

The anomalies injected into the simulator (``llmscope sim inject``) reach this traffic as they
reach the probes: a shift of a model slows its traffic, an outage fails it.
Its variables (``LLMSCOPE_SIM_TRAFFIC_*``) are in :mod:`llmscope.simulator.settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from llmscope.config.env import ConfigError, Env, Secret
from llmscope.config.logs import get_logger
from llmscope.simulator.models import SimModel

log = get_logger("llmscope.simulator.traffic")

DEFAULT_OTLP_URL = "http://127.0.0.1:8000/v1/traces"
WORDS = ("alpha", "beta", "gamma", "delta", "orders", "refund", "invoice", "search", "summary", "ticket")
MAX_CONCURRENT = 64
EXPORT_EVERY_S = 1.0
EXPORT_MAX_SPANS = 512
MAX_QUEUED_SPANS = 20_000  # LLMscope away for long: the oldest spans go, as an SDK's queue drops


@dataclass(frozen=True, slots=True)
class TrafficSettings:
    """What traffic to simulate and where to send its spans."""

    rps: float = 0.0
    otlp_url: str = DEFAULT_OTLP_URL
    key: Secret | None = None
    services: tuple[str, ...] = ("checkout", "support-bot")
    streamed_share: float = 0.7

    @classmethod
    def from_env(cls, env: Env | None = None) -> TrafficSettings:
        env = env or Env()
        rps = env.number("LLMSCOPE_SIM_TRAFFIC_RPS", 0.0, min=0, max=1000)
        key = env.raw("LLMSCOPE_SIM_TRAFFIC_KEY") or env.raw("LLMSCOPE_INGEST_KEY")
        if rps > 0 and not key:
            raise ConfigError("LLMSCOPE_SIM_TRAFFIC_RPS: set LLMSCOPE_SIM_TRAFFIC_KEY (the API's ingest key)")
        services = tuple((env.raw("LLMSCOPE_SIM_TRAFFIC_SERVICES") or "checkout support-bot").split())
        return cls(
            rps=rps,
            otlp_url=env.url("LLMSCOPE_SIM_TRAFFIC_OTLP_URL", DEFAULT_OTLP_URL, schemes=("http", "https"))
            or DEFAULT_OTLP_URL,
            key=Secret(key) if key else None,
            services=services or ("checkout",),
        )


@dataclass
class TrafficStats:
    """What the generator did (for its log line and for tests)."""

    requests: int = 0
    failed: int = 0
    exported: int = 0
    export_failures: int = 0
    dropped: int = 0
    last_export_status: int | None = None


def _attr(key: str, value: str | int | float) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(double_value=value))


@dataclass
class TrafficGenerator:
    """Calls the simulator at ``settings.rps`` and exports one span per call."""

    settings: TrafficSettings
    sim_url: str
    models: Sequence[SimModel]
    rng: random.Random = field(default_factory=random.Random)
    stats: TrafficStats = field(default_factory=TrafficStats)
    _spans: dict[str, list[Span]] = field(default_factory=dict)

    def _prompt(self) -> str:
        words = max(3, int(self.rng.lognormvariate(math.log(120), 0.8)))
        return " ".join(self.rng.choice(WORDS) for _ in range(min(words, 4000)))

    async def call(self, session: aiohttp.ClientSession, model: SimModel, service: str) -> Span:
        """One request, timed, as the GenAI span an instrumented client would record."""
        stream = self.rng.random() < self.settings.streamed_share
        max_tokens = max(1, min(1024, int(self.rng.lognormvariate(math.log(150), 0.7))))
        body = {
            "model": model.name,
            "messages": [{"role": "user", "content": self._prompt()}],
            "max_tokens": max_tokens,
            "stream": stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
        }
        attrs: dict[str, str | int | float] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": model.flavour,
            "gen_ai.request.model": model.name,
            "gen_ai.request.max_tokens": max_tokens,
            "server.address": model.host,
        }
        status = Status()
        start = time.time_ns()
        first: int | None = None
        try:
            async with session.post(f"{self.sim_url}/v1/chat/completions", json=body) as resp:
                if resp.status != 200:
                    attrs["error.type"] = str(resp.status)
                    attrs["http.response.status_code"] = resp.status
                    await resp.read()
                elif stream:
                    usage: dict[str, int] = {}
                    async for line in resp.content:
                        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        choices = chunk.get("choices") or []
                        if first is None and any((c.get("delta") or {}).get("content") for c in choices):
                            first = time.time_ns()
                        usage = chunk.get("usage") or usage
                    if not usage:
                        attrs["error.type"] = "incomplete_stream"
                    else:
                        attrs["gen_ai.usage.input_tokens"] = usage["prompt_tokens"]
                        attrs["gen_ai.usage.output_tokens"] = usage["completion_tokens"]
                else:
                    usage = (await resp.json()).get("usage") or {}
                    attrs["gen_ai.usage.input_tokens"] = usage.get("prompt_tokens", 0)
                    attrs["gen_ai.usage.output_tokens"] = usage.get("completion_tokens", 0)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            attrs["error.type"] = type(exc).__name__
            status = Status(code=Status.STATUS_CODE_ERROR, message=str(exc)[:500])
        end = time.time_ns()
        if "error.type" in attrs:
            self.stats.failed += 1
            if not status.code:
                status = Status(code=Status.STATUS_CODE_ERROR, message=f"error {attrs['error.type']}")
        elif first is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = (first - start) / 1e9
        self.stats.requests += 1
        return Span(
            trace_id=self.rng.randbytes(16),
            span_id=self.rng.randbytes(8),
            name=f"chat {model.name}",
            kind=Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=start,
            end_time_unix_nano=end,
            attributes=[_attr(k, v) for k, v in attrs.items()],
            status=status,
        )

    def request(self, spans: dict[str, list[Span]]) -> ExportTraceServiceRequest:
        """The export request of the spans, one resource per service."""
        return ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(
                    resource=Resource(attributes=[_attr("service.name", service)]),
                    scope_spans=[
                        ScopeSpans(scope=InstrumentationScope(name="llmscope.simulator.traffic"), spans=batch)
                    ],
                )
                for service, batch in spans.items()
                if batch
            ]
        )

    async def export(self, session: aiohttp.ClientSession) -> None:
        """Send what is queued; on failure keep it for the next try (bounded)."""
        queued = sum(len(b) for b in self._spans.values())
        if not queued:
            return
        spans, self._spans = self._spans, {}
        key = self.settings.key.get() if self.settings.key is not None else ""
        headers = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {key}"}
        try:
            data = self.request(spans).SerializeToString()
            async with session.post(self.settings.otlp_url, data=data, headers=headers) as resp:
                await resp.read()
                self.stats.last_export_status = resp.status
                if resp.status == 200:
                    self.stats.exported += queued
                    return
                retry = resp.status in (429, 502, 503, 504)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats.last_export_status = None
            retry = True
            log.debug("traffic export failed", error=repr(exc))
        self.stats.export_failures += 1
        if not retry:
            self.stats.dropped += queued  # refused for good (a wrong key, a bad span): as an SDK does
            return
        for service, batch in spans.items():
            self._spans.setdefault(service, [])[:0] = batch
        over = sum(len(b) for b in self._spans.values()) - MAX_QUEUED_SPANS
        for batch in self._spans.values():
            cut = min(max(over, 0), len(batch))
            del batch[:cut]
            self.stats.dropped += cut
            over -= cut

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: Poisson arrivals, each request a task (bounded), spans exported every
        second (or every 512 spans)."""
        gate = asyncio.Semaphore(MAX_CONCURRENT)
        tasks: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(model: SimModel, service: str) -> None:
                try:
                    span = await self.call(session, model, service)
                finally:
                    gate.release()
                self._spans.setdefault(service, []).append(span)

            async def exporter() -> None:
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), EXPORT_EVERY_S)
                    await self.export(session)

            export_task = asyncio.create_task(exporter())
            log.info(
                "simulated traffic on", rps=self.settings.rps, services=list(self.settings.services),
                otlp_url=self.settings.otlp_url,
            )  # fmt: skip
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.rng.expovariate(self.settings.rps))
                if stop.is_set():
                    break
                if gate.locked():
                    continue  # the simulator is saturated: shed, as a client with a pool would queue
                await gate.acquire()
                model = self.rng.choice(self.models)
                service = self.rng.choice(self.settings.services)
                task = asyncio.create_task(one(model, service))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await export_task
            await self.export(session)
