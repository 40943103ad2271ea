"""Incidents: correlation, cascades, lifecycle, the analysis with and without an LLM, similarity."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from llmscope.alerter.analysis import TelemetryPoint, summarize
from llmscope.alerter.incidents import (
    OpenIncident,
    OpenSignal,
    correlate,
    forms_incidents,
    sustained,
    sustained_models,
    title_for,
)
from llmscope.alerter.llm import LlmConfig, analyze, parse_answer
from llmscope.proto import codec, subjects
from llmscope.proto.incident import IncidentEvent
from llmscope.simulator.engine import Simulator
from llmscope.simulator.models import SimModel
from llmscope.simulator.server import SimServer
from tests.alerter.factories import T0, HttpSink, cleared, violation
from tests.alerter.harness import eventually, publish, start_alerter

SIM_MODELS = (
    SimModel(
        name="analyst:1b", host="llm-host", tokens_per_s=2000, prompt_tokens_per_s=20000, overhead_s=0.001
    ),
)


def test_only_signals_at_or_above_the_minimum_severity_form_incidents() -> None:
    assert forms_incidents("critical", "critical")
    assert not forms_incidents("warning", "critical")
    assert not forms_incidents("info", "critical")
    assert forms_incidents("warning", "warning")
    assert not forms_incidents("info", "warning")
    assert forms_incidents("info", "info")


def test_titles_say_what_is_wrong() -> None:
    assert (
        title_for([violation(0, rule="CUSUM")])
        == "ollama/llama3.1:8b on gpu-1: latency_ms out of control (CUSUM)"
    )
    outage = violation(0, rule="AVAILABILITY", metric="availability", value=3)
    assert title_for([outage]) == "ollama/llama3.1:8b on gpu-1: probes failing (AVAILABILITY)"
    both = [violation(0, rule="CUSUM"), violation(1, model="qwen2:7b", rule="CUSUM")]
    assert title_for(both) == "Cascade on gpu-1: 2 models degraded (llama3.1:8b, qwen2:7b) - latency_ms"


def test_correlation_same_model_same_host_and_window() -> None:
    inc = OpenIncident("i1", "ollama", "gpu-1", ("llama3.1:8b",), T0, sustained_open=("llama3.1:8b",))
    # same host, a sustained signal on each model, overlapping in time: a cascade
    assert correlate(violation(1, model="qwen2:7b", rule="CUSUM"), [inc], 300) is inc
    # one stray point on a second model is not a cascade (R1 or SPIKE, one probe)
    assert correlate(violation(1, model="qwen2:7b"), [inc], 300) is None
    assert correlate(violation(1, model="qwen2:7b", rule="SPIKE"), [inc], 300) is None
    # the first model's signal is a lone point, or has cleared: nothing to cascade with
    lone = OpenIncident("i3", "ollama", "gpu-1", ("llama3.1:8b",), T0)
    assert correlate(violation(1, model="qwen2:7b", rule="CUSUM"), [lone], 300) is None
    assert correlate(violation(1, model="qwen2:7b", rule="CUSUM", host="gpu-2"), [inc], 300) is None
    assert correlate(violation(1, host="gpu-2"), [inc], 300) is inc  # same model elsewhere
    assert correlate(violation(1, at=T0 + timedelta(minutes=10)), [inc], 300) is None
    # no host label: never a cascade through the empty label ("Cascade on openai")
    bare = OpenIncident("i2", "openai", "", ("gpt-4o",), T0, sustained_open=("gpt-4o",))
    other = violation(1, provider="openai", model="gpt-4o-mini", host="", rule="CUSUM")
    assert correlate(other, [bare], 300) is None


def test_a_one_point_episode_still_open_after_its_quiet_period_is_sustained() -> None:
    # A shift that starts with a jump opens its chart's one episode as a SPIKE: one point.
    assert not sustained("SPIKE", 1)
    assert not sustained("SPIKE", 1, open_for_s=59, sustain_s=60)  # may still clear quietly
    assert sustained("SPIKE", 1, open_for_s=60, sustain_s=60)  # the chart kept firing
    assert sustained("R1", 1, open_for_s=600, sustain_s=60)
    assert sustained("CUSUM", 1)
    assert sustained("R1", 3)
    signals = [
        OpenSignal("llama3.1:8b", "SPIKE", 1, T0),
        OpenSignal("qwen2:7b", "SPIKE", 1, T0 + timedelta(seconds=50)),
        OpenSignal("mistral:7b", "SPIKE", 1, T0 + timedelta(seconds=50)),
        OpenSignal("mistral:7b", "TAIL", 4, T0 + timedelta(seconds=55)),  # confirms its SPIKE
    ]
    at = T0 + timedelta(seconds=70)
    assert sustained_models(signals, at, 60) == {"llama3.1:8b", "mistral:7b"}
    assert sustained_models(signals, at + timedelta(seconds=40), 60) == {
        "llama3.1:8b",
        "qwen2:7b",
        "mistral:7b",
    }


def test_a_cascade_that_opened_with_jumps_joins_once_its_spikes_are_sustained() -> None:
    # Both models' latency charts opened as SPIKEs; the first is open past its quiet period.
    first = OpenIncident("i1", "ollama", "gpu-1", ("llama3.1:8b",), T0, sustained_open=("llama3.1:8b",))
    later = T0 + timedelta(seconds=90)
    spike = violation(1, model="qwen2:7b", rule="SPIKE", at=later)
    assert correlate(spike, [first], 300) is None  # a fresh stray point is not a cascade
    # ... unless its model's shift is confirmed: an aged SPIKE or a CUSUM on another chart
    assert correlate(spike, [first], 300, confirmed={"qwen2:7b"}) is first
    assert correlate(spike, [first], 300, confirmed={"llama3.1:8b"}) is None
    # no host label: confirmation does not open the empty-label cascade either
    bare = OpenIncident("i2", "openai", "", ("gpt-4o",), T0, sustained_open=("gpt-4o",))
    mini = violation(1, provider="openai", model="gpt-4o-mini", host="", rule="SPIKE")
    assert correlate(mini, [bare], 300, confirmed={"gpt-4o-mini"}) is None


def test_an_outage_summary_counts_failures_and_never_compares_a_count_with_a_rate() -> None:
    from msgspec import structs

    down = violation(1, rule="AVAILABILITY", metric="availability", value=3.0)
    down = structs.replace(down, limits=structs.replace(down.limits, center=0.01, ucl=0.14, lcl=0.0))
    text, moves, _ = summarize([down])
    assert (
        "llama3.1:8b (prompt simple-1): down: 3 failed probes in a row (baseline failure rate 1.0%)" in text
    )
    assert moves[0].change_percent is None
    assert "29900" not in text


def test_deterministic_summary_names_moves_rules_split_and_host() -> None:
    events = [
        violation(1, value=2400),
        violation(2, model="qwen2:7b", rule="R2", value=1600),
        violation(3, metric="ttft_ms", value=1800),
    ]
    telemetry = [TelemetryPoint("p1", T0, "llama3.1:8b", latency_ms=2400, ttft_ms=1800, tokens_per_s=12.5)]
    text, moves, rules = summarize(events, cleared=frozenset({events[1].episode_id}), telemetry=telemetry)
    assert rules == ("R1", "R2")
    assert {(m.model, m.metric) for m in moves} == {
        ("llama3.1:8b", "latency_ms"),
        ("qwen2:7b", "latency_ms"),
        ("llama3.1:8b", "ttft_ms"),
    }
    assert "2 model(s) on host gpu-1 (2 still open when this analysis was written)" in text
    assert "cascade" in text
    assert "2.4 s against this prompt's baseline of 800 ms, +200 % (slower)" in text
    assert "before the first token" in text  # 1800 of 2400 ms
    assert "12.5 tokens/s" in text
    assert "CPU up to 95% (saturated)" in text
    assert "GPU up to 99%" in text


def test_parse_answer_json_prose_and_garbage() -> None:
    ok = parse_answer(
        'Sure: {"hypothesis": "GPU memory pressure", "engineering_email": "Hi", "customer_notice": "Slow"}',
        critical=False,
    )
    assert ok.status == "ok"
    assert ok.hypothesis == "GPU memory pressure"
    assert ok.customer_notice is None  # only for critical incidents
    assert parse_answer("The host looks overloaded by a batch job on the GPU.", critical=True).status == "ok"
    assert parse_answer("", critical=True).status == "invalid"
    assert parse_answer("<html><body>502</body></html>", critical=True).status == "invalid"
    assert parse_answer("%%%% 0x00 ### @@@@ !!!", critical=True).status == "invalid"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = SimServer(Simulator(SIM_MODELS, seed=3))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_llm_analysis_with_the_simulated_endpoint_answering_and_failing(
    sim: SimServer, kind: str
) -> None:
    cfg = LlmConfig(url=sim.url, model="analyst:1b", kind=kind, timeout=1.0)  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as session:
        answered = await analyze(session, cfg, "title", "facts", critical=True)
        assert answered.status == "ok", answered.error
        assert answered.hypothesis
        for inject, status in (
            ({"kind": "outage", "mode": "error", "status": 500}, "unreachable"),
            ({"kind": "outage", "mode": "hang"}, "timeout"),
            ({"kind": "outage", "mode": "garbage"}, "invalid"),
        ):
            async with session.post(f"{sim.url}/_sim/inject", json=inject) as resp:
                assert resp.status == 201
            result = await analyze(session, cfg, "title", "facts", critical=True)
            assert result.status == status, result
            assert result.hypothesis is None
            async with session.delete(f"{sim.url}/_sim/inject") as resp:
                assert resp.status == 200
    unreachable = LlmConfig(url="http://127.0.0.1:9", model="x", timeout=1.0)
    async with aiohttp.ClientSession() as session:
        assert (await analyze(session, unreachable, "t", "f", critical=False)).status == "unreachable"


async def _collect(nc: NATS, into: list[IncidentEvent]) -> None:
    async def on(msg: Msg) -> None:
        into.append(codec.decode_as(msg.data, IncidentEvent))

    await nc.subscribe(subjects.INCIDENTS_ALL, cb=on)


async def _json_llm(request: web.Request, _: int) -> web.StreamResponse:
    body = await request.json()
    assert body["messages"][1]["content"].startswith("Incident: Cascade on gpu-1")
    answer = {
        "hypothesis": "All three models share gpu-1, whose GPU is saturated: a co-tenant job.",
        "engineering_email": "Subject: gpu-1 degraded\n\nThree models slowed together.",
        "customer_notice": "Some responses are slower than usual; we are on it.",
    }
    return web.json_response({"choices": [{"message": {"role": "assistant", "content": json.dumps(answer)}}]})


async def test_cascade_is_one_incident_naming_every_model_with_llm_analysis(
    database_url: str, js: JetStreamContext, nc: NATS
) -> None:
    llm = HttpSink(_json_llm)
    llm_url = await llm.start()
    seen: list[IncidentEvent] = []
    await _collect(nc, seen)
    run = await start_alerter(
        database_url, js, {}, llm=LlmConfig(url=llm_url, model="judge", kind="openai", timeout=5.0)
    )
    try:
        models = ["llama3.1:8b", "qwen2:7b", "mistral:7b"]
        await publish(js, *(violation(i, model=m, rule="CUSUM") for i, m in enumerate(models)))
        await publish(js, violation(9, model="other", host="gpu-2"))  # another host: its own incident
        # Below the incident threshold (critical by default): recorded, but no incident of its own.
        await publish(js, violation(10, model="noisy", host="gpu-3", rule="R2", severity="info"))

        # On a loaded machine an analysis may run before the third model joined: wait for the one
        # that covers all three.
        # An analysis that started before the third joined is published with the incident's three
        # models but moves of two (it is redone): wait for the analysis of all three.
        def covers_all(e: IncidentEvent) -> bool:
            moved = {m.model for m in e.analysis.moves} if e.analysis else set()
            return e.change == "analyzed" and e.cascade and len(e.models) == 3 and moved == set(models)

        def analysed_all() -> bool:
            return any(covers_all(e) for e in seen)

        await eventually(analysed_all, what="analysed cascade of the three models")
        ids = {e.incident_id for e in seen}
        assert len(ids) == 2
        cascade = [e for e in seen if covers_all(e)][-1]
        assert sorted(cascade.models) == sorted(models)
        assert cascade.title.startswith("Cascade on gpu-1: 3 models degraded")
        assert cascade.violation_count == 3
        assert cascade.state == "open"
        analysis = cascade.analysis
        assert analysis is not None
        assert analysis.llm_status == "ok"
        assert analysis.hypothesis is not None
        assert "co-tenant" in analysis.hypothesis
        assert analysis.customer_notice is not None  # critical incident
        assert "(Deterministic analysis only" not in analysis.summary
        assert {m.model for m in analysis.moves} == set(models)
        changes = [e.change for e in seen if e.incident_id == cascade.incident_id]
        assert changes[0] == "opened"
        assert "updated" in changes
        # lifecycle: acknowledged (who, when), then resolved when every violation cleared
        assert await run.store.acknowledge_incident(cascade.incident_id, "ana")
        await publish(js, *(cleared(violation(i, model=m, rule="CUSUM")) for i, m in enumerate(models)))
        await eventually(
            lambda: any(e.change == "resolved" and e.incident_id == cascade.incident_id for e in seen),
            what="resolved incident",
        )
        resolved = [e for e in seen if e.change == "resolved"][-1]
        assert resolved.acknowledged_by == "ana"
        assert resolved.acknowledged_at is not None
        assert resolved.resolved_by is not None
        acked = await run.pool.fetchval("SELECT count(*) FROM alerter_alerts WHERE acknowledged_by = 'ana'")
        assert acked == 3
        # published on the incidents stream too, for subscribers that come later
        info = await js.stream_info(subjects.STREAM_INCIDENTS)
        assert info.state.messages == len({e.id for e in seen})
    finally:
        await run.close()
        await llm.stop()


async def test_failing_llm_never_blocks_delivery_and_similar_incidents_are_linked(
    database_url: str, js: JetStreamContext, nc: NATS, sim: SimServer
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim.url}/_sim/inject", json={"kind": "outage", "mode": "hang"}) as resp,
    ):
        assert resp.status == 201
    hook = HttpSink()
    hook_url = await hook.start()
    seen: list[IncidentEvent] = []
    await _collect(nc, seen)
    run = await start_alerter(
        database_url,
        js,
        {"LLMSCOPE_WEBHOOK_URL": hook_url},
        llm=LlmConfig(url=sim.url, model="analyst:1b", kind="ollama", timeout=6.0),
        incident_window=1.0,
    )
    try:
        first = violation(1)
        await publish(js, first)
        # Before the LLM's 6 s timeout: the notification never waits for the analysis.
        await eventually(lambda: len(hook.requests) >= 1, within=5, what="notification while the LLM hangs")
        await eventually(
            lambda: any(e.change == "analyzed" for e in seen), within=20, what="deterministic analysis"
        )
        analysed = next(e for e in seen if e.change == "analyzed")
        assert analysed.analysis is not None
        assert analysed.analysis.llm_status == "timeout"
        assert analysed.analysis.hypothesis is None
        assert "(Deterministic analysis only: LLM timeout.)" in analysed.analysis.summary
        await publish(js, cleared(first))
        await eventually(lambda: any(e.change == "resolved" for e in seen), what="first incident resolved")
        # the same problem again, later: a new incident that links the first one
        again = violation(2, at=T0 + timedelta(hours=1), prefix="again")
        await publish(js, again)
        await eventually(
            lambda: any(e.change == "analyzed" and e.incident_id != analysed.incident_id for e in seen),
            within=20,
            what="second analysis",
        )
        second = [e for e in seen if e.change == "analyzed" and e.incident_id != analysed.incident_id][-1]
        assert [s.incident_id for s in second.similar] == [analysed.incident_id]
        assert second.similar[0].score > 0.5
    finally:
        await run.close()
        await hook.stop()


async def test_spikes_still_open_after_their_quiet_period_form_a_cascade(database_url: str) -> None:
    """A 3x jump opens each chart's episode as a SPIKE; once both are still open past the quiet
    period, the second model's next signal joins the first model's incident as a cascade, and
    the incident its first SPIKE opened is merged into it."""
    run = await start_alerter(database_url, None, {})
    try:
        routes = (await run.alerter.runtime()).routes
        assert run.store.sustain_after == 60  # the default; shorter here, within the 60 s window
        run.store.sustain_after = 30
        a = violation(1, model="llama3.1:8b", host="gpu-7", rule="SPIKE", at=T0)
        b = violation(2, model="qwen2:7b", host="gpu-7", rule="SPIKE", at=T0 + timedelta(seconds=2))
        # the second model's TTFT chart, one more jump, once both SPIKEs outlived the quiet period
        b2 = violation(
            3, model="qwen2:7b", host="gpu-7", rule="SPIKE", metric="ttft_ms", at=T0 + timedelta(seconds=40)
        )
        for ev in (a, b, b2):
            await run.store.ingest([ev], routes, None)
        rows = await run.pool.fetch(
            "SELECT e.episode_id, i.models, i.cascade FROM alerter_incident_episodes e"
            " JOIN alerter_incidents i ON i.id = e.incident_id ORDER BY e.episode_id"
        )
        got = {r["episode_id"]: (sorted(r["models"]), r["cascade"]) for r in rows}
        # b came 2 s after a, both fresh single points: apart; b2 found both sustained: joined,
        # and b's own incident was merged into the cascade (merging.py)
        assert got[a.episode_id] == (["llama3.1:8b", "qwen2:7b"], True)
        assert got[b2.episode_id] == got[a.episode_id]
        assert got[b.episode_id] == got[a.episode_id]
        merged = await run.pool.fetch(
            "SELECT merged_into FROM alerter_incidents WHERE merged_into IS NOT NULL"
        )
        assert [r["merged_into"] for r in merged] == [a_incident := f"inc-{a.episode_id}"]
        assert a_incident == await run.pool.fetchval(
            "SELECT incident_id FROM alerter_incident_episodes WHERE episode_id = $1", b.episode_id
        )
    finally:
        await run.close()


async def test_a_cascade_across_providers_on_one_host_is_one_incident(database_url: str) -> None:
    """Ollama and an OpenAI-compatible vLLM on one GPU host degrade together: one incident."""
    run = await start_alerter(database_url, None, {})
    try:
        routes = (await run.alerter.runtime()).routes
        local = violation(1, provider="ollama", model="llama3.1:8b", host="gpu-9", rule="CUSUM")
        served = violation(2, provider="openai", model="qwen2.5-32b", host="gpu-9", rule="CUSUM")
        elsewhere = violation(3, provider="openai", model="gpt-4o", host="", rule="CUSUM")
        # Two replicas at once: the host's lock keeps them from opening twin incidents.
        await asyncio.gather(
            run.store.ingest([local], routes, None), run.store.ingest([served], routes, None)
        )
        await run.store.ingest([elsewhere], routes, None)
        rows = await run.pool.fetch("SELECT host, models, cascade FROM alerter_incidents ORDER BY host DESC")
        assert [(r["host"], sorted(r["models"]), r["cascade"]) for r in rows] == [
            ("gpu-9", ["llama3.1:8b", "qwen2.5-32b"], True),
            ("", ["gpt-4o"], False),
        ]
    finally:
        await run.close()
