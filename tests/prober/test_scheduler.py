"""The scheduler against a crafted local server: a target's probes never overlap by default,
cold starts are marked by policy, and host metrics say whose host they describe."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from llmscope.prober.metrics import ProberMetrics
from llmscope.prober.outbox import Outbox
from llmscope.prober.prompts import Prompt
from llmscope.prober.scheduler import ProbeOptions, Scheduler
from llmscope.prober.sysmetrics import SystemSampler, system_scope
from llmscope.prober.targets import Target
from tests.prober.wire import Answer, WireServer, ndjson, wire_server

PROMPTS = tuple(Prompt(id=f"p{i}", prompt_class="simple", text=f"prompt {i}", max_tokens=4) for i in range(3))
OPENAI_ANSWER = json.dumps(
    {
        "choices": [{"index": 0, "message": {"content": "a b c d"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
).encode()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _scheduler(
    session: aiohttp.ClientSession,
    targets: Sequence[Target],
    *,
    metrics: ProberMetrics | None = None,
    host_names: frozenset[str] = frozenset(),
) -> Scheduler:
    metrics = metrics or ProberMetrics(CollectorRegistry())
    return Scheduler(
        targets,
        session=session,
        outbox=Outbox(None, metrics, maxsize=10_000),
        sampler=SystemSampler(load_nvml=False),
        metrics=metrics,
        options=ProbeOptions(prober_id="t", concurrency=8),
        rng=random.Random(3),
        host_names=host_names,
    )


def _openai_target(url: str, **kw: object) -> Target:
    t = Target(
        name="one-slot",
        kind="openai",
        base_url=f"{url}/v1",
        model="m",
        prompts=PROMPTS,
        interval_s=0.01,
        jitter=0.0,
        timeout_s=5.0,
        streaming=False,
    )
    return replace(t, **kw)  # type: ignore[arg-type]


async def _run_until(scheduler: Scheduler, server: WireServer, requests: int) -> None:
    """Run the probe loops until the server has answered ``requests`` requests."""
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        async with asyncio.timeout(30):
            await server.wait_for_requests(requests)
    finally:
        stop.set()
        await task


def _one_slot_server() -> Answer:
    # Each request holds the server for 40 ms, longer than the 10 ms interval between probes.
    return Answer(frames=[OPENAI_ANSWER], delay_s=0.04, content_type="application/json")


async def test_a_targets_probes_never_overlap_by_default(session: aiohttp.ClientSession) -> None:
    async with wire_server(_one_slot_server()) as server:
        scheduler = _scheduler(session, [_openai_target(server.url)])
        await _run_until(scheduler, server, 8)
    assert server.max_in_flight == 1
    assert scheduler.probes >= server.requests - 1  # the last may be cut by the stop
    # Every prompt was sent, in turn.
    assert {b["messages"][0]["content"] for b in server.bodies} == {p.text for p in PROMPTS}


async def test_once_mode_sends_a_targets_prompts_one_after_the_other(session: aiohttp.ClientSession) -> None:
    async with wire_server(_one_slot_server()) as server:
        t = _openai_target(server.url)
        scheduler = _scheduler(session, [t])
        # What `llmscope prober --once` does: every prompt of every target at the same moment.
        began = time.perf_counter()
        events = await asyncio.gather(*(scheduler.probe_once(t, p) for p in t.prompts))
        wall_ms = (time.perf_counter() - began) * 1000
    assert [e.status for e in events] == ["ok"] * 3
    assert server.max_in_flight == 1
    # The wait for the target's slot is not latency: the last probe waited for two others
    # but measured only its own request (about a third of the whole).
    assert all(e.latency_ms is not None and e.latency_ms < wall_ms * 0.6 for e in events)


async def test_concurrency_lets_a_targets_probes_overlap_up_to_the_setting(
    session: aiohttp.ClientSession,
) -> None:
    async with wire_server(_one_slot_server()) as server:
        scheduler = _scheduler(session, [_openai_target(server.url, concurrency=3)])
        await _run_until(scheduler, server, 12)
    assert server.max_in_flight == 3


def _ollama_answer(load_ms: float) -> Answer:
    final = {
        "model": "m",
        "response": "a b c d",
        "done": True,
        "done_reason": "stop",
        "total_duration": int((load_ms + 60) * 1e6),
        "load_duration": int(load_ms * 1e6),
        "prompt_eval_count": 3,
        "prompt_eval_duration": 10_000_000,
        "eval_count": 4,
        "eval_duration": 40_000_000,
    }
    return Answer(frames=[ndjson(final)], content_type="application/json")


@pytest.mark.parametrize(
    ("load_ms", "settings", "cold"),
    [
        (2400.0, {}, True),  # a reload: default threshold 500 ms, default policy exclude
        (120.0, {}, False),  # a warm model still reports a small load duration
        (2400.0, {"cold_start": "include"}, False),  # keep_alive=0 deployments chart every probe
        (120.0, {"cold_start_ms": 100.0}, True),
    ],
)
async def test_a_model_load_marks_a_cold_start_by_the_targets_policy(
    session: aiohttp.ClientSession, load_ms: float, settings: dict[str, object], cold: bool
) -> None:
    async with wire_server(_ollama_answer(load_ms)) as server:
        t = Target(
            name="ollama-t", kind="ollama", base_url=server.url, model="m", prompts=PROMPTS, streaming=False
        )
        t = replace(t, **settings)  # type: ignore[arg-type]
        metrics = ProberMetrics(CollectorRegistry())
        event = await _scheduler(session, [t], metrics=metrics).probe_once(t, PROMPTS[0])
    assert event.status == "ok", event.error
    assert event.load_duration_ms == pytest.approx(load_ms)
    assert event.cold_start is cold
    # The prober counts loads over the threshold whatever the policy.
    over = load_ms > t.cold_start_ms
    assert metrics.cold_starts.labels("ollama-t")._value.get() == (1 if over else 0)


async def test_host_metrics_name_the_target_host_only_when_it_is_the_probers(
    session: aiohttp.ClientSession,
) -> None:
    async with wire_server(_one_slot_server()) as server:
        local = _openai_target(server.url)
        scheduler = _scheduler(session, [local])
        event = await scheduler.probe_once(local, PROMPTS[0])
    assert (event.system_scope, event.system.scope) == ("target", "target")
    assert event.cpu_percent is not None
    remote = _openai_target("http://127.0.0.1:9", name="remote", base_url="http://gpu-box.lan:8000/v1")
    assert _scheduler(session, [remote])._scopes["remote"] == "prober"


@pytest.mark.parametrize(
    ("url", "scope"),
    [
        ("http://127.0.0.1:11434", "target"),
        ("http://127.9.9.9:11434", "target"),
        ("http://[::1]:8080/v1", "target"),
        ("http://localhost:8080/v1", "target"),
        ("http://0.0.0.0:8080", "target"),
        ("http://prober-box:11434", "target"),
        ("http://PROBER-BOX.lan:11434", "target"),
        ("http://10.1.2.3:11434", "target"),
        ("http://10.1.2.30:11434", "prober"),
        ("http://prober-box-2:11434", "prober"),
        ("https://api.openai.com/v1", "prober"),
        ("http://ollama:11434", "prober"),
    ],
)
def test_system_scope(url: str, scope: str) -> None:
    assert system_scope(url, frozenset({"prober-box", "10.1.2.3"})) == scope
