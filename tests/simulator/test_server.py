"""The simulator over real HTTP: the three APIs' shapes, the control API and anomaly effects."""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import aiohttp
import msgspec
import pytest

from llmscope.simulator.anomalies import InjectRequest
from llmscope.simulator.client import SimClient, SimControlError
from llmscope.simulator.models import SimModel
from tests.simulator.harness import running_sim

CHAT = [{"role": "user", "content": "Why is the sky blue?"}]


async def _post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        return resp.status, await resp.read()


def _sse(raw: bytes) -> list[tuple[str, str]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", ""
        for line in block.splitlines():
            key, _, value = line.partition(": ")
            if key == "event":
                name = value
            elif key == "data":
                data = value
        events.append((name, data))
    return events


async def test_ollama_generate_streams_ndjson_with_native_nanosecond_fields() -> None:
    async with running_sim() as sim:
        status, raw = await _post(
            f"{sim.url}/api/generate",
            {"model": "fast-a:1b", "prompt": "hi there", "options": {"num_predict": 5}},
        )
        assert status == 200
        lines = [msgspec.json.decode(line) for line in raw.splitlines()]
        assert [line["done"] for line in lines] == [False] * 5 + [True]
        final = lines[-1]
        assert final["eval_count"] == 5
        assert final["prompt_eval_count"] >= 1
        for field in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
            assert isinstance(final[field], int)
        assert 1e6 < final["total_duration"] < 5e9  # nanoseconds: between 1 ms and 5 s
        assert final["total_duration"] >= final["eval_duration"] + final["prompt_eval_duration"]
        text = "".join(line["response"] for line in lines)
        assert len(text.split()) == 5

        status, raw = await _post(
            f"{sim.url}/api/chat",
            {"model": "fast-b:1b", "messages": CHAT, "stream": False, "options": {"num_predict": 3}},
        )
        body = msgspec.json.decode(raw)
        assert (status, body["done"], body["eval_count"]) == (200, True, 3)
        assert body["message"]["role"] == "assistant"
        assert body["message"]["content"]

        async with aiohttp.ClientSession() as session, session.get(f"{sim.url}/api/tags") as resp:
            tags = await resp.json()
        assert [m["name"] for m in tags["models"]] == ["fast-a:1b", "fast-b:1b", "fast-c"]


async def test_openai_stream_starts_with_a_role_only_chunk_and_ends_with_usage_and_done() -> None:
    async with running_sim() as sim:
        body = {
            "model": "fast-c",
            "messages": CHAT,
            "max_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        status, raw = await _post(f"{sim.url}/v1/chat/completions", body)
        assert status == 200
        events = [data for _, data in _sse(raw)]
        assert events[-1] == "[DONE]"
        chunks = [msgspec.json.decode(e) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:] if c["choices"]]
        assert sum(1 for c in contents if c) == 4
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["completion_tokens"] == 4

        status, raw = await _post(f"{sim.url}/v1/chat/completions", {**body, "stream": False})
        answer = msgspec.json.decode(raw)
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["finish_reason"] == "length"
        assert answer["usage"]["completion_tokens"] == 4


async def test_anthropic_event_sequence_and_plain_message() -> None:
    async with running_sim() as sim:
        body = {"model": "fast-a:1b", "messages": CHAT, "max_tokens": 3, "stream": True}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{sim.url}/v1/messages", json=body, headers={"x-api-key": "sk-test"}) as resp,
        ):
            raw = await resp.read()
        names = [name for name, _ in _sse(raw)]
        assert names == [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        delta = msgspec.json.decode(_sse(raw)[-2][1])
        assert delta["usage"]["output_tokens"] == 3

        status, raw = await _post(f"{sim.url}/v1/messages", {**body, "stream": False})
        message = msgspec.json.decode(raw)
        assert (status, message["type"], message["stop_reason"]) == (200, "message", "max_tokens")
        assert message["usage"]["output_tokens"] == 3

        status, raw = await _post(f"{sim.url}/v1/messages", {"model": "fast-a:1b", "messages": CHAT})
        assert status == 400
        assert msgspec.json.decode(raw)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body", "check"),
    [
        ("/api/generate", {"model": "nope", "prompt": "x"}, lambda b: "not found" in b["error"]),
        ("/v1/chat/completions", {"model": "nope", "messages": CHAT}, lambda b: b["error"]["type"]),
        (
            "/v1/messages",
            {"model": "nope", "messages": CHAT, "max_tokens": 1},
            lambda b: b["type"] == "error",
        ),
    ],
)
async def test_unknown_model_is_404_in_each_apis_error_shape(
    path: str, body: dict[str, Any], check: Any
) -> None:
    async with running_sim() as sim:
        status, raw = await _post(sim.url + path, body)
        assert status == 404
        assert check(msgspec.json.decode(raw))


async def _ollama_compute_ms(url: str, model: str, n: int) -> list[float]:
    """Server-reported time minus model load, of ``n`` sequential non-streaming requests."""
    out = []
    for _ in range(n):
        _, raw = await _post(
            f"{url}/api/generate",
            {"model": model, "prompt": "steady prompt", "stream": False, "options": {"num_predict": 8}},
        )
        body = msgspec.json.decode(raw)
        out.append((body["total_duration"] - body["load_duration"]) / 1e6)
    return out


async def test_shift_multiplies_latency_by_its_factor_and_clears() -> None:
    async with running_sim() as sim:
        client = SimClient(sim.url)
        before = statistics.median(await _ollama_compute_ms(sim.url, "fast-a:1b", 15))
        anomaly = await client.inject(InjectRequest(kind="shift", model="fast-a:1b", factor=2.0))
        after = statistics.median(await _ollama_compute_ms(sim.url, "fast-a:1b", 15))
        other = statistics.median(await _ollama_compute_ms(sim.url, "fast-c", 15))
        assert after / before == pytest.approx(2.0, rel=0.15)
        assert other / before == pytest.approx(1.0, rel=0.25)
        state = await client.state()
        assert [a["id"] for a in state["anomalies"]] == [anomaly["id"]]
        assert await client.clear(anomaly["id"]) == 1
        cleared = statistics.median(await _ollama_compute_ms(sim.url, "fast-a:1b", 15))
        assert cleared / before == pytest.approx(1.0, rel=0.15)


async def test_cascade_slows_every_model_on_the_host_together() -> None:
    async with running_sim() as sim:
        client = SimClient(sim.url)
        base = {
            m: statistics.median(await _ollama_compute_ms(sim.url, m, 9))
            for m in ("fast-a:1b", "fast-b:1b", "fast-c")
        }
        await client.inject(InjectRequest(kind="cascade", host="gpu-t", factor=3.0))
        hit = {m: statistics.median(await _ollama_compute_ms(sim.url, m, 9)) for m in base}
        assert hit["fast-a:1b"] / base["fast-a:1b"] == pytest.approx(3.0, rel=0.2)
        assert hit["fast-b:1b"] / base["fast-b:1b"] == pytest.approx(3.0, rel=0.2)
        assert hit["fast-c"] / base["fast-c"] == pytest.approx(1.0, rel=0.25)


async def test_cold_start_after_idle() -> None:
    model = SimModel(name="cold", host="h", load_s=0.2, keep_alive_s=0.3, tokens_per_s=500, overhead_s=0.001)
    async with running_sim([model]) as sim:
        first, second = await _post_load(sim.url), await _post_load(sim.url)
        assert first > 100
        assert second == 0
        await asyncio.sleep(0.5)
        assert await _post_load(sim.url) > 100


async def _post_load(url: str) -> float:
    _, raw = await _post(f"{url}/api/generate", {"model": "cold", "prompt": "p", "stream": False})
    return float(msgspec.json.decode(raw)["load_duration"]) / 1e6


async def test_control_api_rejects_bad_injections() -> None:
    async with running_sim() as sim:
        client = SimClient(sim.url)
        with pytest.raises(SimControlError, match="unknown model"):
            await client.inject(InjectRequest(kind="shift", model="missing"))
        status, raw = await _post(f"{sim.url}/_sim/inject", {"kind": "shift", "factr": 2})
        assert status == 422
        assert "factr" in msgspec.json.decode(raw)["error"]
        with pytest.raises(SimControlError, match="404"):
            await client.clear(42)


async def test_seed_makes_answers_deterministic() -> None:
    texts = []
    for _ in range(2):
        async with running_sim(seed=123) as sim:
            _, raw = await _post(
                f"{sim.url}/api/generate", {"model": "fast-a:1b", "prompt": "same", "stream": False}
            )
            body = msgspec.json.decode(raw)
            texts.append((body["response"], body["eval_duration"]))
    assert texts[0] == texts[1]
