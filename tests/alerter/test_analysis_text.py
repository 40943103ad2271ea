"""The incident analysis text: every figure right, per prompt where prompts differ, with units."""

from __future__ import annotations

from datetime import timedelta

from msgspec import structs
from nats.js import JetStreamContext

from llmscope.alerter.analysis import TelemetryPoint, summarize
from llmscope.alerter.messages import FailedProbe, Outage
from llmscope.proto.violation import ViolationEvent
from tests.alerter.factories import T0, cleared, violation
from tests.alerter.harness import eventually, publish, start_alerter


def _on_prompt(n: int, prompt: str, value: float, center: float, sigma: float) -> ViolationEvent:
    ev = violation(n, rule="CUSUM", value=value, prefix=f"{prompt}-")
    limits = structs.replace(ev.limits, center=center, sigma=sigma, ucl=center + 3 * sigma)
    return structs.replace(
        ev, prompt_id=prompt, limits=limits, deviation_sigma=(value - center) / sigma, level=value
    )


def test_each_prompt_is_quoted_against_its_own_baseline() -> None:
    events = [
        _on_prompt(1, "short", 207.0, 103.0, 10.0),  # the furthest in sigma
        _on_prompt(2, "medium", 1045.0, 520.0, 100.0),
        _on_prompt(3, "long", 1543.0, 770.0, 150.0),
    ]
    text, moves, _ = summarize(events)
    assert sorted((m.prompt_id, m.observed, m.baseline) for m in moves) == [
        ("long", 1543.0, 770.0),
        ("medium", 1045.0, 520.0),
        ("short", 207.0, 103.0),
    ]
    assert "latency (prompt short): 207 ms against this prompt's baseline of 103 ms, +101 % (slower)" in text
    assert "latency (prompt medium): 1.04 s against this prompt's baseline of 520 ms" in text
    assert "latency (prompt long): 1.54 s against this prompt's baseline of 770 ms" in text


def test_time_to_first_token_is_split_per_prompt_never_averaged_across_prompts() -> None:
    events = [_on_prompt(1, "short", 207.0, 103.0, 10.0), _on_prompt(2, "long", 1543.0, 770.0, 150.0)]
    telemetry = [
        TelemetryPoint(
            "a", T0, "llama3.1:8b", latency_ms=207, ttft_ms=150, tokens_per_s=40.0, prompt_id="short"
        ),
        TelemetryPoint(
            "b", T0, "llama3.1:8b", latency_ms=1543, ttft_ms=200, tokens_per_s=30.0, prompt_id="long"
        ),
    ]
    text, _, _ = summarize(events, telemetry=telemetry)
    assert "875" not in text  # the mean total of both prompts: meaningless
    assert "- llama3.1:8b, prompt short: 150 ms of 207 ms total (72%), mostly before the first token" in text
    assert "- llama3.1:8b, prompt long: 200 ms of 1.54 s total (13%), mostly in generation" in text
    assert "30.0 tokens/s (llama3.1:8b, prompt long); 40.0 tokens/s (llama3.1:8b, prompt short)" in text


def test_an_outage_counts_every_failed_probe_not_the_points_of_its_rule() -> None:
    down = violation(1, rule="AVAILABILITY", metric="availability", value=3.0)
    down = structs.replace(down, limits=structs.replace(down.limits, center=0.01, ucl=0.14, lcl=0.0))
    refused = tuple(
        FailedProbe(T0 + timedelta(seconds=60 - i), "refused", None, "connection refused") for i in range(50)
    )
    outage = Outage(
        count=50, since=T0 + timedelta(seconds=11), last_success=T0 + timedelta(seconds=10), recent=refused
    )
    # The rule's own points: one failed probe of the three it counted is in the telemetry table.
    telemetry = [TelemetryPoint("p1", T0, "llama3.1:8b", status="refused")]
    text, moves, _ = summarize([down], telemetry=telemetry, outages={down.episode_id: outage})
    assert "Failed probes of llama3.1:8b: 50 from 2026-03-02 12:00:11 UTC" in text
    assert "last success 2026-03-02 12:00:10 UTC; refused x50." in text
    assert "refused x1" not in text
    assert "down: 50 failed probes in a row since the last success (AVAILABILITY fired at 3;" in text
    assert "down: 3 failed probes" not in text
    assert moves[0].observed == 50.0


def test_open_counts_say_when_they_held_and_all_cleared_says_so() -> None:
    ev = violation(1)
    assert "(1 still open when this analysis was written)" in summarize([ev])[0]
    assert "(all cleared)" in summarize([ev], cleared=frozenset({ev.episode_id}))[0]


async def test_the_analysis_is_written_again_once_the_incident_resolves(
    database_url: str, js: JetStreamContext
) -> None:
    run = await start_alerter(database_url, js, {})
    try:
        ev = violation(1)
        await publish(js, ev)
        incident_id = f"inc-{ev.episode_id}"

        async def summary() -> str:
            inc = await run.store.incident(incident_id)
            return inc.analysis.summary if inc is not None and inc.analysis is not None else ""

        async def analysed_open() -> bool:
            return "1 still open when this analysis was written" in await summary()

        await eventually(analysed_open, what="the first analysis")
        await publish(js, cleared(ev))

        async def analysed_resolved() -> bool:
            return "(all cleared)" in await summary()

        await eventually(analysed_resolved, what="the analysis after the resolution")
        assert "still open" not in await summary()
    finally:
        await run.close()
