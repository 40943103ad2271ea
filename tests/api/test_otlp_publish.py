"""The trace receiver's publishing against a real JetStream: a request's spans go out as one
pipelined batch, one message per span, all acknowledged before 200; refused with 429 or 503 and
``Retry-After`` while NATS is away; the exporter's retry after the outage stores each span once."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from google.rpc import status_pb2
from nats.js import JetStreamContext
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from prometheus_client import CollectorRegistry

from llmscope.api.metrics import ApiMetrics
from llmscope.api.otlp.receiver import PUBLISH_BATCH, Answer, TraceReceiver
from llmscope.bus.connection import connect
from llmscope.bus.publisher import Publisher
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.proto import subjects
from llmscope.stack.embedded import EmbeddedNats
from tests.alerter.harness import eventually
from tests.api.otlp_payloads import chat, export, span

PROTOBUF = "application/x-protobuf"
SPANS = PUBLISH_BATCH + 300  # more than one batch


def body(first: int, count: int) -> bytes:
    return export(*(span(n, chat(n)) for n in range(first, first + count))).SerializeToString()


async def stored(js: JetStreamContext) -> int:
    return int((await js.stream_info(subjects.STREAM_TELEMETRY)).state.messages)


def refusal(answer: Answer) -> tuple[int, str, int]:
    st = status_pb2.Status()
    st.ParseFromString(answer.body)
    return answer.status, answer.headers.get("Retry-After", ""), st.code


@pytest.mark.fault
async def test_spans_published_as_a_batch_refused_while_nats_is_away_and_stored_once_on_retry(
    embedded_nats: EmbeddedNats,
) -> None:
    nc = await connect(embedded_nats.url, "otlp-publish", connect_timeout=0.5)
    try:
        js = nc.jetstream()
        await ensure_streams(js, BusSettings())
        receiver = TraceReceiver(
            lambda: Publisher(js, timeout=0.5),
            ApiMetrics(CollectorRegistry()),
            max_body_bytes=16 * 1024 * 1024,
            max_in_flight=SPANS + 100,
            publish_deadline_s=1.0,
        )

        ok = await receiver.export(PROTOBUF, "", body(1, SPANS))
        assert ok.status == 200, ok.body[:300]
        assert not ExportTraceServiceResponse.FromString(ok.body).HasField("partial_success")
        assert await stored(js) == SPANS  # every span its own message, all acked before the 200
        assert receiver.waiting == 0

        await asyncio.to_thread(embedded_nats.stop)
        await eventually(lambda: not nc.is_connected, what="the client noticing the outage")
        retried = body(SPANS + 1, SPANS)
        first = asyncio.create_task(receiver.export(PROTOBUF, "", retried))
        await eventually(lambda: receiver.waiting == SPANS, what="the request waiting for acks")
        # Another request would take the spans waiting for NATS over the limit: 429, retry soon.
        crowded = await receiver.export(PROTOBUF, "", body(10 * SPANS, 200))
        assert refusal(crowded) == (429, "1", 8)
        # The waiting one is not confirmed within the deadline: 503, retry later.
        assert refusal(await asyncio.wait_for(first, 60)) == (503, "5", 14)
        assert receiver.waiting == 0

        # The exporter retries once NATS is back: every span stored once, though the client
        # flushed what it had buffered during the outage.
        await asyncio.to_thread(embedded_nats.start)
        await eventually(lambda: nc.is_connected, what="the client reconnecting")
        again = await receiver.export(PROTOBUF, "", retried)
        assert again.status == 200, again.body[:300]
        assert await stored(js) == 2 * SPANS
    finally:
        with contextlib.suppress(ConnectionResetError):
            await nc.close()
