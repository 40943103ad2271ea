"""The OTLP/HTTP receiver against the real API, nats-server and Postgres."""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import AsyncIterator

import httpx
import nats
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from llmscope.api.settings import ApiSettings
from llmscope.config.env import ConfigError, Env, Secret
from llmscope.proto import codec, subjects
from llmscope.proto.telemetry import TelemetryEvent
from tests.alerter.harness import eventually
from tests.api.conftest import API_KEY, Api, serve
from tests.api.otlp_payloads import chat, export, ids, span

INGEST_KEY = "ingest-key-0123456789abcdef"
PROTOBUF = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {INGEST_KEY}"}
JSON = {"Content-Type": "application/json", "Authorization": f"Bearer {INGEST_KEY}"}


@pytest.fixture
async def otlp_api(settings: ApiSettings) -> AsyncIterator[Api]:
    """The API with the OTLP receiver on and the persister running."""
    changed = dataclasses.replace(settings, ingest_key=Secret(INGEST_KEY), persister=True)
    async with serve(changed) as running:
        yield running


async def stream_events(nats_url: str) -> list[TelemetryEvent]:
    """Every event in the telemetry stream, in order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        state = (await js.stream_info(subjects.STREAM_TELEMETRY)).state
        out = []
        for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
            msg = await js.get_msg(subjects.STREAM_TELEMETRY, seq)
            assert msg.data is not None
            out.append(codec.decode_as(msg.data, TelemetryEvent))
        return out
    finally:
        await nc.close()


def response(data: bytes) -> ExportTraceServiceResponse:
    out = ExportTraceServiceResponse()
    out.ParseFromString(data)
    return out


def status(data: bytes) -> status_pb2.Status:
    out = status_pb2.Status()
    out.ParseFromString(data)
    return out


async def test_genai_spans_are_published_stored_and_answered_with_partial_success(
    otlp_api: Api, nats_url: str
) -> None:
    api = otlp_api
    request = export(
        span(1, chat(1, **{"gen_ai.response.time_to_first_chunk": 0.2})),
        span(2, chat(2, **{"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "emb-3"})),
        span(3, chat(3, **{"error.type": "RateLimitError"}), error=True),
        span(4, {"http.request.method": "POST", "url.path": "/checkout"}),  # ignored
        span(5, {k: v for k, v in chat(5).items() if "model" not in k}),  # rejected: no model
    )
    r = await api.anon.post("/v1/traces", content=request.SerializeToString(), headers=PROTOBUF)
    assert r.status_code == 200, r.content
    assert r.headers["content-type"] == "application/x-protobuf"
    partial = response(r.content).partial_success
    assert partial.rejected_spans == 1
    assert "1 GenAI spans rejected" in partial.error_message
    assert "no gen_ai.request.model" in partial.error_message
    assert "1 spans ignored" in partial.error_message

    # 200 came after JetStream's acks: the events are in the stream now, not eventually.
    events = {e.id: e for e in await stream_events(nats_url)}
    assert set(events) == {f"otlp-{ids(n)[0].hex()}{ids(n)[1].hex()}" for n in (1, 2, 3)}
    by_span = {e.id[-4:]: e for e in events.values()}
    assert by_span["5001"].prompt_id == "traffic:chat"
    assert by_span["5001"].ttft_ms == pytest.approx(200)
    assert (by_span["5002"].prompt_id, by_span["5002"].model) == ("traffic:embeddings", "emb-3")
    assert (by_span["5003"].status, by_span["5003"].error_type) == ("rate_limited", "RateLimitError")
    assert all(e.source == "traffic" and e.service_name == "checkout" for e in events.values())

    async def stored() -> bool:
        n = await api.store.pool.fetchval("SELECT count(*) FROM telemetry WHERE id = ANY($1)", list(events))
        return bool(n == 3)

    await eventually(stored, what="the traffic events stored by the persister")
    assert await api.store.pool.fetchval("SELECT count(*) FROM dead_letters") == 0
    metrics = (await api.anon.get("/metrics")).text
    for outcome, n in (("accepted", 3), ("rejected", 1), ("ignored", 1)):
        assert f'llmscope_otlp_spans_total{{outcome="{outcome}"}} {n}.0' in metrics


async def test_json_and_gzip_bodies(otlp_api: Api, nats_url: str) -> None:
    """OTLP/JSON as the specification writes it: hex ids, lowerCamelCase, int64 as strings."""
    trace_id, span_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "opentelemetry.instrumentation.openai_v2"},
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "parentSpanId": "eee19b7ec3c1b173",
                                "name": "chat llama3.1:8b",
                                "kind": 3,
                                "startTimeUnixNano": "1760000000000000000",
                                "endTimeUnixNano": "1760000001500000000",
                                "attributes": [
                                    {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                                    {"key": "gen_ai.system", "value": {"stringValue": "ollama"}},
                                    {"key": "gen_ai.request.model", "value": {"stringValue": "llama3.1:8b"}},
                                    {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "64"}},
                                    {"key": "server.address", "value": {"stringValue": "gpu-1"}},
                                ],
                                "status": {},
                                "someFutureField": {"ignored": True},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    r = await api_post(
        otlp_api, gzip.compress(json.dumps(body).encode()), {**JSON, "Content-Encoding": "gzip"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {}  # everything taken: no partial_success
    (ev,) = await stream_events(nats_url)
    assert ev.id == f"otlp-{trace_id}{span_id}"
    assert (ev.provider, ev.model, ev.target, ev.service_name) == ("ollama", "llama3.1:8b", "gpu-1", "web")
    assert (ev.latency_ms, ev.eval_count) == (1500.0, 64)

    body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "not-hex"  # type: ignore[index]
    bad = await api_post(otlp_api, json.dumps(body).encode(), JSON)
    assert bad.status_code == 400
    assert "is not hex" in bad.json()["message"]
    assert bad.json()["code"] == 3


async def api_post(api: Api, content: bytes, headers: dict[str, str]) -> httpx.Response:
    return await api.anon.post("/v1/traces", content=content, headers=headers)


async def test_an_exporter_retry_is_stored_once(otlp_api: Api, nats_url: str) -> None:
    """Event ids come from the span ids: JetStream drops the resend (Nats-Msg-Id)."""
    body = export(span(1, chat(1)), span(2, chat(2))).SerializeToString()
    for _ in range(2):
        r = await otlp_api.anon.post("/v1/traces", content=body, headers=PROTOBUF)
        assert r.status_code == 200
        assert not response(r.content).HasField("partial_success")
    assert len(await stream_events(nats_url)) == 2


async def test_bad_bodies_and_credentials(settings: ApiSettings) -> None:
    small = dataclasses.replace(settings, ingest_key=Secret(INGEST_KEY), max_body_bytes=4096)
    async with serve(small) as api:
        post = api.anon.post
        garbage = await post("/v1/traces", content=b"\xff\xff\xff not protobuf", headers=PROTOBUF)
        assert garbage.status_code == 400
        assert garbage.headers["content-type"] == "application/x-protobuf"
        assert "ExportTraceServiceRequest" in status(garbage.content).message
        assert (await post("/v1/traces", content=b"{", headers=JSON)).status_code == 400
        not_gzip = await post("/v1/traces", content=b"plain", headers={**JSON, "Content-Encoding": "gzip"})
        assert not_gzip.status_code == 400
        assert (
            await post("/v1/traces", content=b"{}", headers={**JSON, "Content-Type": "text/plain"})
        ).status_code == 415
        brotli = await post("/v1/traces", content=b"{}", headers={**JSON, "Content-Encoding": "br"})
        assert brotli.status_code == 415
        # Over the limit as sent, and over it only once decompressed (a gzip bomb stops there).
        assert (await post("/v1/traces", content=b" " * 5000, headers=JSON)).status_code == 413
        bomb = gzip.compress(b" " * 100_000)
        assert len(bomb) < 4096
        r = await post("/v1/traces", content=bomb, headers={**JSON, "Content-Encoding": "gzip"})
        assert r.status_code == 413
        assert "decompressed" in r.json()["message"]
        # The ingest scope (the admin key has every scope), and the ingest key opens no other route.
        for key in ("", "wrong-key-0123456789"):
            r = await post("/v1/traces", content=b"{}", headers={**JSON, "Authorization": f"Bearer {key}"})
            assert r.status_code == 401, key
        admin = {**JSON, "Authorization": f"Bearer {API_KEY}"}
        assert (await post("/v1/traces", content=b"{}", headers=admin)).status_code == 200
        r = await api.anon.get("/api/models", headers={"Authorization": f"Bearer {INGEST_KEY}"})
        assert r.status_code == 403
        assert "needs scope 'read'" in r.json()["detail"]
        # An empty export is a valid one.
        assert (await post("/v1/traces", content=b"{}", headers=JSON)).json() == {}
        assert "/v1/traces" in (await api.anon.get("/openapi.json")).json()["paths"]


async def test_receiver_off_without_an_ingest_key(api: Api) -> None:
    r = await api.anon.post("/v1/traces", content=b"{}", headers=JSON)
    assert r.status_code == 404
    assert "LLMSCOPE_INGEST_KEY" in r.json()["detail"]


async def test_503_with_retry_after_while_nats_is_away(otlp_api: Api, nats_url: str) -> None:
    otlp_api.runtime.publisher = None  # as before the first connection
    body = export(span(1, chat(1))).SerializeToString()
    r = await otlp_api.anon.post("/v1/traces", content=body, headers=PROTOBUF)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert status(r.content).code == 14
    assert await stream_events(nats_url) == []
    # Nothing to publish needs no bus: ignored spans alone are still answered.
    only_http = export(span(2, {"http.request.method": "GET"})).SerializeToString()
    ok = await otlp_api.anon.post("/v1/traces", content=only_http, headers=PROTOBUF)
    assert ok.status_code == 200
    assert "1 spans ignored" in response(ok.content).partial_success.error_message


def test_ingest_key_is_validated_at_start() -> None:
    base = {"DATABASE_URL": "postgresql://u:p@h/db", "LLMSCOPE_API_KEY": API_KEY}
    settings = ApiSettings.from_env(Env({**base, "LLMSCOPE_OTLP_INGEST_KEY": INGEST_KEY}))
    assert settings.ingest_key.get() == INGEST_KEY
    assert INGEST_KEY not in repr(settings)
    assert not ApiSettings.from_env(Env(base)).ingest_key
    with pytest.raises(ConfigError, match="too short"):
        ApiSettings.from_env(Env({**base, "LLMSCOPE_OTLP_INGEST_KEY": "short"}))
    with pytest.raises(ConfigError, match="must differ"):
        ApiSettings.from_env(Env({**base, "LLMSCOPE_OTLP_INGEST_KEY": API_KEY}))
