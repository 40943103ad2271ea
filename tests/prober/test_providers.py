"""Each provider against the real simulator over HTTP: fields, TTFT and every error kind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest

from llmscope.config.env import Secret
from llmscope.prober.prompts import Prompt
from llmscope.prober.providers import PROVIDERS, ProbeResult, probe
from llmscope.prober.targets import Target
from llmscope.proto.telemetry import ProviderKind
from llmscope.simulator.anomalies import InjectRequest
from llmscope.simulator.client import SimClient
from llmscope.simulator.models import SimModel
from llmscope.simulator.server import SimServer
from llmscope.stack.ports import free_port
from tests.simulator.harness import running_sim

KINDS: tuple[ProviderKind, ...] = ("ollama", "openai", "anthropic")
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
    kind: ProviderKind, url: str, *, model: str = "fast-a:1b", streaming: bool = True, **kw: object
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
    sim: SimServer, session: aiohttp.ClientSession, kind: ProviderKind, streaming: bool
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
    session: aiohttp.ClientSession, kind: ProviderKind
) -> None:
    # No overhead, so OpenAI's role-only chunk and Anthropic's message_start arrive at once; the
    # first content token needs ~200 ms of prompt evaluation (100 prompt tokens at 500 tokens/s).
    slow_prompt = SimModel(
        name="slow-prompt", host="h", overhead_s=0.0, prompt_tokens_per_s=500, tokens_per_s=1000, sigma=0.01
    )
    prompt = Prompt(id="long", prompt_class="complex", text="x" * 400, max_tokens=4)
    async with running_sim([slow_prompt]) as server:
        result = await run(session, target(kind, server.url, model="slow-prompt"), prompt)
    assert result.status == "ok", result.error
    assert result.ttft_ms is not None
    assert result.latency_ms is not None
    assert result.ttft_ms > 180
    # Generation after the first token is ~3 ms: the rest of the latency is before it.
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
        (InjectRequest(kind="outage", status=529), "rate_limited", 529),
        (InjectRequest(kind="outage", status=401), "http_4xx", 401),
        (InjectRequest(kind="outage", mode="empty"), "empty_response", 200),
        (InjectRequest(kind="outage", mode="garbage"), "invalid_response", 200),
    ],
)
async def test_injected_failures_map_to_error_kinds(
    sim: SimServer,
    session: aiohttp.ClientSession,
    kind: ProviderKind,
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
async def test_hang_is_a_timeout_with_the_time_it_waited(
    sim: SimServer, session: aiohttp.ClientSession, kind: ProviderKind
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
    sim: SimServer, session: aiohttp.ClientSession, kind: ProviderKind
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
