"""Each provider over HTTP: fields, TTFT and every error kind against the real simulator;
streams cut short and bursts against crafted wire bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest

from llmscope.config.env import Secret
from llmscope.prober.prompts import Prompt
from llmscope.prober.providers import PROVIDERS, ProbeResult, probe
from llmscope.prober.providers.base import generation_rate, tokens_per_s
from llmscope.prober.targets import Target
from llmscope.proto.telemetry import ProbeKind
from llmscope.simulator.anomalies import InjectRequest
from llmscope.simulator.client import SimClient
from llmscope.simulator.models import SimModel
from llmscope.simulator.server import SimServer
from llmscope.stack.ports import free_port
from tests.prober.wire import Answer, ndjson, openai_chunk, sse, wire_server
from tests.simulator.harness import running_sim

KINDS: tuple[ProbeKind, ...] = ("ollama", "openai", "anthropic")
PROMPT = Prompt(id="p1", prompt_class="simple", text="Say something short.", max_tokens=6)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with running_sim() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def target(
    kind: ProbeKind, url: str, *, model: str = "fast-a:1b", streaming: bool = True, **kw: object
) -> Target:
    base = f"{url}/v1" if kind == "openai" else url
    t = Target(
        name=f"{kind}-t", kind=kind, base_url=base, model=model, prompts=(PROMPT,), streaming=streaming
    )
    return replace(t, **kw)  # type: ignore[arg-type]


async def run(session: aiohttp.ClientSession, t: Target, prompt: Prompt = PROMPT) -> ProbeResult:
    return await probe(session, PROVIDERS[t.kind], t, prompt)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("streaming", [True, False])
async def test_successful_probe_fields(
    sim: SimServer, session: aiohttp.ClientSession, kind: ProbeKind, streaming: bool
) -> None:
    result = await run(session, target(kind, sim.url, streaming=streaming))
    assert result.status == "ok", result.error
    assert result.error is None
    assert result.http_status == 200
    assert result.eval_count == PROMPT.max_tokens
    assert result.prompt_eval_count is not None
    assert result.prompt_eval_count >= 1
    assert result.latency_ms is not None
    assert result.latency_ms > 0
    assert result.tokens_per_s is not None
    assert result.tokens_per_s > 0
    assert len(result.text.split()) == PROMPT.max_tokens
    if streaming:
        assert result.ttft_ms is not None
        assert 0 < result.ttft_ms < result.latency_ms
    else:
        assert result.ttft_ms is None
    if kind == "ollama":
        assert result.total_duration_ms is not None
        assert result.eval_duration_ms is not None
        assert result.total_duration_ms <= result.latency_ms
        assert result.tokens_per_s == pytest.approx(PROMPT.max_tokens / (result.eval_duration_ms / 1000))
    else:
        assert result.total_duration_ms is None


async def test_ollama_chat_api(sim: SimServer, session: aiohttp.ClientSession) -> None:
    result = await run(session, target("ollama", sim.url, api="chat"))
    assert result.status == "ok", result.error
    assert result.eval_count == PROMPT.max_tokens


@pytest.mark.parametrize("kind", KINDS)
async def test_ttft_is_the_first_content_token_not_the_first_frame(
    session: aiohttp.ClientSession, kind: ProbeKind
) -> None:
    # No overhead, so OpenAI's role-only chunk and Anthropic's message_start arrive at once; the
    # first content token needs ~200 ms of prompt evaluation (100 prompt tokens at 500 tokens/s).
    slow_prompt = SimModel(
        name="slow-prompt", host="h", overhead_s=0.0, prompt_tokens_per_s=500, tokens_per_s=200, sigma=0.01
    )
    prompt = Prompt(id="long", prompt_class="complex", text="x" * 400, max_tokens=4)
    async with running_sim([slow_prompt]) as server:
        result = await run(session, target(kind, server.url, model="slow-prompt"), prompt)
    assert result.status == "ok", result.error
    assert result.ttft_ms is not None
    assert result.latency_ms is not None
    assert result.ttft_ms > 180
    # Generation after the first token is ~15 ms: the rest of the latency is before it.
    assert result.latency_ms - result.ttft_ms < 60
    assert result.tokens_per_s is not None
    assert result.tokens_per_s > 20


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("inject", "status", "http_status"),
    [
        (InjectRequest(kind="outage", status=500), "http_5xx", 500),
        (InjectRequest(kind="outage", status=503), "http_5xx", 503),
        (InjectRequest(kind="outage", status=429), "rate_limited", 429),
        # 429 is the caller's quota, 529 the provider out of capacity: two kinds, not one.
        (InjectRequest(kind="outage", status=529), "overloaded", 529),
        (InjectRequest(kind="outage", status=401), "http_4xx", 401),
        (InjectRequest(kind="outage", mode="empty"), "empty_response", 200),
        (InjectRequest(kind="outage", mode="garbage"), "invalid_response", 200),
    ],
)
async def test_injected_failures_map_to_error_kinds(
    sim: SimServer,
    session: aiohttp.ClientSession,
    kind: ProbeKind,
    inject: InjectRequest,
    status: str,
    http_status: int,
) -> None:
    await SimClient(sim.url).inject(inject)
    for streaming in (True, False):
        result = await run(session, target(kind, sim.url, streaming=streaming))
        assert (result.status, result.http_status) == (status, http_status), result.error
        assert result.error
        assert result.latency_ms is not None
    if http_status == 529:
        assert "overloaded" in (result.error or "")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_simulated_stream_cut_short_is_truncated(
    sim: SimServer, session: aiohttp.ClientSession, kind: ProbeKind
) -> None:
    await SimClient(sim.url).inject(InjectRequest(kind="outage", mode="truncate"))
    result = await run(session, target(kind, sim.url))
    assert (result.status, result.http_status) == ("truncated", 200), result.error
    assert "after 2 of 6 tokens" in (result.error or "")
    assert result.ttft_ms is not None
    assert result.tokens_per_s is None
    # An answer that does not stream is whole: truncation is a streaming failure.
    whole = await run(session, target(kind, sim.url, streaming=False))
    assert whole.status == "ok", whole.error


@pytest.mark.parametrize("kind", KINDS)
async def test_hang_is_a_timeout_with_the_time_it_waited(
    sim: SimServer, session: aiohttp.ClientSession, kind: ProbeKind
) -> None:
    await SimClient(sim.url).inject(InjectRequest(kind="outage", mode="hang"))
    result = await run(session, target(kind, sim.url, timeout_s=0.3))
    assert result.status == "timeout"
    assert result.latency_ms is not None
    assert 280 < result.latency_ms < 2000


async def test_slow_stream_times_out_but_keeps_its_ttft(session: aiohttp.ClientSession) -> None:
    slow = SimModel(name="slow", host="h", overhead_s=0.0, tokens_per_s=10, sigma=0.01)
    async with running_sim([slow]) as server:
        result = await run(session, target("openai", server.url, model="slow", timeout_s=0.35))
    assert result.status == "timeout"
    assert result.ttft_ms is not None
    assert result.ttft_ms < 350


@pytest.mark.parametrize("kind", KINDS)
async def test_refused_port_and_unknown_model(
    sim: SimServer, session: aiohttp.ClientSession, kind: ProbeKind
) -> None:
    refused = await run(session, target(kind, f"http://127.0.0.1:{free_port()}"))
    assert refused.status == "refused"
    assert refused.http_status is None
    missing = await run(session, target(kind, sim.url, model="no-such-model"))
    assert (missing.status, missing.http_status) == ("http_4xx", 404)


async def test_api_keys_are_sent_in_each_apis_header(session: aiohttp.ClientSession) -> None:
    key = Secret("sk-secret")
    anthropic = PROVIDERS["anthropic"].request(target("anthropic", "http://x", api_key=key), PROMPT)
    openai = PROVIDERS["openai"].request(target("openai", "http://x", api_key=key), PROMPT)
    assert anthropic.headers["x-api-key"] == "sk-secret"
    assert anthropic.url == "http://x/v1/messages"
    assert openai.headers["Authorization"] == "Bearer sk-secret"
    assert openai.url == "http://x/v1/chat/completions"
    assert "sk-secret" not in repr(target("openai", "http://x", api_key=key))


# ---- streams that end early or arrive in one burst, against crafted wire bytes -------------


def _openai_frames(n: int, finish: str | None, *, done: bool = True) -> list[bytes]:
    frames = [openai_chunk("")]  # the role-only first chunk
    frames += [openai_chunk(f" w{i}") for i in range(n)]
    if finish is not None:
        frames.append(openai_chunk(None, finish))
    if done:
        frames.append(sse("[DONE]"))
    return frames


def _ollama_frames(n: int, *, done_reason: str | None = "stop", load_ns: int = 1_000_000) -> list[bytes]:
    frames = [ndjson({"model": "m", "response": f" w{i}", "done": False}) for i in range(n)]
    if done_reason is not None:
        final: dict[str, object] = {
            "model": "m",
            "response": "",
            "done": True,
            "done_reason": done_reason,
            "total_duration": 900_000_000 + load_ns,
            "load_duration": load_ns,
            "prompt_eval_count": 5,
            "prompt_eval_duration": 10_000_000,
            "eval_count": n,
            "eval_duration": 40_000_000,
        }
        frames.append(ndjson(final))
    return frames


def _anthropic_frames(n: int, stop_reason: str | None, *, stop: bool = True) -> list[bytes]:
    frames = [
        sse(
            {"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}},
            "message_start",
        ),
        sse({"type": "content_block_start", "index": 0}, "content_block_start"),
    ]
    frames += [
        sse(
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": f" w{i}"}},
            "content_block_delta",
        )
        for i in range(n)
    ]
    if stop_reason is not None:
        frames.append(
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason},
                    "usage": {"output_tokens": n},
                },
                "message_delta",
            )
        )
    if stop:
        frames.append(sse({"type": "message_stop"}, "message_stop"))
    return frames


CUT_SHORT: list[tuple[ProbeKind, Answer, str]] = [
    ("openai", Answer(_openai_frames(2, None)), "with [DONE] but no finish reason after 2 of 6"),
    (
        "openai",
        Answer(_openai_frames(2, None, done=False)),
        "without [DONE] and no finish reason after 2 of 6",
    ),
    (
        "openai",
        Answer(_openai_frames(2, None, done=False), cut=True),
        "connection closed mid-stream after 2 of 6",
    ),
    (
        "ollama",
        Answer(_ollama_frames(2, done_reason=None)),
        "without a done message and no finish reason after 2",
    ),
    (
        "ollama",
        Answer(_ollama_frames(2, done_reason=None), cut=True),
        "connection closed mid-stream after 2 of 6",
    ),
    ("anthropic", Answer(_anthropic_frames(2, None)), "with message_stop but no finish reason after 2 of 6"),
    ("anthropic", Answer(_anthropic_frames(2, None, stop=False), cut=True), "connection closed mid-stream"),
]


@pytest.mark.parametrize(("kind", "answer", "needle"), CUT_SHORT)
async def test_a_stream_cut_short_is_truncated_and_keeps_its_timings(
    session: aiohttp.ClientSession, kind: ProbeKind, answer: Answer, needle: str
) -> None:
    answer.gap_s = 0.01
    async with wire_server(answer) as server:
        result = await run(session, target(kind, server.url))
    assert result.status == "truncated", result.error
    assert needle in (result.error or "")
    assert result.http_status == 200
    assert result.ttft_ms is not None
    assert result.latency_ms is not None
    assert result.ttft_ms < result.latency_ms
    assert result.tokens_per_s is None
    assert result.text == " w0 w1"


@pytest.mark.parametrize(
    ("kind", "answer"),
    [
        ("openai", Answer(_openai_frames(2, "stop"))),
        ("ollama", Answer(_ollama_frames(2, done_reason="stop"))),
        (  # Ollama from before done_reason existed: done alone ends the answer
            "ollama",
            Answer([*_ollama_frames(2, done_reason=None), ndjson({"done": True, "eval_count": 2})]),
        ),
        ("anthropic", Answer(_anthropic_frames(2, "end_turn"))),
    ],
)
async def test_a_short_answer_with_a_finish_reason_is_a_normal_answer(
    session: aiohttp.ClientSession, kind: ProbeKind, answer: Answer
) -> None:
    answer.gap_s = 0.01
    async with wire_server(answer) as server:
        result = await run(session, target(kind, server.url))
    assert result.status == "ok", result.error
    assert result.eval_count == 2
    assert result.text == " w0 w1"


@pytest.mark.parametrize(
    ("error_type", "status"), [("overloaded_error", "overloaded"), ("api_error", "invalid_response")]
)
async def test_an_anthropic_error_event_inside_the_stream(
    session: aiohttp.ClientSession, error_type: str, status: str
) -> None:
    # Anthropic may answer 200 and report being overloaded inside the stream: the same kind as a 529.
    error = sse({"type": "error", "error": {"type": error_type, "message": "Overloaded"}}, "error")
    async with wire_server(Answer([*_anthropic_frames(1, None, stop=False), error], gap_s=0.005)) as server:
        result = await run(session, target("anthropic", server.url))
    assert (result.status, result.http_status) == (status, 200), result.error
    assert error_type in (result.error or "")


async def test_all_tokens_without_a_finish_reason_is_not_truncated(session: aiohttp.ClientSession) -> None:
    # Some OpenAI-compatible servers never send finish_reason; a full answer is still complete.
    async with wire_server(Answer(_openai_frames(6, None), gap_s=0.005)) as server:
        result = await run(session, target("openai", server.url))
    assert result.status == "ok", result.error
    assert result.eval_count == 6


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stream_that_arrives_in_one_burst_has_no_tokens_per_s(
    session: aiohttp.ClientSession, kind: ProbeKind
) -> None:
    # 60 tokens in one write: the burst threshold is then 12 ms (0.2 ms a token), far above
    # what parsing the frames takes even on a loaded machine (6 tokens' 2 ms floor was not).
    frames = {
        "openai": _openai_frames(60, "length"),
        "ollama": _ollama_frames(60),
        "anthropic": _anthropic_frames(60, "max_tokens"),
    }[kind]
    if kind == "ollama":
        # Ollama reports its own generation time; a burst there is one it measured itself.
        frames[-1] = frames[-1].replace(b'"eval_duration": 40000000', b'"eval_duration": 3000')
    async with wire_server(Answer(frames)) as server:
        burst = await run(session, target(kind, server.url))
    assert burst.status == "ok", burst.error
    assert burst.eval_count == 60
    assert burst.ttft_ms is not None
    assert burst.tokens_per_s is None
    # The same tokens 5 ms apart are a speed (about 6 / 25 ms), so the check above can fail.
    async with wire_server(Answer(_openai_frames(6, "length"), gap_s=0.005)) as server:
        paced = await run(session, target("openai", server.url))
    assert paced.status == "ok", paced.error
    assert paced.tokens_per_s is not None
    assert 10 < paced.tokens_per_s < 1200


def test_burst_threshold() -> None:
    assert generation_rate(6, 1.9) is None  # under the 2 ms floor
    assert generation_rate(100, 19.0) is None  # 0.19 ms per token: faster than 5,000 tokens/s
    assert generation_rate(100, 25.0) == pytest.approx(4000)
    assert generation_rate(6, 30.0) == pytest.approx(200)
    assert generation_rate(0, 30.0) is None
    assert tokens_per_s(1, 500.0, 100.0) is None  # one streamed token: no interval to measure
    assert tokens_per_s(1, 500.0, None) == pytest.approx(2.0)  # non-streaming: total time
