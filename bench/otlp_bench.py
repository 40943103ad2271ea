"""OTLP receiver throughput: spans per second and CPU per span of ``POST /v1/traces``, against
baselines measured in the same run on the same bodies.

Not a test: it prints figures. Each body is one export request of ``--spans`` GenAI chat spans (an
SDK's ``BatchSpanProcessor`` sends up to 512), built with the official ``opentelemetry-proto``
types, in four encodings: protobuf, protobuf + gzip, JSON (OTLP/JSON: hex ids), JSON + gzip. For
each, one process (one core: the event loop plus the receiver's decoding thread) runs

(a) decoding alone with ``opentelemetry-proto`` (gunzip, then ``ParseFromString`` or
    ``json_format.Parse``): the issue's baseline, no HTTP and no mapping;
(b) a bare FastAPI endpoint that reads the same body and answers 200 (the HTTP framework's own
    cost, in process through ``httpx.ASGITransport``, no sockets);
(c) the receiver's decode and map (``wire.decode_traces`` + ``genai.map_traces``), no HTTP, no bus;
(d) the receiver's route, in process like (b), every span published to a real JetStream
    (``nats-server`` started here, its CPU not counted: it is another process) and acknowledged
    before the 200, as in production: one message per span, the request's messages pipelined
    and their acks awaited together (``Publisher.publish_many``);
(e) the same route publishing as the receiver did before, each span's publish awaiting its own
    ack (256 such publishes concurrently), for the comparison in the same run.

Spans per second are spans over wall time; CPU per span is this process's CPU time (all its
threads) over spans. Ratios are against (a) and (b).

Usage: ``python bench/otlp_bench.py [--spans 512] [--seconds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
from fastapi import FastAPI, Request, Response
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from llmscope.api.metrics import ApiMetrics
from llmscope.api.otlp import wire
from llmscope.api.otlp.genai import map_traces
from llmscope.api.otlp.receiver import Answer, TraceReceiver, router
from llmscope.bus.publisher import Publisher, PublishFailed
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.proto import subjects
from llmscope.proto.base import Event, utcnow

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import print_machine


class PerSpanAckReceiver(TraceReceiver):
    """The receiver's publishing before batching: each publish awaits its own ack."""

    async def _publish(self, events: Sequence[Event], encoding: wire.Encoding) -> Answer | None:
        publisher = self._publisher()
        assert publisher is not None
        try:
            for start in range(0, len(events), 256):
                await asyncio.gather(
                    *(
                        publisher.publish(self._subject(ev), ev, deadline=5.0)
                        for ev in events[start : start + 256]
                    )
                )
        except PublishFailed as exc:
            raise AssertionError(f"the bench's JetStream refused: {exc}") from exc
        return None


def kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def request_of(batch: int, spans: int) -> ExportTraceServiceRequest:
    """``spans`` GenAI chat spans, distinct ids per ``batch`` (each request is new to JetStream)."""
    start = time.time_ns() - 120_000_000_000
    out = []
    for i in range(spans):
        n = batch * spans + i
        out.append(
            Span(
                trace_id=(0xABC << 100 | n).to_bytes(16, "big"),
                span_id=(0x5 << 56 | n).to_bytes(8, "big"),
                name="chat gpt-4o-mini",
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=start + i * 1_000_000,
                end_time_unix_nano=start + i * 1_000_000 + 800_000_000 + i % 400 * 1_000_000,
                attributes=[
                    kv("gen_ai.operation.name", "chat"),
                    kv("gen_ai.provider.name", "openai"),
                    kv("gen_ai.request.model", "gpt-4o-mini"),
                    kv("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
                    kv("gen_ai.usage.input_tokens", 300 + i % 700),
                    kv("gen_ai.usage.output_tokens", 50 + i % 300),
                    kv("server.address", "api.openai.com"),
                    kv("http.request.method", "POST"),
                ],
            )
        )
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv("service.name", "checkout")]),
                scope_spans=[
                    ScopeSpans(
                        scope=InstrumentationScope(name="opentelemetry.instrumentation.openai_v2"),
                        spans=out,
                    )
                ],
            )
        ]
    )


def otlp_json(req: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON as exporters send it: ids in hex, not protobuf JSON's base64."""
    raw = json_format.MessageToDict(req)
    for rs in raw["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for k in ("traceId", "spanId"):
                    s[k] = base64.b64decode(s[k]).hex()
    return json.dumps(raw).encode()


@dataclass(frozen=True)
class Body:
    name: str
    content_type: str
    encoding: str
    data: list[bytes]
    """One body per request (distinct span ids), cycled."""


def bodies(spans: int, count: int) -> list[Body]:
    # Each encoding its own span ids: JetStream stores every span of (d), none deduplicated.
    def reqs(k: int) -> list[ExportTraceServiceRequest]:
        return [request_of(k * count + b, spans) for b in range(count)]

    return [
        Body("protobuf", "application/x-protobuf", "", [r.SerializeToString() for r in reqs(0)]),
        Body(
            "protobuf+gzip",
            "application/x-protobuf",
            "gzip",
            [gzip.compress(r.SerializeToString()) for r in reqs(1)],
        ),
        Body("json", "application/json", "", [otlp_json(r) for r in reqs(2)]),
        Body("json+gzip", "application/json", "gzip", [gzip.compress(otlp_json(r)) for r in reqs(3)]),
    ]


@dataclass(frozen=True)
class Rate:
    spans_per_s: float
    cpu_us_per_span: float


async def measure(seconds: float, spans: int, one: Callable[[int], Awaitable[None]]) -> Rate:
    """Call ``one(i)`` for i = 0, 1, ... for about ``seconds`` (after a warm-up)."""
    for i in range(3):
        await one(i)
    t0, c0, i = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - t0 < seconds:
        await one(i)
        i += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return Rate(i * spans / wall, cpu / (i * spans) * 1e6)


def decode_alone(body: Body) -> Callable[[int], Awaitable[None]]:
    async def one(i: int) -> None:
        data = body.data[i % len(body.data)]
        if body.encoding == "gzip":
            data = gzip.decompress(data)
        msg = ExportTraceServiceRequest()
        if body.content_type == "application/x-protobuf":
            msg.ParseFromString(data)
        else:
            json_format.Parse(data, msg, ignore_unknown_fields=True)

    return one


def decode_and_map(body: Body, limit: int) -> Callable[[int], Awaitable[None]]:
    encoding = wire.encoding_of(body.content_type)

    async def one(i: int) -> None:
        data = wire.decompress(body.encoding, body.data[i % len(body.data)], limit=limit)
        mapped = map_traces(wire.decode_traces(wire.Body(data, encoding)), now=utcnow())
        assert not mapped.rejected, mapped.rejected[:1]

    return one


def over_http(
    client: httpx.AsyncClient, path: str, body: Body, offset: list[int]
) -> Callable[[int], Awaitable[None]]:
    headers = {"content-type": body.content_type}
    if body.encoding:
        headers["content-encoding"] = body.encoding

    async def one(i: int) -> None:
        # A body JetStream has not seen (its duplicate window would drop a repeat without work).
        offset[0] += 1
        r = await client.post(path, content=body.data[offset[0] % len(body.data)], headers=headers)
        assert r.status_code == 200, r.text[:300]

    return one


@contextlib.asynccontextmanager
async def nats_server() -> AsyncIterator[str]:
    exe = shutil.which("nats-server") or os.path.join(os.path.dirname(sys.executable), "nats-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as store:
        proc = await asyncio.create_subprocess_exec(
            exe,
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-sd",
            store,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"nats://127.0.0.1:{port}"
            for _ in range(100):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                    break
                await asyncio.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)


async def run(spans: int, seconds: float) -> None:
    print_machine(("fastapi", "nats-py", "msgspec"), nats_server=True)
    limit = 64 * 1024 * 1024
    # Enough distinct bodies that (d) never repeats one within JetStream's duplicate window.
    count = 200
    all_bodies = bodies(spans, count)
    print(
        f"\n{spans} GenAI chat spans per request; body sizes: "
        + ", ".join(f"{b.name} {len(b.data[0]) / 1024:.1f} KiB" for b in all_bodies)
    )

    bare = FastAPI()

    @bare.post("/v1/traces")
    async def sink(request: Request) -> Response:
        await request.body()
        return Response(b"", 200, media_type="application/x-protobuf")

    async with nats_server() as url:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await ensure_streams(js, BusSettings(nats_url=url, duplicate_window_s=120))
        publisher = Publisher(js)
        receiver = TraceReceiver(lambda: publisher, ApiMetrics(), max_body_bytes=limit)
        app = FastAPI()
        app.include_router(router(receiver))
        before = FastAPI()
        before.include_router(
            router(PerSpanAckReceiver(lambda: publisher, ApiMetrics(), max_body_bytes=limit))
        )
        offset = [0]
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=bare), base_url="http://bench") as bare_c,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as app_c,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=before), base_url="http://bench") as old_c,
        ):
            print(f"\n{'body':14s} {'case':58s} {'spans/s':>10s} {'CPU us/span':>12s}  ratios")
            for body in all_bodies:
                a = await measure(seconds, spans, decode_alone(body))
                b = await measure(seconds, spans, over_http(bare_c, "/v1/traces", body, [0]))
                c = await measure(seconds, spans, decode_and_map(body, limit))
                # (d) and (e) share the bodies: ``offset`` moves on, so neither repeats one.
                bus_s = min(seconds, count * spans / 2 / 20_000)
                d = await measure(bus_s, spans, over_http(app_c, "/v1/traces", body, offset))
                e = await measure(bus_s, spans, over_http(old_c, "/v1/traces", body, offset))
                rows = [
                    ("(a) opentelemetry-proto decode alone", a, ""),
                    ("(b) bare FastAPI endpoint, same body", b, ""),
                    (
                        "(c) receiver decode + GenAI map (no HTTP, no bus)",
                        c,
                        f"{a.spans_per_s / c.spans_per_s:.1f}x (a)'s time",
                    ),
                    (
                        "(d) receiver route, published to JetStream and acked",
                        d,
                        f"{a.spans_per_s / d.spans_per_s:.1f}x (a)'s time, "
                        f"{b.spans_per_s / d.spans_per_s:.1f}x (b)'s; "
                        f"CPU {d.cpu_us_per_span / a.cpu_us_per_span:.1f}x (a)'s",
                    ),
                    (
                        "(e) as (d), each span's publish awaiting its ack (before)",
                        e,
                        f"(d) is {d.spans_per_s / e.spans_per_s:.2f}x its spans/s, "
                        f"{e.cpu_us_per_span / d.cpu_us_per_span:.2f}x less CPU per span",
                    ),
                ]
                for label, r, ratio in rows:
                    figures = f"{r.spans_per_s:10,.0f} {r.cpu_us_per_span:12.1f}"
                    print(f"{body.name:14s} {label:58s} {figures}  {ratio}", flush=True)
        info = await js.stream_info(subjects.STREAM_TELEMETRY)
        print(f"\nJetStream stored {info.state.messages:,} traffic events (each span of (d) and (e) once)")
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=512, help="spans per export request")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    asyncio.run(run(args.spans, args.seconds))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
